//! Threads: create and read them, send messages (each starts a run), cancel, read runs, stream.

use tessera_api::ops;
use tessera_api::types::{
    CreateThreadRequest, ExecuteThreadRequest, ListMessagesParams, MessageList, NewMessage, Run,
    RunAccepted, Thread,
};

use crate::client::Client;
use crate::request::Request;
use crate::stream::StreamRequest;

/// Threads: [`crate::Ai::threads`].
#[derive(Debug, Clone, Copy)]
pub struct Threads<'a> {
    client: &'a Client,
}

impl<'a> Threads<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Threads { client }
    }

    /// `createAgentThread` in project `project_id`.
    pub fn create_thread(
        &self,
        project_id: impl AsRef<str>,
        body: CreateThreadRequest,
    ) -> Request<'a, Thread> {
        let project_id = project_id.as_ref();
        Request::operation(
            self.client,
            ops::CREATE_AGENT_THREAD,
            &[("project_id", project_id)],
        )
        .json(body)
    }

    /// `getAgentThreadById`.
    pub fn get_thread(&self, thread_id: impl AsRef<str>) -> Request<'a, Thread> {
        let thread_id = thread_id.as_ref();
        Request::operation(
            self.client,
            ops::GET_AGENT_THREAD_BY_ID,
            &[("thread_id", thread_id)],
        )
    }

    /// `getAgentThreadMessages`: one page, oldest first unless `order` says otherwise.
    pub fn list_messages(
        &self,
        thread_id: impl AsRef<str>,
        params: ListMessagesParams,
    ) -> Request<'a, MessageList> {
        let thread_id = thread_id.as_ref();
        Request::operation(
            self.client,
            ops::GET_AGENT_THREAD_MESSAGES,
            &[("thread_id", thread_id)],
        )
        .query(params)
    }

    /// `executeAgentThreadAsync` with a message: queues a run (202 `{status: "queued", run_id}`).
    /// Add `.idempotency_key(…)` to make retries safe.
    pub fn send_message(
        &self,
        thread_id: impl AsRef<str>,
        content: impl Into<String>,
    ) -> Request<'a, RunAccepted> {
        self.execute(
            thread_id,
            ExecuteThreadRequest {
                message: Some(NewMessage {
                    content: content.into(),
                    files: None,
                }),
                cancel: None,
            },
        )
    }

    /// `executeAgentThreadAsync` with `{"cancel": true}`: cancels the thread's queued and
    /// active runs.
    pub fn cancel(&self, thread_id: impl AsRef<str>) -> Request<'a, RunAccepted> {
        self.execute(
            thread_id,
            ExecuteThreadRequest {
                message: None,
                cancel: Some(true),
            },
        )
    }

    /// `executeAgentThreadAsync` with any body.
    pub fn execute(
        &self,
        thread_id: impl AsRef<str>,
        body: ExecuteThreadRequest,
    ) -> Request<'a, RunAccepted> {
        let thread_id = thread_id.as_ref();
        Request::operation(
            self.client,
            ops::EXECUTE_AGENT_THREAD_ASYNC,
            &[("thread_id", thread_id)],
        )
        .json(body)
    }

    /// `getAgentThreadRun`.
    pub fn get_run(&self, thread_id: impl AsRef<str>, run_id: impl AsRef<str>) -> Request<'a, Run> {
        let (thread_id, run_id) = (thread_id.as_ref(), run_id.as_ref());
        Request::operation(
            self.client,
            ops::GET_AGENT_THREAD_RUN,
            &[("thread_id", thread_id), ("run_id", run_id)],
        )
    }

    /// `streamAgentThread`: the thread's events (Server-Sent Events). Set
    /// [`StreamRequest::last_event_id`] to resume after an event already received.
    pub fn stream(&self, thread_id: impl AsRef<str>) -> StreamRequest<'a> {
        StreamRequest::new(self.client, thread_id.as_ref())
    }
}
