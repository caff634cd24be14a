//! Session tickets (minting, exchange), the agent-session browser API (`/agent/…`) and the
//! console admin sign-in.
//!
//! Minting needs a secret key (`Client::new(url, "tsk_…")`) or, for
//! [`Console::create_session_ticket`], a console token (`Client::new(url, "tca_…")`). The agent
//! session API authenticates with the exchange's `session_token`
//! (`Client::new(url, session_token)`) or, with a cookie-storing `reqwest::Client`, with the
//! browser session cookie the exchange sets.

use tessera_api::ops;
use tessera_api::types::{
    ActionResolved, AgentContext, AgentContextList, AgentSession, ConsoleSession,
    ConsoleSignInRequest, ConsoleSignedOut, CreateAgentContextRequest, CreateSessionTicketRequest,
    DeletedAgentContext, ExchangeSessionTicketRequest, ExchangedSessionTicket,
    ListAgentContextsParams, ListMessagesParams, MessageList, ResolveActionRequest, RunAccepted,
    SendAgentMessageRequest, SessionTicket, UpdateAgentContextRequest,
};

use crate::client::Client;
use crate::request::Request;
use crate::stream::StreamRequest;

/// Session tickets: [`Client::session_tickets`].
#[derive(Debug, Clone, Copy)]
pub struct SessionTickets<'a> {
    client: &'a Client,
}

impl<'a> SessionTickets<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        SessionTickets { client }
    }

    /// `createBackendSessionTicket` (secret key): a single-use ticket and its URL.
    pub fn create_backend_session_ticket(
        &self,
        body: CreateSessionTicketRequest,
    ) -> Request<'a, SessionTicket> {
        Request::operation(self.client, ops::CREATE_BACKEND_SESSION_TICKET, &[]).json(body)
    }

    /// `exchangeSessionTicket`: redeems a ticket (once). Sends the server's own origin, as a
    /// first-party client.
    pub fn exchange(&self, ticket: impl Into<String>) -> Request<'a, ExchangedSessionTicket> {
        Request::operation(self.client, ops::EXCHANGE_SESSION_TICKET, &[])
            .json(ExchangeSessionTicketRequest {
                ticket: ticket.into(),
            })
            .header("Origin", &self.client.origin())
    }
}

/// The console API: [`Client::console`].
#[derive(Debug, Clone, Copy)]
pub struct Console<'a> {
    client: &'a Client,
}

impl<'a> Console<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Console { client }
    }

    /// `consoleSignIn`: the answer's `token` authenticates console calls as a bearer token.
    pub fn sign_in(&self, body: ConsoleSignInRequest) -> Request<'a, ConsoleSession> {
        Request::operation(self.client, ops::CONSOLE_SIGN_IN, &[])
            .json(body)
            .header("Origin", &self.client.origin())
    }

    /// `consoleSignOut`.
    pub fn sign_out(&self) -> Request<'a, ConsoleSignedOut> {
        Request::operation(self.client, ops::CONSOLE_SIGN_OUT, &[])
            .header("Origin", &self.client.origin())
    }

    /// `createSessionTicket`: a ticket for any deployment.
    pub fn create_session_ticket(
        &self,
        deployment_id: impl AsRef<str>,
        body: CreateSessionTicketRequest,
    ) -> Request<'a, SessionTicket> {
        Request::operation(
            self.client,
            ops::CREATE_SESSION_TICKET,
            &[("deployment_id", deployment_id.as_ref())],
        )
        .json(body)
        .header("Origin", &self.client.origin())
    }
}

/// The agent session's browser API: [`Client::agent`].
#[derive(Debug, Clone, Copy)]
pub struct AgentSessions<'a> {
    client: &'a Client,
}

impl<'a> AgentSessions<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        AgentSessions { client }
    }

    fn write<T>(&self, request: Request<'a, T>) -> Request<'a, T> {
        request.header("Origin", &self.client.origin())
    }

    /// `getAgentSession`.
    pub fn get_session(&self) -> Request<'a, AgentSession> {
        Request::operation(self.client, ops::GET_AGENT_SESSION, &[])
    }

    /// `listAgentContexts`.
    pub fn list_contexts(&self, params: ListAgentContextsParams) -> Request<'a, AgentContextList> {
        Request::operation(self.client, ops::LIST_AGENT_CONTEXTS, &[]).query(params)
    }

    /// `createAgentContext`.
    pub fn create_context(&self, body: CreateAgentContextRequest) -> Request<'a, AgentContext> {
        self.write(Request::operation(self.client, ops::CREATE_AGENT_CONTEXT, &[]).json(body))
    }

    /// `updateAgentContext`: renames a conversation.
    pub fn update_context(
        &self,
        context_id: impl AsRef<str>,
        title: impl Into<String>,
    ) -> Request<'a, AgentContext> {
        self.write(
            Request::operation(
                self.client,
                ops::UPDATE_AGENT_CONTEXT,
                &[("context_id", context_id.as_ref())],
            )
            .json(UpdateAgentContextRequest {
                title: title.into(),
            }),
        )
    }

    /// `deleteAgentContext`.
    pub fn delete_context(&self, context_id: impl AsRef<str>) -> Request<'a, DeletedAgentContext> {
        self.write(Request::operation(
            self.client,
            ops::DELETE_AGENT_CONTEXT,
            &[("context_id", context_id.as_ref())],
        ))
    }

    /// `listAgentContextMessages`.
    pub fn list_messages(
        &self,
        context_id: impl AsRef<str>,
        params: ListMessagesParams,
    ) -> Request<'a, MessageList> {
        Request::operation(
            self.client,
            ops::LIST_AGENT_CONTEXT_MESSAGES,
            &[("context_id", context_id.as_ref())],
        )
        .query(params)
    }

    /// `sendAgentContextMessage`.
    pub fn send_message(
        &self,
        context_id: impl AsRef<str>,
        content: impl Into<String>,
    ) -> Request<'a, RunAccepted> {
        self.write(
            Request::operation(
                self.client,
                ops::SEND_AGENT_CONTEXT_MESSAGE,
                &[("context_id", context_id.as_ref())],
            )
            .json(SendAgentMessageRequest {
                content: content.into(),
            }),
        )
    }

    /// `cancelAgentContext`.
    pub fn cancel(&self, context_id: impl AsRef<str>) -> Request<'a, RunAccepted> {
        self.write(Request::operation(
            self.client,
            ops::CANCEL_AGENT_CONTEXT,
            &[("context_id", context_id.as_ref())],
        ))
    }

    /// `resolveAgentContextAction`: `confirmed` executes the pending action (`status:
    /// processing`), otherwise it is cancelled.
    pub fn resolve_action(
        &self,
        context_id: impl AsRef<str>,
        action_id: impl AsRef<str>,
        confirmed: bool,
    ) -> Request<'a, ActionResolved> {
        self.write(
            Request::operation(
                self.client,
                ops::RESOLVE_AGENT_CONTEXT_ACTION,
                &[
                    ("context_id", context_id.as_ref()),
                    ("action_id", action_id.as_ref()),
                ],
            )
            .json(ResolveActionRequest { confirmed }),
        )
    }

    /// `streamAgentContext`: the conversation's events (resumable like a thread's stream).
    pub fn stream(&self, context_id: impl AsRef<str>) -> StreamRequest<'a> {
        let path = ops::STREAM_AGENT_CONTEXT
            .fill_path(|name| (name == "context_id").then_some(context_id.as_ref()))
            .unwrap_or_default();
        StreamRequest::at_path(self.client, path)
    }
}
