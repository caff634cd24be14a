//! The driver: performs the agent loop's effects for one claimed run.
//!
//! Every durable step (a model reply, a tool result, the end of the run) is one fenced store
//! transaction; nothing holds a transaction open across a model or tool call. A heartbeat task
//! keeps the lease alive and relays stop requests; when the lease is lost the driver stops
//! without writing, and whichever worker holds the lease resumes from the stored steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tessera_domain::agent::{Agent, ModelRef};
use tessera_domain::agent_loop::{
    AgentLoop, CallCheck, Effect, Event, LoopLimits, LoopState, Outcome,
};
use tessera_domain::event::{self, NewEvent, TOOL_COMPLETED, TOOL_STARTED};
use tessera_domain::session::{self, ActionKind, ActionStatus, Approvals, NewAction, ASK_USER};
use tessera_domain::thread::{
    Message, Role, Run, RunStatus, RunUsage, StopReason, Thread, TokenUsage, ToolCall,
};
use tessera_domain::{MessageId, RunId, Scope, Timestamp};
use tessera_store::{
    CancelRequest, Claimed, Entity, Lease, RunEnd, StartHere, StepMessage, Store, StoreError,
    ThreadEvent,
};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::hub::{Hub, Live, Stop};
use crate::provider::{self, ChatMessage, ChatRole, ModelRequest, ProviderRegistry};
use crate::tools::{ToolContext, ToolExecutor};

/// The model used by agents that name none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    pub provider: String,
    pub model: String,
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runs executed concurrently by this node.
    pub workers: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// Safety-net poll for runs (wake-ups are immediate otherwise); also bounds how soon a run
    /// whose node died is picked up after its lease expires.
    pub poll_interval: Duration,
    pub default_model: ModelChoice,
    /// Longest a single tool call may take.
    pub tool_timeout: Duration,
    /// This node's name in leases.
    pub node_id: String,
    /// How long a tool call awaiting confirmation waits, unless its approval rule says.
    pub action_expiry_seconds: u32,
    /// Board slot records older than this are pruned (each item keeps its latest).
    pub slot_retention: Duration,
    /// Chunks of an upload that never committed are deleted this long after its last chunk.
    pub upload_grace: Duration,
    /// Longest time the workers start no new runs while the board scheduler fires a burst of
    /// due slots ([`crate::board_scheduler::FIRST`]).
    pub burst_hold: Duration,
}

/// Everything runs need, shared by the workers of one node.
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub providers: ProviderRegistry,
    /// The internal tools every agent has.
    pub tools: Arc<dyn ToolExecutor>,
    pub hub: Arc<Hub>,
    pub config: RuntimeConfig,
    /// Executes the tool records agents attach (`tool_ids`); `None`: they are not offered.
    pub tool_records: Option<Arc<crate::tool_records::ToolRecordsConfig>>,
}

/// Text every model sees first.
const PREAMBLE: &str = "You are an agent working through Tessera for the person or service \
                        described below. Use the tools offered when they help; answer plainly.";

impl Runtime {
    /// Publishes events just stored (one transaction's) to this node's stream subscribers.
    pub fn publish(&self, events: &[ThreadEvent]) {
        if let Some(first) = events.first() {
            let thread = first.thread_id.clone();
            // A claim or submission may touch several threads; each gets its own.
            if events.iter().all(|e| e.thread_id == thread) {
                self.hub.publish(&thread, Live::Stored(events.into()));
            } else {
                for e in events {
                    self.hub
                        .publish(&e.thread_id, Live::Stored(std::slice::from_ref(e).into()));
                }
            }
        }
    }

    /// Executes a claimed run on a task of its own, holding the worker `slot` until it ends.
    pub(crate) fn spawn_execute(self: &Arc<Self>, claimed: Claimed, slot: OwnedSemaphorePermit) {
        self.spawn_execute_registered(claimed, slot, None);
    }

    /// [`Runtime::spawn_execute`] for a run registered with the hub already (`stop`).
    fn spawn_execute_registered(
        self: &Arc<Self>,
        claimed: Claimed,
        slot: OwnedSemaphorePermit,
        stop: Option<watch::Receiver<Stop>>,
    ) {
        let rt = self.clone();
        tokio::spawn(async move {
            // A run's future is large (the agent loop with its model and tool calls). tokio
            // copies a task's stage, as large as its future, when spawning it and again when
            // the task completes; boxed, the stage is a pointer (each copy was a sizeable
            // memcpy per run).
            Box::pin(rt.execute(claimed, stop)).await;
            drop(slot);
            rt.hub.worker_freed();
        });
    }

