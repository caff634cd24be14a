//! Operations on the deployment's users, organizations and audit log.

use tessera_api::ops;
use tessera_api::types::{
    AddOrganizationMemberRequest, AuditEventList, CreateOrganizationRequest, CreateUserRequest,
    CreateUserTokenRequest, DeletedUser, ListAuditEventsParams, ListUsersParams, Organization,
    OrganizationList, OrganizationMember, OrganizationMemberList, PageParams,
    RemovedOrganizationMember, UpdateUserRequest, User, UserList, UserToken,
};

use crate::client::Client;
use crate::request::Request;

/// The deployment's users: [`Client::users`].
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    client: &'a Client,
}

impl<'a> Users<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Users { client }
    }

    /// `createUser`. Fails with `email_taken` when the (normalized) email is in use.
    pub fn create_user(&self, body: CreateUserRequest) -> Request<'a, User> {
        Request::operation(self.client, ops::CREATE_USER, &[]).json(body)
    }

    /// `listUsers`: one page, oldest first.
    pub fn list_users(&self, params: ListUsersParams) -> Request<'a, UserList> {
        Request::operation(self.client, ops::LIST_USERS, &[]).query(params)
    }

    /// `getUser`.
    pub fn get_user(&self, user_id: impl AsRef<str>) -> Request<'a, User> {
        Request::operation(self.client, ops::GET_USER, &[("user_id", user_id.as_ref())])
    }

    /// `updateUser`: absent fields stay; `Some(None)` clears a name or the password.
    pub fn update_user(
        &self,
        user_id: impl AsRef<str>,
        body: UpdateUserRequest,
    ) -> Request<'a, User> {
        Request::operation(
            self.client,
            ops::UPDATE_USER,
            &[("user_id", user_id.as_ref())],
        )
        .json(body)
    }

    /// `deleteUser`.
    pub fn delete_user(&self, user_id: impl AsRef<str>) -> Request<'a, DeletedUser> {
        Request::operation(
            self.client,
            ops::DELETE_USER,
            &[("user_id", user_id.as_ref())],
        )
    }

    /// `disableUser`: the user cannot sign in and every session of theirs ends.
    pub fn disable_user(&self, user_id: impl AsRef<str>) -> Request<'a, User> {
        Request::operation(
            self.client,
            ops::DISABLE_USER,
            &[("user_id", user_id.as_ref())],
        )
    }

    /// `enableUser`.
    pub fn enable_user(&self, user_id: impl AsRef<str>) -> Request<'a, User> {
        Request::operation(
            self.client,
            ops::ENABLE_USER,
            &[("user_id", user_id.as_ref())],
        )
    }

    /// `createUserToken`: a short-lived signed token for `Authorization: Bearer` on the user
    /// endpoints (see [`Client::me`]).
    pub fn create_user_token(
        &self,
        user_id: impl AsRef<str>,
        body: CreateUserTokenRequest,
    ) -> Request<'a, UserToken> {
        Request::operation(
            self.client,
            ops::CREATE_USER_TOKEN,
            &[("user_id", user_id.as_ref())],
        )
        .json(body)
    }
}

/// The deployment's organizations: [`Client::organizations`].
#[derive(Debug, Clone, Copy)]
pub struct Organizations<'a> {
    client: &'a Client,
}

impl<'a> Organizations<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Organizations { client }
    }

    /// `createOrganization`.
    pub fn create_organization(
        &self,
        body: CreateOrganizationRequest,
    ) -> Request<'a, Organization> {
        Request::operation(self.client, ops::CREATE_ORGANIZATION, &[]).json(body)
    }

    /// `listOrganizations`.
    pub fn list_organizations(&self, params: PageParams) -> Request<'a, OrganizationList> {
        Request::operation(self.client, ops::LIST_ORGANIZATIONS, &[]).query(params)
    }

    /// `getOrganization`.
    pub fn get_organization(&self, organization_id: impl AsRef<str>) -> Request<'a, Organization> {
        Request::operation(
            self.client,
            ops::GET_ORGANIZATION,
            &[("organization_id", organization_id.as_ref())],
        )
    }

    /// `addOrganizationMember`.
    pub fn add_member(
        &self,
        organization_id: impl AsRef<str>,
        body: AddOrganizationMemberRequest,
    ) -> Request<'a, OrganizationMember> {
        Request::operation(
            self.client,
            ops::ADD_ORGANIZATION_MEMBER,
            &[("organization_id", organization_id.as_ref())],
        )
        .json(body)
    }

    /// `listOrganizationMembers`.
    pub fn list_members(
        &self,
        organization_id: impl AsRef<str>,
        params: PageParams,
    ) -> Request<'a, OrganizationMemberList> {
        Request::operation(
            self.client,
            ops::LIST_ORGANIZATION_MEMBERS,
            &[("organization_id", organization_id.as_ref())],
        )
        .query(params)
    }

    /// `removeOrganizationMember`.
    pub fn remove_member(
        &self,
        organization_id: impl AsRef<str>,
        user_id: impl AsRef<str>,
    ) -> Request<'a, RemovedOrganizationMember> {
        Request::operation(
            self.client,
            ops::REMOVE_ORGANIZATION_MEMBER,
            &[
                ("organization_id", organization_id.as_ref()),
                ("user_id", user_id.as_ref()),
            ],
        )
    }
}

/// The deployment's audit log: [`Client::audit_events`].
#[derive(Debug, Clone, Copy)]
pub struct AuditEvents<'a> {
    client: &'a Client,
}

impl<'a> AuditEvents<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        AuditEvents { client }
    }

    /// `listAuditEvents`: one page, oldest first.
    pub fn list_audit_events(&self, params: ListAuditEventsParams) -> Request<'a, AuditEventList> {
        Request::operation(self.client, ops::LIST_AUDIT_EVENTS, &[]).query(params)
    }
}
