//! Operations on the deployment's secret keys.

use tessera_api::ops;
use tessera_api::types::{
    CreateSecretKeyRequest, CreatedSecretKey, PageParams, SecretKey, SecretKeyList,
};

use crate::client::Client;
use crate::request::Request;

/// The deployment's secret keys: [`Client::secret_keys`].
#[derive(Debug, Clone, Copy)]
pub struct SecretKeys<'a> {
    client: &'a Client,
}

impl<'a> SecretKeys<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        SecretKeys { client }
    }

    /// `createSecretKey`. The answer's `key` is shown only this once.
    pub fn create(&self, body: CreateSecretKeyRequest) -> Request<'a, CreatedSecretKey> {
        Request::operation(self.client, ops::CREATE_SECRET_KEY, &[]).json(body)
    }

    /// `listSecretKeys`: one page, oldest first.
    pub fn list(&self, params: PageParams) -> Request<'a, SecretKeyList> {
        Request::operation(self.client, ops::LIST_SECRET_KEYS, &[]).query(params)
    }

    /// `revokeSecretKey`. Fails with `last_active_key` for the deployment's last active key.
    pub fn revoke(&self, key_id: impl AsRef<str>) -> Request<'a, SecretKey> {
        let key_id = key_id.as_ref();
        Request::operation(self.client, ops::REVOKE_SECRET_KEY, &[("key_id", key_id)])
    }
}