    /// Reserves a free worker of this node for a submission's run `run_id` (see
    /// [`StartHere`]), registering the run so that a stop requested as soon as the submission
    /// commits (an interrupting message, a cancel) reaches it. `None` when no worker is free or
    /// runs may be waiting for one (they go first). Give it back to [`Runtime::submitted`].
    pub fn reserve_worker(self: &Arc<Self>, run_id: &RunId) -> Option<ReservedWorker> {
        let slot = self.hub.reserve_worker()?;
        Some(ReservedWorker {
            stop: Some(self.hub.register_run(run_id)),
            rt: self.clone(),
            slot: Some(slot),
            run_id: run_id.clone(),
        })
    }

    /// After a submission was stored and its events published: executes its run when it was
    /// claimed for the `reserved` worker; otherwise the worker is given back and the workers are
    /// woken to claim the queued run.
    pub async fn submitted(
        self: &Arc<Self>,
        started: Option<Box<Claimed>>,
        reserved: Option<ReservedWorker>,
    ) {
        match (started, reserved) {
            (Some(claimed), Some(mut reserved)) if self.hub.workers_running() => {
                if let (Some(slot), Some(stop)) = (reserved.slot.take(), reserved.stop.take()) {
                    self.spawn_execute_registered(*claimed, slot, Some(stop));
                }
            }
            (Some(claimed), reserved) => {
                drop(reserved);
                // The node began stopping meanwhile: any node resumes the run at once.
                if let Err(err) = self.store.release_lease(&claimed.lease).await {
                    tracing::warn!(run_id = %claimed.run.id, error = %err, "releasing a run started while stopping failed; it resumes when its lease expires");
                }
                self.hub.wake_workers();
            }
            (None, reserved) => {
                drop(reserved);
                self.hub.wake_workers();
            }
        }
    }

    /// Executes a claimed run to its end, or until its lease is lost; `stop`: the run was
    /// registered with the hub already.
    async fn execute(self: &Arc<Self>, claimed: Claimed, stop: Option<watch::Receiver<Stop>>) {
        let run_id = claimed.run.id.clone();
        self.publish(&claimed.events);
        let stop = stop.unwrap_or_else(|| self.hub.register_run(&run_id));
        // The workers stopped after this run was claimed (and after they asked every
        // registered run to release): it releases at its first await point too.
        if !self.hub.workers_running() {
            self.hub.stop_run(&run_id, Stop::Release);
        }
        let stop_probe = stop.clone();
        let lease = claimed.lease.clone();
        let heartbeat = tokio::spawn(heartbeat(self.clone(), claimed.lease.clone()));
        let driver = Driver {
            rt: self,
            scope: claimed.scope,
            thread: claimed.thread,
            run: claimed.run,
            lease: claimed.lease,
            pending_stop: claimed.stop,
            history: Vec::new(),
            pending: Vec::new(),
            stop,
            next_assistant_id: None,
            approvals: Approvals::default(),
            variables: None,
            last_decision: None,
            had_actions: false,
            tools: self.tools.clone(),
            tool_specs: Default::default(),
        };
        match driver.drive().await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) if *stop_probe.borrow() == Stop::Release => {
                match self.store.release_lease(&lease).await {
                    Ok(()) => {
                        tracing::info!(run_id = %run_id, "node stopping; run released for resumption")
                    }
                    Err(err) => {
                        tracing::warn!(run_id = %run_id, error = %err, "releasing the run failed; it resumes when its lease expires")
                    }
                }
            }
            Err(StoreError::LeaseLost) => {
                tracing::info!(run_id = %run_id, "lease lost; another worker continues the run");
            }
            Err(err) => {
                // The lease will expire and another attempt resumes from the stored steps.
                tracing::error!(run_id = %run_id, error = %err, "run step failed; it will be retried");
            }
        }
        heartbeat.abort();
        self.hub.unregister_run(&run_id);
    }
}

/// A worker slot reserved for one submission's run ([`Runtime::reserve_worker`]). Dropped
/// unused (the submission failed, was a replay, or its run was queued), it unregisters the run
/// and gives the slot back, waking the workers if runs may be waiting for it.
pub struct ReservedWorker {
    rt: Arc<Runtime>,
    slot: Option<OwnedSemaphorePermit>,
    stop: Option<watch::Receiver<Stop>>,
    run_id: RunId,
}

