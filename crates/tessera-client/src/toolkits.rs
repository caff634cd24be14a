//! Third-party toolkits (`Virtual` tools): enabled per deployment under `/ai/toolkits`,
//! connected per actor under `/ai/actors/{actor_id}/toolkits`.

use tessera_api::ops;
use tessera_api::types::{
    ActorToolkitList, ConnectToolkitRequest, DisabledToolkit, DisconnectedToolkit,
    EnableToolkitRequest, Toolkit, ToolkitConnection, ToolkitList,
};

use crate::client::Client;
use crate::request::Request;

/// Toolkits: [`crate::Ai::toolkits`].
#[derive(Debug, Clone, Copy)]
pub struct Toolkits<'a> {
    pub(crate) client: &'a Client,
}

impl<'a> Toolkits<'a> {
    /// `enableToolkit`: enables a toolkit of the server's provider for the deployment
    /// (idempotent; enabling again replaces its settings).
    pub fn enable_toolkit(&self, body: EnableToolkitRequest) -> Request<'a, Toolkit> {
        Request::operation(self.client, ops::ENABLE_TOOLKIT, &[]).json(body)
    }

    /// `listToolkits`: the deployment's enabled toolkits, by slug.
    pub fn list_toolkits(&self) -> Request<'a, ToolkitList> {
        Request::operation(self.client, ops::LIST_TOOLKITS, &[])
    }

    /// `disableToolkit`: also removes every actor's connection to it.
    pub fn disable_toolkit(&self, toolkit: impl AsRef<str>) -> Request<'a, DisabledToolkit> {
        let toolkit = toolkit.as_ref();
        Request::operation(self.client, ops::DISABLE_TOOLKIT, &[("toolkit", toolkit)])
    }

    /// `listActorToolkits`: every enabled toolkit with the actor's connection status.
    pub fn list_actor_toolkits(&self, actor_id: impl AsRef<str>) -> Request<'a, ActorToolkitList> {
        let actor_id = actor_id.as_ref();
        Request::operation(
            self.client,
            ops::LIST_ACTOR_TOOLKITS,
            &[("actor_id", actor_id)],
        )
    }

    /// `connectActorToolkit`: starts the actor's connection; the end user authorizes it at
    /// the answer's `redirect_url`.
    pub fn connect_actor_toolkit(
        &self,
        actor_id: impl AsRef<str>,
        toolkit: impl AsRef<str>,
        body: ConnectToolkitRequest,
    ) -> Request<'a, ToolkitConnection> {
        let (actor_id, toolkit) = (actor_id.as_ref(), toolkit.as_ref());
        Request::operation(
            self.client,
            ops::CONNECT_ACTOR_TOOLKIT,
            &[("actor_id", actor_id), ("toolkit", toolkit)],
        )
        .json(body)
    }

    /// `disconnectActorToolkit`.
    pub fn disconnect_actor_toolkit(
        &self,
        actor_id: impl AsRef<str>,
        toolkit: impl AsRef<str>,
    ) -> Request<'a, DisconnectedToolkit> {
        let (actor_id, toolkit) = (actor_id.as_ref(), toolkit.as_ref());
        Request::operation(
            self.client,
            ops::DISCONNECT_ACTOR_TOOLKIT,
            &[("actor_id", actor_id), ("toolkit", toolkit)],
        )
    }
}
