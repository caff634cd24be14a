//! Session management (`/api/v1`): the agent pool endpoint, its responses, closing sessions,
//! context variables, decisions on pending actions, and usage.

use serde_json::{Map, Value};
use tessera_api::ops;
use tessera_api::types::{
    ActionResolved, AskRequest, AskResponse, ResolveActionRequest, SessionClosed,
    SessionVariablesUpdated, UpdateSessionVariablesRequest, UsageParams, UsageReport,
};

use crate::client::Client;
use crate::request::Request;

/// Session management: [`Client::sessions`].
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'a> {
    client: &'a Client,
}

impl<'a> Sessions<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Sessions { client }
    }

    /// `askAgentPool`: a message for the agents whose `endpoint_slug` is `endpoint_slug`. The
    /// answer's `status` is `processing` (HTTP 202) when the turn outlasted the server's wait:
    /// poll [`Sessions::get_response`]. Add `.idempotency_key(…)` to make retries safe.
    pub fn ask(
        &self,
        endpoint_slug: impl AsRef<str>,
        body: AskRequest,
    ) -> Request<'a, AskResponse> {
        let slug = endpoint_slug.as_ref();
        Request::operation(self.client, ops::ASK_AGENT_POOL, &[("endpoint_slug", slug)]).json(body)
    }

    /// `getPoolResponse`.
    pub fn get_response(&self, response_id: impl AsRef<str>) -> Request<'a, AskResponse> {
        let id = response_id.as_ref();
        Request::operation(self.client, ops::GET_POOL_RESPONSE, &[("response_id", id)])
    }

    /// `closeSession` (idempotent).
    pub fn close(&self, thread_id: impl AsRef<str>) -> Request<'a, SessionClosed> {
        let id = thread_id.as_ref();
        Request::operation(self.client, ops::CLOSE_SESSION, &[("thread_id", id)])
    }

    /// `updateSessionVariables`: merges `variables` (`Value::Null` deletes one).
    pub fn update_variables(
        &self,
        thread_id: impl AsRef<str>,
        variables: Map<String, Value>,
    ) -> Request<'a, SessionVariablesUpdated> {
        let id = thread_id.as_ref();
        Request::operation(
            self.client,
            ops::UPDATE_SESSION_VARIABLES,
            &[("thread_id", id)],
        )
        .json(UpdateSessionVariablesRequest {
            context_variables: variables,
        })
    }

    /// `resolvePendingAction`: `confirmed` executes the action (`status: processing`),
    /// otherwise it is cancelled.
    pub fn resolve_action(
        &self,
        thread_id: impl AsRef<str>,
        action_id: impl AsRef<str>,
        confirmed: bool,
    ) -> Request<'a, ActionResolved> {
        let (thread_id, action_id) = (thread_id.as_ref(), action_id.as_ref());
        Request::operation(
            self.client,
            ops::RESOLVE_PENDING_ACTION,
            &[("thread_id", thread_id), ("action_id", action_id)],
        )
        .json(ResolveActionRequest { confirmed })
    }

    /// `getUsage`.
    pub fn usage(&self, params: UsageParams) -> Request<'a, UsageReport> {
        Request::operation(self.client, ops::GET_USAGE, &[]).query(params)
    }
}