impl ReservedWorker {
    /// What the submission asks the store to do with its run.
    pub fn start_here(&self) -> StartHere {
        StartHere {
            owner: self.rt.config.node_id.clone(),
            lease_ms: i64::try_from(self.rt.config.lease.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl Drop for ReservedWorker {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.rt.hub.unregister_run(&self.run_id);
            drop(slot);
            self.rt.hub.worker_freed();
        }
    }
}

/// Extends the lease every third of its length and relays stop requests to the driver.
async fn heartbeat(rt: Arc<Runtime>, lease: Lease) {
    let every = rt.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = Timestamp::now().plus_millis(rt.config.lease.as_millis() as i64);
        match rt.store.heartbeat(&lease, until).await {
            Ok(CancelRequest::None) => {}
            Ok(CancelRequest::Cancel) => rt.hub.stop_run(&lease.run_id, Stop::Cancel),
            Ok(CancelRequest::Interrupt) => rt.hub.stop_run(&lease.run_id, Stop::Interrupt),
            Err(StoreError::LeaseLost) => {
                rt.hub.stop_run(&lease.run_id, Stop::Abandon);
                return;
            }
            Err(err) => tracing::warn!(run_id = %lease.run_id, error = %err, "heartbeat failed"),
        }
    }
}

struct Driver<'a> {
    /// The run's stop flag as the claim found it.
    pending_stop: CancelRequest,
    rt: &'a Arc<Runtime>,
    scope: Scope,
    thread: Thread,
    run: Run,
    lease: Lease,
    /// The thread's messages as the model will see them (kept current as steps are stored).
    history: Vec<Message>,
    /// Steps decided but not yet stored. They are stored before anything that acts on them (a
    /// model call, a tool run), or together with the run's end, which then costs one commit.
    pending: Vec<StepMessage>,
    stop: watch::Receiver<Stop>,
    /// Id of the assistant message being streamed (deltas carry it; the stored reply keeps it).
    next_assistant_id: Option<MessageId>,
    /// Which tool calls need a person's confirmation (from the agent's approval rules).
    approvals: Approvals,
    /// The session's context variables as system text, read when the run was claimed.
    variables: Option<String>,
    /// When the latest decision on this run's held calls was taken (a resumed run).
    last_decision: Option<Timestamp>,
    /// The run has pending actions (it paused before): its end settles those left unfinished.
    had_actions: bool,
    /// The tools this run's model sees: the internal ones and the agent's tool records.
    tools: Arc<dyn ToolExecutor>,
    /// Their specs, made once per run (every model request carries them).
    tool_specs: Arc<[crate::provider::ToolSpec]>,
}

/// Waits until a stop other than `Continue` is requested.
async fn stopped(rx: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let current = *rx.borrow_and_update();
        if current != Stop::Continue {
            return current;
        }
        if rx.changed().await.is_err() {
            // The hub dropped the run: treat as abandoned.
            return Stop::Abandon;
        }
    }
}

fn stop_event(stop: Stop) -> Result<Event, StoreError> {
    match stop {
        Stop::Cancel => Ok(Event::Cancelled { interrupted: false }),
        Stop::Interrupt => Ok(Event::Cancelled { interrupted: true }),
        Stop::Abandon | Stop::Release | Stop::Continue => Err(StoreError::LeaseLost),
    }
}

