//! The signed-in user's endpoints (`/sign-in`, `/sign-out`, `/me`) and the token keys.
//!
//! These authenticate as a *user*, not a deployment: build the client with a user token from
//! `createUserToken` (`Client::new(url, token)`), or give it a `reqwest::Client` with a cookie
//! store (`Client::with_http_client(http, url, None)`) so that the session cookie set by
//! [`Me::sign_in`] is sent back.

use tessera_api::ops;
use tessera_api::types::{
    Jwks, Me as MeBody, SetActiveOrganizationRequest, SignInRequest, SignedOut,
};

use crate::client::Client;
use crate::request::Request;

/// The signed-in user: [`Client::me`].
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    client: &'a Client,
}

impl<'a> Me<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Me { client }
    }

    /// `signIn` with email and password. The server checks `Origin` on browser writes; the SDK
    /// sends the server's own origin, as a first-party client.
    pub fn sign_in(&self, body: SignInRequest) -> Request<'a, MeBody> {
        Request::operation(self.client, ops::SIGN_IN, &[])
            .json(body)
            .header("Origin", &self.client.origin())
    }

    /// `signOut`: ends the browser session.
    pub fn sign_out(&self) -> Request<'a, SignedOut> {
        Request::operation(self.client, ops::SIGN_OUT, &[]).header("Origin", &self.client.origin())
    }

    /// `getMe`: the user, their organizations and the active organization.
    pub fn get_me(&self) -> Request<'a, MeBody> {
        Request::operation(self.client, ops::GET_ME, &[])
    }

    /// `setActiveOrganization` (browser sessions only).
    pub fn set_active_organization(
        &self,
        organization_id: impl Into<String>,
    ) -> Request<'a, MeBody> {
        Request::operation(self.client, ops::SET_ACTIVE_ORGANIZATION, &[])
            .json(SetActiveOrganizationRequest {
                organization_id: organization_id.into(),
            })
            .header("Origin", &self.client.origin())
    }

    /// `getJwks`: the public keys that verify user tokens (no credentials needed).
    pub fn jwks(&self) -> Request<'a, Jwks> {
        Request::operation(self.client, ops::GET_JWKS, &[])
    }
}
