//! Conversions at the API edge for identity: wire requests into validated domain values and
//! stored records into wire responses (the identity counterpart of `convert.rs`).

use tessera_api as api;
use tessera_domain::identity::{
    AuditEvent, Email, Membership, NewOrganization, Organization, OrganizationSlug, Password,
    PersonName, Role, User,
};
use tessera_domain::validate::{Label, Metadata};
use tessera_domain::{Timestamp, ValidationError};

fn ts(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// The validated parts of `createUser`; the password is hashed by the caller (off the async
/// threads).
pub(crate) struct NewUserInput {
    pub email: Email,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub password: Option<Password>,
    pub metadata: Metadata,
}

pub(crate) fn new_user(req: api::CreateUserRequest) -> Result<NewUserInput, ValidationError> {
    Ok(NewUserInput {
        email: Email::parse("email", &req.email)?,
        first_name: req
            .first_name
            .map(|n| PersonName::parse("first_name", n))
            .transpose()?,
        last_name: req
            .last_name
            .map(|n| PersonName::parse("last_name", n))
            .transpose()?,
        password: req
            .password
            .map(|p| Password::new_choice("password", p))
            .transpose()?,
        metadata: match req.metadata {
            Some(value) => Metadata::parse("metadata", value)?,
            None => Metadata::empty(),
        },
    })
}

/// The validated parts of `updateUser`.
pub(crate) struct UserPatchInput {
    pub email: Option<Email>,
    pub first_name: Option<Option<PersonName>>,
    pub last_name: Option<Option<PersonName>>,
    pub password: Option<Option<Password>>,
    pub metadata: Option<Metadata>,
}

pub(crate) fn user_patch(req: api::UpdateUserRequest) -> Result<UserPatchInput, ValidationError> {
    let name = |field: &'static str, v: Option<Option<String>>| {
        v.map(|inner| inner.map(|n| PersonName::parse(field, n)).transpose())
            .transpose()
    };
    Ok(UserPatchInput {
        email: req.email.map(|e| Email::parse("email", e)).transpose()?,
        first_name: name("first_name", req.first_name)?,
        last_name: name("last_name", req.last_name)?,
        password: req
            .password
            .map(|inner| {
                inner
                    .map(|p| Password::new_choice("password", p))
                    .transpose()
            })
            .transpose()?,
        metadata: req
            .metadata
            .map(|m| Metadata::parse("metadata", m))
            .transpose()?,
    })
}

pub(crate) fn new_organization(
    req: api::CreateOrganizationRequest,
) -> Result<NewOrganization, ValidationError> {
    Ok(NewOrganization {
        name: Label::parse("name", req.name)?,
        slug: req
            .slug
            .map(|s| OrganizationSlug::parse("slug", s))
            .transpose()?,
    })
}

pub(crate) fn role_in(role: api::OrganizationRole) -> Role {
    match role {
        api::OrganizationRole::Admin => Role::Admin,
        api::OrganizationRole::Member => Role::Member,
    }
}

fn role_out(role: Role) -> api::OrganizationRole {
    match role {
        Role::Admin => api::OrganizationRole::Admin,
        Role::Member => api::OrganizationRole::Member,
    }
}

pub(crate) fn user(u: User) -> api::User {
    api::User {
        id: u.id.into_string(),
        email: u.email,
        first_name: u.first_name,
        last_name: u.last_name,
        metadata: u.metadata,
        has_password: u.has_password,
        disabled: u.disabled,
        created_at: ts(u.created_at),
        updated_at: ts(u.updated_at),
    }
}

pub(crate) fn organization(o: Organization) -> api::Organization {
    api::Organization {
        id: o.id.into_string(),
        name: o.name,
        slug: o.slug,
        created_at: ts(o.created_at),
    }
}

pub(crate) fn member(m: Membership) -> api::OrganizationMember {
    api::OrganizationMember {
        id: m.id.into_string(),
        organization_id: m.organization_id.into_string(),
        user_id: m.user_id.into_string(),
        role: role_out(m.role),
        created_at: ts(m.created_at),
    }
}

pub(crate) fn me_membership((m, o): (Membership, Organization)) -> api::MeMembership {
    api::MeMembership {
        organization: organization(o),
        role: role_out(m.role),
    }
}

pub(crate) fn audit_event(e: AuditEvent) -> api::AuditEvent {
    api::AuditEvent {
        id: e.id.into_string(),
        kind: e.kind,
        actor_type: e.actor_type,
        actor_id: e.actor_id,
        subject_id: e.subject_id,
        ip: e.ip,
        user_agent: e.user_agent,
        data: e.data,
        created_at: ts(e.created_at),
    }
}

macro_rules! list_from_parts {
    ($($list:ident => $item:ident),*) => {$(
        impl From<crate::convert::ListParts<api::$item>> for api::$list {
            fn from(p: crate::convert::ListParts<api::$item>) -> Self {
                Self { data: p.data, has_more: p.has_more, first_id: p.first_id, last_id: p.last_id }
            }
        }
    )*};
}

list_from_parts!(
    UserList => User,
    OrganizationList => Organization,
    OrganizationMemberList => OrganizationMember,
    AuditEventList => AuditEvent
);