impl Driver<'_> {
    async fn drive(mut self) -> Result<(), StoreError> {
        let store = self.rt.store.as_ref();
        // A stop requested before this claim (later ones arrive through the hub and heartbeat).
        let pending_stop = self.pending_stop;
        // Independent reads: at once.
        let (agent, history, session) = tokio::join!(
            store.get_agent(&self.scope, &self.thread.agent_id),
            store.thread_history(&self.scope, &self.thread.id),
            store.session_state(&self.scope, &self.thread.id)
        );
        self.variables = session::variables_prompt(&session?.variables);
        let agent = match agent {
            Ok(agent) => Some(agent),
            Err(StoreError::NotFound {
                entity: Entity::Agent,
                ..
            }) => None,
            Err(err) => return Err(err),
        };
        self.history = history?;
        let state = LoopState::from_history(
            &self
                .history
                .iter()
                .filter(|m| m.run_id.as_ref() == Some(&self.run.id))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let Some(agent) = agent else {
            return self
                .finish(
                    &state,
                    Outcome::Failed,
                    StopReason::ModelError,
                    Some("the thread's agent was deleted".to_owned()),
                )
                .await;
        };
        self.tools = self.agent_tools(&agent).await?;
        self.tool_specs = self.tools.specs().into();
        // The agent's model, else the deployment's default, else the server's.
        let model = match &agent.spec.model {
            Some(model) => Some(model.clone()),
            None => {
                store
                    .get_deployment(&self.scope)
                    .await?
                    .settings
                    .default_model
            }
        };
        let limits = LoopLimits {
            max_iterations: agent.spec.limits.max_iterations,
            token_budget: agent.spec.limits.token_budget,
        };
        let (mut lp, first) = self.start_loop(&agent, limits, state).await?;
        // Time spent waiting for a person does not count: a run resumed after a decision gets
        // its whole wall-clock limit again.
        let started = match self.last_decision {
            Some(decided) => decided,
            None => self.run.started_at.unwrap_or_else(Timestamp::now),
        };
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(
                (started
                    .plus_secs(i64::from(agent.spec.limits.run_timeout_seconds))
                    .as_millis()
                    - Timestamp::now().as_millis())
                .max(0) as u64,
            );
        let mut queue: VecDeque<Effect> = first.into();
        match pending_stop {
            CancelRequest::None => {}
            CancelRequest::Cancel | CancelRequest::Interrupt => {
                let interrupted = pending_stop == CancelRequest::Interrupt;
                queue = lp.handle(Event::Cancelled { interrupted }).into();
            }
        }
        while let Some(effect) = queue.pop_front() {
            if !matches!(effect, Effect::Finish { .. }) {
                // Between steps: honour stop requests and the deadline before doing more.
                let current = *self.stop.borrow();
                let interruption = if current != Stop::Continue {
                    Some(stop_event(current)?)
                } else if tokio::time::Instant::now() >= deadline {
                    Some(Event::TimedOut)
                } else {
                    None
                };
                if let Some(event) = interruption {
                    let event = self.stored_stop_reason(event).await?;
                    queue = lp.handle(event).into();
                    continue;
                }
            }
            if matches!(effect, Effect::CallModel | Effect::RunTools(_)) {
                self.flush().await?;
            }
            let events = match effect {
                Effect::CallModel => vec![self.call_model(&agent, model.as_ref(), deadline).await?],
                Effect::RecordAssistant {
                    text,
                    tool_calls,
                    usage,
                } => {
                    let turn = lp.state().iterations;
                    self.record_assistant(turn, text, tool_calls, usage).await?;
                    vec![Event::AssistantRecorded]
                }
                Effect::RunTools(calls) => self.run_tools(calls, deadline).await?,
                Effect::RecordToolResult { call, result } => {
                    let call_id = call.id.clone();
                    self.record_tool_result(call, result).await?;
                    vec![Event::ToolResultRecorded { call_id }]
                }
                Effect::Finish {
                    outcome,
                    reason,
                    detail,
                } => {
                    let state = lp.state().clone();
                    return self.finish(&state, outcome, reason, detail).await;
                }
                Effect::Pause(calls) => {
                    self.flush().await?;
                    return self.pause(calls).await;
                }
            };
            for event in events {
                let event = self.stored_stop_reason(event).await?;
                queue.extend(lp.handle(event));
            }
        }
        Ok(())
    }

    /// A cancellation with the reason stored on the run. The hub's stop request may not say why:
    /// a cancellation relayed from another node (PostgreSQL `NOTIFY`, which also echoes this
    /// node's own requests) is a plain `Cancel`, and may even overwrite this node's
    /// `Interrupt` for the same run. Other events pass through.
    async fn stored_stop_reason(&self, event: Event) -> Result<Event, StoreError> {
        let Event::Cancelled { interrupted } = event else {
            return Ok(event);
        };
        let until = Timestamp::now().plus_millis(self.rt.config.lease.as_millis() as i64);
        Ok(match self.rt.store.heartbeat(&self.lease, until).await? {
            CancelRequest::Interrupt => Event::Cancelled { interrupted: true },
            CancelRequest::Cancel => Event::Cancelled { interrupted: false },
            CancelRequest::None => Event::Cancelled { interrupted },
        })
    }

    /// The conversation as the model sees it: system text, then the thread's messages.
    fn context(&self, agent: &Agent) -> Vec<ChatMessage> {
        let mut system = String::from(PREAMBLE);
        if !agent.spec.description.as_str().is_empty() {
            system.push_str("\n\n");
            system.push_str(agent.spec.description.as_str());
        }
        if let Some(instructions) = &self.thread.system_instructions {
            system.push_str("\n\n");
            system.push_str(instructions);
        }
        if let Some(variables) = &self.variables {
            system.push_str("\n\n");
            system.push_str(variables);
        }
        let mut messages = vec![ChatMessage {
            role: ChatRole::System,
            content: system,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }];
        let input = &self.run.input_message_id;
        let mut open_calls: Vec<(String, String)> = Vec::new();
        let ordered = conversation_order(&self.history);
        let answers = question_answers(&ordered);
        for m in ordered {
            // Messages queued for later runs are not part of this run's conversation.
            if m.role == Role::User && m.run_id.as_ref() != Some(&self.run.id) && m.id > *input {
                continue;
            }
            // An answer to `ask_user` reaches the model as that call's result.
            if answers.contains(&m.id) {
                continue;
            }
            if m.role != Role::Tool {
                close_open_calls(&mut messages, &mut open_calls);
            }
            match m.role {
                Role::User | Role::System => messages.push(ChatMessage {
                    role: if m.role == Role::User {
                        ChatRole::User
                    } else {
                        ChatRole::System
                    },
                    content: m.content.clone(),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                }),
                Role::Assistant => {
                    open_calls = m
                        .tool_calls
                        .iter()
                        .map(|c| (c.id.clone(), c.name.clone()))
                        .collect();
                    messages.push(ChatMessage {
                        role: ChatRole::Assistant,
                        content: m.content.clone(),
                        tool_calls: m.tool_calls.iter().map(to_provider_call).collect(),
                        tool_call_id: None,
                    });
                }
                Role::Tool => {
                    if let Some(id) = &m.tool_call_id {
                        open_calls.retain(|(open, _)| open != id);
                    }
                    messages.push(ChatMessage {
                        role: ChatRole::Tool,
                        content: m.content.clone(),
                        tool_calls: Vec::new(),
                        tool_call_id: m.tool_call_id.clone(),
                    });
                }
            }
        }
        close_open_calls(&mut messages, &mut open_calls);
        messages
    }

    async fn call_model(
        &mut self,
        agent: &Agent,
        model: Option<&ModelRef>,
        deadline: tokio::time::Instant,
    ) -> Result<Event, StoreError> {
        let (provider_name, model_name, temperature, max_output_tokens) = match model {
            Some(m) => (
                m.provider.as_str().to_owned(),
                m.model.as_str().to_owned(),
                m.temperature,
                m.max_output_tokens,
            ),
            None => (
                self.rt.config.default_model.provider.clone(),
                self.rt.config.default_model.model.clone(),
                None,
                None,
            ),
        };
        let Some(provider) = self.rt.providers.get(&provider_name) else {
            return Ok(Event::ModelFailed {
                error: format!("model provider `{provider_name}` is not configured"),
            });
        };
        let request = ModelRequest {
            model: model_name,
            messages: self.context(agent),
            tools: self.tool_specs.clone(),
            temperature,
            max_output_tokens,
        };
        let message_id = MessageId::generate();
        let hub = self.rt.hub.clone();
        let thread_id = self.thread.id.clone();
        let run_id = self.run.id.clone();
        let draft_id = message_id.to_string();
        let on_delta = move |text: &str| {
            hub.publish(
                &thread_id,
                Live::Delta {
                    run_id: run_id.clone(),
                    message_id: draft_id.clone(),
                    text: text.to_owned(),
                },
            );
        };
        let mut stop = self.stop.clone();
        let event = tokio::select! {
            result = provider.complete(&request, &on_delta) => match result {
                Ok(turn) => Event::ModelReplied {
                    text: turn.text,
                    tool_calls: turn.tool_calls.into_iter().map(from_provider_call).collect(),
                    usage: TokenUsage {
                        prompt_tokens: turn.usage.prompt_tokens,
                        completion_tokens: turn.usage.completion_tokens,
                    },
                },
                Err(err) => Event::ModelFailed { error: err.to_string() },
            },
            requested = stopped(&mut stop) => stop_event(requested)?,
            () = tokio::time::sleep_until(deadline) => Event::TimedOut,
        };
        self.next_assistant_id = Some(message_id);
        Ok(event)
    }

    async fn record_assistant(
        &mut self,
        turn: u32,
        text: String,
        tool_calls: Vec<ToolCall>,
        usage: TokenUsage,
    ) -> Result<(), StoreError> {
        let message = Message {
            id: self
                .next_assistant_id
                .take()
                .unwrap_or_else(MessageId::generate),
            thread_id: self.thread.id.clone(),
            run_id: Some(self.run.id.clone()),
            role: Role::Assistant,
            content: text,
            tool_calls,
            tool_call_id: None,
            tool_name: None,
            is_error: false,
            attachments: Vec::new(),
            usage: Some(usage),
            created_at: Timestamp::now(),
        };
        self.pending.push(StepMessage {
            event: event::message_event(event::MESSAGE_COMPLETED, &message),
            step_key: format!("turn:{turn}"),
            message: message.clone(),
        });
        self.history.push(message);
        Ok(())
    }

    /// Stores the pending steps in one fenced transaction.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let events = self
            .rt
            .store
            .record_step(&self.lease, &self.pending)
            .await?;
        self.pending.clear();
        self.rt.publish(&events);
        Ok(())
    }

    async fn run_tools(
        &mut self,
        calls: Vec<ToolCall>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Event>, StoreError> {
        // A question's `tool.started` was stored when it was asked.
        let started: Vec<NewEvent> = calls
            .iter()
            .filter(|c| c.name != ASK_USER)
            .map(|c| NewEvent {
                kind: TOOL_STARTED,
                data: json!({
                    "run_id": self.run.id.as_str(),
                    "call_id": c.id,
                    "name": c.name,
                    "arguments": c.arguments,
                }),
            })
            .collect();
        if !started.is_empty() {
            let events = self.rt.store.append_events(&self.lease, &started).await?;
            self.rt.publish(&events);
        }
        let ctx = ToolContext {
            store: self.rt.store.as_ref(),
            scope: &self.scope,
            thread_id: &self.thread.id,
            run_id: &self.run.id,
            lease: &self.lease,
        };
        let default_timeout = self.rt.config.tool_timeout;
        let tools = self.tools.clone();
        // Independent calls of one turn run concurrently.
        let all = futures_util::future::join_all(calls.iter().map(|call| {
            let ctx = &ctx;
            let tools = tools.clone();
            let gated = self.approvals.needs(&call.name);
            let timeout = tools.timeout(&call.name).unwrap_or(default_timeout);
            async move { execute_call(tools.as_ref(), ctx, call, gated, timeout).await }
        }));
        let mut stop = self.stop.clone();
        let outputs = tokio::select! {
            outputs = all => outputs,
            requested = stopped(&mut stop) => return Ok(vec![stop_event(requested)?]),
            () = tokio::time::sleep_until(deadline) => return Ok(vec![Event::TimedOut]),
        };
        let mut events = Vec::with_capacity(outputs.len());
        for (call, CallOutput { output, timed_out }) in calls.into_iter().zip(outputs) {
            self.rt.publish(&output.events);
            events.push(match (timed_out, output.result) {
                (true, Err(error)) => Event::ToolTimedOut {
                    call_id: call.id,
                    error,
                },
                (_, result) => Event::ToolFinished {
                    call_id: call.id,
                    result,
                },
            });
        }
        Ok(events)
    }

    async fn record_tool_result(
        &mut self,
        call: ToolCall,
        result: Result<String, String>,
    ) -> Result<(), StoreError> {
        let (step, message) = self.tool_step(call, result);
        self.pending.push(step);
        self.history.push(message);
        Ok(())
    }

    /// The durable step of a tool call's result.
    fn tool_step(&self, call: ToolCall, result: Result<String, String>) -> (StepMessage, Message) {
        let (content, is_error) = match result {
            Ok(text) => (text, false),
            Err(text) => (text, true),
        };
        let message = Message {
            id: MessageId::generate(),
            thread_id: self.thread.id.clone(),
            run_id: Some(self.run.id.clone()),
            role: Role::Tool,
            content,
            tool_calls: Vec::new(),
            tool_call_id: Some(call.id.clone()),
            tool_name: Some(call.name.clone()),
            is_error,
            attachments: Vec::new(),
            usage: None,
            created_at: Timestamp::now(),
        };
        let step = StepMessage {
            event: NewEvent {
                kind: TOOL_COMPLETED,
                data: json!({
                    "run_id": self.run.id.as_str(),
                    "call_id": call.id,
                    "name": call.name,
                    "is_error": is_error,
                    "message": event::message_json(&message),
                }),
            },
            step_key: format!("tool:{}", call.id),
            message: message.clone(),
        };
        (step, message)
    }

    async fn finish(
        &self,
        state: &LoopState,
        outcome: Outcome,
        reason: StopReason,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let end = RunEnd {
            status: match outcome {
                Outcome::Completed => RunStatus::Completed,
                Outcome::Failed => RunStatus::Failed,
                Outcome::Cancelled => RunStatus::Cancelled,
            },
            stop_reason: reason,
            error: detail,
            usage: RunUsage {
                prompt_tokens: state.usage.prompt_tokens,
                completion_tokens: state.usage.completion_tokens,
                iterations: state.iterations,
                tool_calls: state.tool_calls,
                wall_ms: 0,
            },
        };
        if self.had_actions {
            // An action confirmed but not started (the run was cancelled first), or stopped
            // midway (cancellation, timeout), must not stay open: it gets a final status. A
            // crash before the end below resumes the run, which settles them again.
            let reason = match end.status {
                RunStatus::Cancelled => "the run was cancelled before the action finished",
                _ => "the run ended before the action finished",
            };
            let events = self.rt.store.settle_actions(&self.lease, reason).await?;
            self.rt.publish(&events);
        }
        // A question left unanswered (the run was cancelled or its session closed while it
        // waited) gets its outcome as the call's result, like any other ending of the call.
        let mut steps = self.pending.clone();
        for call in state.pending.iter().filter(|c| c.name == ASK_USER) {
            let reason = match end.status {
                RunStatus::Cancelled => "the run was cancelled before anyone answered the question",
                _ => "the run ended before anyone answered the question",
            };
            steps.push(self.tool_step(call.clone(), Err(reason.to_owned())).0);
        }
        let (run, events) = self
            .rt
            .store
            .finish_run_after(&self.lease, &steps, &end)
            .await?;
        // Runs queued behind this one were woken for when they were queued (here, or by
        // another node's `NOTIFY`); the slot freed when this returns wakes the workers for them.
        self.rt.publish(&events);
        tracing::info!(
            run_id = %run.id,
            status = run.status.as_str(),
            stop_reason = reason.as_str(),
            iterations = state.iterations,
            "run finished"
        );
        Ok(())
    }
}

