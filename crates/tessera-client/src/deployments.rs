//! Operations on the caller's deployment.

use tessera_api::ops;
use tessera_api::types::{Deployment, UpdateDeploymentRequest};

use crate::client::Client;
use crate::request::Request;

/// The caller's deployment: [`Client::deployments`].
#[derive(Debug, Clone, Copy)]
pub struct Deployments<'a> {
    client: &'a Client,
}

impl<'a> Deployments<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Deployments { client }
    }

    /// `getCurrentDeployment`: the deployment the secret key belongs to.
    pub fn current(&self) -> Request<'a, Deployment> {
        Request::operation(self.client, ops::GET_CURRENT_DEPLOYMENT, &[])
    }

    /// `updateCurrentDeployment`: replaces the deployment's settings (e.g. its default model).
    pub fn update_current(&self, body: &UpdateDeploymentRequest) -> Request<'a, Deployment> {
        Request::operation(self.client, ops::UPDATE_CURRENT_DEPLOYMENT, &[]).json(body)
    }
}