impl Driver<'_> {
    /// Starts the loop with the agent's approval rules and the decisions already taken on this
    /// run's held calls (a resumed run).
    async fn start_loop(
        &mut self,
        agent: &Agent,
        limits: LoopLimits,
        state: LoopState,
    ) -> Result<(AgentLoop, Vec<Effect>), StoreError> {
        let store = self.rt.store.as_ref();
        let tool_expiry = self
            .tool_specs
            .iter()
            .filter_map(|s| {
                self.tools
                    .confirmation_expiry(&s.name)
                    .map(|e| (s.name.clone(), e))
            })
            .collect();
        self.approvals = Approvals::new(
            agent.spec.approval_rules.clone(),
            self.tools.requiring_confirmation(),
            self.rt.config.action_expiry_seconds,
        )
        .with_tool_expiry(tool_expiry);
        // Only a run that stopped with calls outstanding can have decisions to honour.
        let actions = if state.pending.is_empty() {
            Vec::new()
        } else {
            store.run_actions(&self.scope, &self.run.id).await?
        };
        self.last_decision = actions.iter().filter_map(|a| a.decided_at).max();
        self.had_actions = !actions.is_empty();
        let decisions = actions
            .iter()
            .filter_map(|a| a.decision().map(|d| (a.call_id.clone(), d)))
            .collect();
        // Arguments are checked before anyone is asked to confirm (or answer) a call.
        let tools = self.tools.clone();
        Ok(AgentLoop::start_checked(
            limits,
            state,
            self.approvals.clone(),
            decisions,
            CallCheck::new(move |call| tools.check(call)),
        ))
    }

    /// The internal tools, the agent's tool records when it attaches any, and the tools of
    /// the toolkits the thread's actor connected.
    async fn agent_tools(&self, agent: &Agent) -> Result<Arc<dyn ToolExecutor>, StoreError> {
        let Some(config) = &self.rt.tool_records else {
            return Ok(self.rt.tools.clone());
        };
        let mut chain = vec![self.rt.tools.clone()];
        if !agent.spec.tool_ids.is_empty() {
            let records = self
                .rt
                .store
                .tools_by_ids(&self.scope, &agent.spec.tool_ids)
                .await?;
            chain.push(Arc::new(
                crate::tool_records::RecordTools::load(records, config.clone()).await,
            ));
        }
        if let Some(toolkits) = &config.toolkits {
            chain.push(Arc::new(
                crate::toolkits::ToolkitTools::load(
                    toolkits.clone(),
                    self.rt.store.as_ref(),
                    &self.scope,
                    &self.thread.actor_id,
                )
                .await?,
            ));
        }
        if chain.len() == 1 {
            return Ok(self.rt.tools.clone());
        }
        Ok(Arc::new(crate::board_tools::ToolChain::new(chain)))
    }

    /// Stores the held calls as pending actions and leaves the run `waiting_for_input`; a
    /// decision (or the expiry scheduler) hands it back to the workers.
    async fn pause(&self, calls: Vec<ToolCall>) -> Result<(), StoreError> {
        let now = Timestamp::now();
        // Ids in the order of the calls (a millisecond apart): several questions of one turn
        // are answered in the order the model asked them.
        let actions: Vec<NewAction> = calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| NewAction {
                id: tessera_domain::ActionId::generate_at(now.plus_millis(i as i64)),
                expires_at: now.plus_secs(i64::from(self.approvals.expiry_seconds(&c.name))),
                kind: if c.name == ASK_USER {
                    ActionKind::Question
                } else {
                    ActionKind::Confirmation
                },
                tool: c.name,
                preview: c.arguments,
                call_id: c.id,
            })
            .collect();
        let (pending, events) = self.rt.store.pause_run(&self.lease, &actions).await?;
        self.rt.publish(&events);
        self.rt.hub.wake_scheduler();
        self.rt.hub.wake_workers();
        tracing::info!(run_id = %self.run.id, actions = pending.len(), "run waiting for confirmation");
        Ok(())
    }
}

/// What a call gave: its output, and whether that output is the error of the tool's timeout
/// (which ends the run once the turn's results are stored).
struct CallOutput {
    output: crate::tools::ToolOutput,
    timed_out: bool,
}

impl From<crate::tools::ToolOutput> for CallOutput {
    fn from(output: crate::tools::ToolOutput) -> Self {
        Self {
            output,
            timed_out: false,
        }
    }
}

/// Runs a tool, or abandons it with an error when it takes longer than `timeout`.
async fn execute_tool(
    tools: &dyn ToolExecutor,
    ctx: &ToolContext<'_>,
    call: &ToolCall,
    timeout: Duration,
) -> CallOutput {
    match tokio::time::timeout(timeout, tools.execute(ctx, call)).await {
        Ok(output) => output.into(),
        Err(_) => CallOutput {
            output: crate::tools::ToolOutput::error(format!(
                "the tool `{}` did not finish within {} seconds",
                call.name,
                timeout.as_secs()
            )),
            timed_out: true,
        },
    }
}

/// Executes one call. A call that needed confirmation runs at most once, whatever crashes: it
/// is durably marked `executing` before its tool starts, and its result (a failure and a
/// timeout included) is kept on the action, so a resumed run reuses the result (or, if the node
/// died mid-call, reports that the outcome is unknown) instead of running the tool again.
async fn execute_call(
    tools: &dyn ToolExecutor,
    ctx: &ToolContext<'_>,
    call: &ToolCall,
    gated: bool,
    timeout: Duration,
) -> CallOutput {
    use crate::tools::ToolOutput;
    if !gated {
        return execute_tool(tools, ctx, call, timeout).await;
    }
    crate::fault::point("action_before_start").await;
    let action = match ctx.store.start_action(ctx.lease, &call.id).await {
        Ok(action) => action,
        Err(err) => {
            return ToolOutput::error(format!("could not start the confirmed action: {err}")).into()
        }
    };
    let stored = |result: Result<String, String>| -> CallOutput {
        ToolOutput {
            result,
            events: Vec::new(),
        }
        .into()
    };
    match action.status {
        ActionStatus::Confirmed => {
            let output = execute_tool(tools, ctx, call, timeout).await;
            crate::fault::point("action_after_tool").await;
            if let Err(err) = ctx
                .store
                .finish_action(ctx.lease, &call.id, &output.output.result)
                .await
            {
                tracing::warn!(call_id = %call.id, error = %err, "recording the action's result failed");
            }
            crate::fault::point("action_after_result").await;
            output
        }
        ActionStatus::Completed => stored(Ok(action.result.unwrap_or_default())),
        ActionStatus::Failed => stored(Err(action.result.unwrap_or_default())),
        ActionStatus::Executing => {
            let text = "the node executing this confirmed action stopped before it reported; \
                        the action was not repeated and its outcome is unknown"
                .to_owned();
            if let Err(err) = ctx
                .store
                .finish_action(ctx.lease, &call.id, &Err(text.clone()))
                .await
            {
                tracing::warn!(call_id = %call.id, error = %err, "recording the action's outcome failed");
            }
            stored(Err(text))
        }
        ActionStatus::Pending | ActionStatus::Cancelled | ActionStatus::Expired => {
            stored(Err(format!(
                "the action is {} and was not executed",
                action.status.as_str()
            )))
        }
    }
}

/// The thread's messages in conversation order: each run's messages together, runs in the order
/// they were submitted. Ids order messages by creation, but a message sent while an earlier run
/// was still working (between its tool call and the result, say) was created in the middle of
/// that run's messages; the model must see it after them, or the run's tool results would be
/// separated from their call (which chat APIs refuse).
fn conversation_order(history: &[Message]) -> Vec<&Message> {
    // A run's first message is its input, stored when the run was submitted.
    let mut first_of_run: std::collections::HashMap<&RunId, &MessageId> =
        std::collections::HashMap::new();
    for m in history {
        if let Some(run) = &m.run_id {
            first_of_run
                .entry(run)
                .and_modify(|first| *first = (*first).min(&m.id))
                .or_insert(&m.id);
        }
    }
    let group = |m: &Message| -> MessageId {
        m.run_id
            .as_ref()
            .and_then(|run| first_of_run.get(run))
            .map_or_else(|| m.id.clone(), |first| (*first).clone())
    };
    let mut ordered: Vec<(MessageId, &Message)> = history.iter().map(|m| (group(m), m)).collect();
    ordered.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.id.cmp(&y.id)));
    ordered.into_iter().map(|(_, m)| m).collect()
}

/// The `ask_user` answers among the messages (in conversation order): a person's message that
/// is not the first of its run joined a run waiting on a question.
fn question_answers(ordered: &[&Message]) -> std::collections::HashSet<MessageId> {
    let mut seen_runs = std::collections::HashSet::new();
    let mut answers = std::collections::HashSet::new();
    for m in ordered {
        let Some(run) = &m.run_id else { continue };
        let first = seen_runs.insert(run.clone());
        if !first && m.role == Role::User {
            answers.insert(m.id.clone());
        }
    }
    answers
}

/// Gives calls of an earlier turn that never got a result (their run was cancelled) a result,
/// because chat APIs refuse an assistant tool call without one.
fn close_open_calls(messages: &mut Vec<ChatMessage>, open: &mut Vec<(String, String)>) {
    for (id, name) in open.drain(..) {
        messages.push(ChatMessage {
            role: ChatRole::Tool,
            content: format!("the call to `{name}` was not completed (the run ended first)"),
            tool_calls: Vec::new(),
            tool_call_id: Some(id),
        });
    }
}

fn to_provider_call(c: &ToolCall) -> provider::ToolCall {
    provider::ToolCall {
        id: c.id.clone(),
        name: c.name.clone(),
        arguments: c.arguments.clone(),
    }
}

fn from_provider_call(c: provider::ToolCall) -> ToolCall {
    ToolCall {
        id: c.id,
        name: c.name,
        arguments: c.arguments,
    }
}
