//! The agent loop as a pure state machine: events in, effects out.
//!
//! The driver (in `tessera-runtime`) performs the effects — calling the model, persisting
//! messages, running tools — and feeds what happened back as events. Because the machine does no
//! I/O it is tested exhaustively without a network, and because its state can be rebuilt from the
//! run's stored messages ([`LoopState::from_history`]) a run resumed on another node continues from
//! its last durable step: a model turn whose reply was stored is not asked again, a tool whose
//! result was stored is not run again.

use crate::session::{Approvals, Decision};
use crate::thread::{Message, Role, StopReason, TokenUsage, ToolCall};

/// Checks a call's arguments before the call is held for a person (against its tool's input
/// schema): a call that fails gets the problem as its tool error at once, and nobody is asked
/// to confirm (or answer) a call that could not run.
#[derive(Clone)]
pub struct CallCheck(std::sync::Arc<CheckFn>);

/// The function a [`CallCheck`] runs: `Err` is the problem the model gets.
type CheckFn = dyn Fn(&ToolCall) -> Result<(), String> + Send + Sync;

impl CallCheck {
    pub fn new(check: impl Fn(&ToolCall) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(check))
    }

    /// Accepts every call.
    pub fn any() -> Self {
        Self::new(|_| Ok(()))
    }

    pub fn check(&self, call: &ToolCall) -> Result<(), String> {
        (self.0)(call)
    }
}

impl std::fmt::Debug for CallCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallCheck")
    }
}

/// The limits a run works under (from the agent definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopLimits {
    pub max_iterations: u32,
    pub token_budget: Option<u64>,
}

/// What has happened so far in a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopState {
    /// Model turns whose reply is stored.
    pub iterations: u32,
    pub usage: TokenUsage,
    /// Tool calls made so far.
    pub tool_calls: u32,
    /// Calls of the latest model turn still waiting for their result.
    pub pending: Vec<ToolCall>,
}

impl LoopState {
    /// Rebuilds the state from the messages this run has stored, oldest first.
    pub fn from_history(run_messages: &[Message]) -> Self {
        let mut state = Self::default();
        for message in run_messages {
            match message.role {
                Role::Assistant => {
                    state.iterations += 1;
                    if let Some(u) = message.usage {
                        state.usage.prompt_tokens += u.prompt_tokens;
                        state.usage.completion_tokens += u.completion_tokens;
                    }
                    state.tool_calls += message.tool_calls.len() as u32;
                    state.pending = message.tool_calls.clone();
                }
                Role::Tool => {
                    if let Some(id) = &message.tool_call_id {
                        state.pending.retain(|c| &c.id != id);
                    }
                }
                Role::User | Role::System => {}
            }
        }
        state
    }
}

/// How a finished run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

/// Something that happened, reported by the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The model finished a turn.
    ModelReplied {
        text: String,
        tool_calls: Vec<ToolCall>,
        usage: TokenUsage,
    },
    /// The model call failed for good (the provider already retried what it could).
    ModelFailed { error: String },
    /// The assistant message of the last turn is durable.
    AssistantRecorded,
    /// A tool call finished; `Err` carries the error text given back to the model.
    ToolFinished {
        call_id: String,
        result: Result<String, String>,
    },
    /// A tool call took longer than its tool's timeout and was abandoned. `error` is stored as
    /// the call's result; once the results of the turn's other finished calls are stored too,
    /// the run ends (`tool_timeout`) with `error` as its reason.
    ToolTimedOut { call_id: String, error: String },
    /// The result of a tool call is durable.
    ToolResultRecorded { call_id: String },
    /// Cancellation was requested (`interrupted`: by a newer message).
    Cancelled { interrupted: bool },
    /// The run's wall-clock limit passed.
    TimedOut,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Ask the model for the next turn, given the stored conversation.
    CallModel,
    /// Store the model's reply (one durable step), then report `AssistantRecorded`.
    RecordAssistant {
        text: String,
        tool_calls: Vec<ToolCall>,
        usage: TokenUsage,
    },
    /// Run these calls (concurrently) and report each with `ToolFinished`.
    RunTools(Vec<ToolCall>),
    /// Store a tool result (one durable step), then report `ToolResultRecorded`.
    RecordToolResult {
        call: ToolCall,
        result: Result<String, String>,
    },
    /// These calls need a person's confirmation: store them as pending actions and pause the
    /// run (`waiting_for_input`). The loop does nothing more; a decision resumes the run, which
    /// starts a new loop with the decisions known.
    Pause(Vec<ToolCall>),
    /// End the run.
    Finish {
        outcome: Outcome,
        reason: StopReason,
        detail: Option<String>,
    },
}

/// Where the loop is.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for the model's reply.
    AwaitingModel,
    /// Waiting for the reply (its calls and usage) to be stored.
    RecordingAssistant {
        tool_calls: Vec<ToolCall>,
        usage: TokenUsage,
    },
    /// Waiting for tool results / their storage.
    AwaitingTools,
    /// Paused for confirmations (the driver stops; a new loop resumes).
    Paused,
    Finished,
}

/// One run's loop.
#[derive(Debug, Clone)]
pub struct AgentLoop {
    limits: LoopLimits,
    state: LoopState,
    phase: Phase,
    /// Results reported but not yet stored, by call id.
    recording: Vec<String>,
    /// A call of the current turn timed out: the run ends once the turn's reported results
    /// are stored.
    tool_timeout: Option<String>,
    /// Which tools need a confirmation.
    approvals: Approvals,
    /// Decisions already taken on calls that needed one, by call id.
    decisions: Vec<(String, Decision)>,
    /// Calls of the current turn waiting for a decision.
    awaiting: Vec<String>,
    /// Checks calls before they are held for a decision.
    check: CallCheck,
}

impl AgentLoop {
    /// A loop resuming from `state` (use `LoopState::default()` for a new run). Returns the loop
    /// and the first effects.
    pub fn start(limits: LoopLimits, state: LoopState) -> (Self, Vec<Effect>) {
        Self::start_with(limits, state, Approvals::default(), Vec::new())
    }

    /// Like [`AgentLoop::start`], with calls of the tools `approvals` names held for a person's
    /// confirmation, and the `decisions` already taken on such calls (by call id).
    pub fn start_with(
        limits: LoopLimits,
        state: LoopState,
        approvals: Approvals,
        decisions: Vec<(String, Decision)>,
    ) -> (Self, Vec<Effect>) {
        Self::start_checked(limits, state, approvals, decisions, CallCheck::any())
    }

    /// Like [`AgentLoop::start_with`], with `check` run on each held call before it waits for
    /// a decision: a call it refuses is answered with the refusal instead.
    pub fn start_checked(
        limits: LoopLimits,
        state: LoopState,
        approvals: Approvals,
        decisions: Vec<(String, Decision)>,
        check: CallCheck,
    ) -> (Self, Vec<Effect>) {
        let mut this = Self {
            check,
            limits,
            state,
            phase: Phase::AwaitingModel,
            recording: Vec::new(),
            tool_timeout: None,
            approvals,
            decisions,
            awaiting: Vec::new(),
        };
        let effects = if this.state.pending.is_empty() {
            this.next_turn()
        } else {
            this.dispatch(this.state.pending.clone())
        };
        (this, effects)
    }

    pub fn is_paused(&self) -> bool {
        self.phase == Phase::Paused
    }

    /// Runs the calls that may run; answers refused ones with their refusal; pauses when only
    /// calls awaiting a decision are left.
    fn dispatch(&mut self, calls: Vec<ToolCall>) -> Vec<Effect> {
        self.phase = Phase::AwaitingTools;
        let mut run = Vec::new();
        let mut refused = Vec::new();
        self.awaiting.clear();
        for call in calls {
            if !self.approvals.needs(&call.name) {
                run.push(call);
                continue;
            }
            match self.decisions.iter().find(|(id, _)| *id == call.id) {
                Some((_, Decision::Confirmed)) => run.push(call),
                Some((_, Decision::Refused(reason))) => {
                    self.recording.push(call.id.clone());
                    refused.push(Effect::RecordToolResult {
                        result: Err(reason.clone()),
                        call,
                    });
                }
                None => match self.check.check(&call) {
                    Ok(()) => self.awaiting.push(call.id.clone()),
                    Err(problem) => {
                        self.recording.push(call.id.clone());
                        refused.push(Effect::RecordToolResult {
                            result: Err(problem),
                            call,
                        });
                    }
                },
            }
        }
        if run.is_empty() && refused.is_empty() {
            return self.pause();
        }
        let mut effects = Vec::with_capacity(refused.len() + 1);
        if !run.is_empty() {
            effects.push(Effect::RunTools(run));
        }
        effects.extend(refused);
        effects
    }

    fn pause(&mut self) -> Vec<Effect> {
        self.phase = Phase::Paused;
        let calls = self
            .state
            .pending
            .iter()
            .filter(|c| self.awaiting.contains(&c.id))
            .cloned()
            .collect();
        vec![Effect::Pause(calls)]
    }

    pub fn state(&self) -> &LoopState {
        &self.state
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    fn finish(
        &mut self,
        outcome: Outcome,
        reason: StopReason,
        detail: Option<String>,
    ) -> Vec<Effect> {
        self.phase = Phase::Finished;
        vec![Effect::Finish {
            outcome,
            reason,
            detail,
        }]
    }

    /// Starts the next model turn unless a limit forbids it.
    fn next_turn(&mut self) -> Vec<Effect> {
        if self.state.iterations >= self.limits.max_iterations {
            return self.finish(
                Outcome::Failed,
                StopReason::MaxIterations,
                Some(format!(
                    "the run reached its limit of {} model turns",
                    self.limits.max_iterations
                )),
            );
        }
        self.phase = Phase::AwaitingModel;
        vec![Effect::CallModel]
    }

    /// Feeds one event; returns what to do next. Events that do not fit the current phase
    /// (a late tool result after cancellation, say) are ignored.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        if matches!(self.phase, Phase::Finished | Phase::Paused) {
            return Vec::new();
        }
        match event {
            Event::Cancelled { interrupted } => self.finish(
                Outcome::Cancelled,
                if interrupted {
                    StopReason::Interrupted
                } else {
                    StopReason::Cancelled
                },
                None,
            ),
            Event::TimedOut => self.finish(
                Outcome::Failed,
                StopReason::Timeout,
                Some("the run exceeded its wall-clock limit".to_owned()),
            ),
            Event::ModelFailed { error } => {
                if self.phase != Phase::AwaitingModel {
                    return Vec::new();
                }
                self.finish(Outcome::Failed, StopReason::ModelError, Some(error))
            }
            Event::ModelReplied {
                text,
                tool_calls,
                usage,
            } => {
                if self.phase != Phase::AwaitingModel {
                    return Vec::new();
                }
                self.phase = Phase::RecordingAssistant {
                    tool_calls: tool_calls.clone(),
                    usage,
                };
                vec![Effect::RecordAssistant {
                    text,
                    tool_calls,
                    usage,
                }]
            }
            Event::AssistantRecorded => {
                let Phase::RecordingAssistant { tool_calls, usage } = &self.phase else {
                    return Vec::new();
                };
                let (tool_calls, usage) = (tool_calls.clone(), *usage);
                // The turn counts once it is durable, exactly as `from_history` counts it.
                self.state.iterations += 1;
                self.state.usage.prompt_tokens += usage.prompt_tokens;
                self.state.usage.completion_tokens += usage.completion_tokens;
                self.state.tool_calls += tool_calls.len() as u32;
                self.state.pending = tool_calls.clone();
                self.after_assistant(tool_calls)
            }
            Event::ToolFinished { call_id, result } => self.tool_finished(call_id, result),
            Event::ToolTimedOut { call_id, error } => {
                let effects = self.tool_finished(call_id, Err(error.clone()));
                if !effects.is_empty() && self.tool_timeout.is_none() {
                    self.tool_timeout = Some(error);
                }
                effects
            }
            Event::ToolResultRecorded { call_id } => {
                if self.phase != Phase::AwaitingTools {
                    return Vec::new();
                }
                self.recording.retain(|id| id != &call_id);
                self.state.pending.retain(|c| c.id != call_id);
                if let Some(error) = &self.tool_timeout {
                    // Calls still waiting for a decision are not asked about: the run ends.
                    if !self.recording.is_empty() {
                        return Vec::new();
                    }
                    let error = error.clone();
                    return self.finish(Outcome::Failed, StopReason::ToolTimeout, Some(error));
                }
                if self.state.pending.is_empty() {
                    self.next_turn()
                } else if self
                    .state
                    .pending
                    .iter()
                    .all(|c| self.awaiting.contains(&c.id))
                {
                    self.pause()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// A call's result to store, unless the call is not one of the turn's runnable calls or
    /// its result was reported already.
    fn tool_finished(&mut self, call_id: String, result: Result<String, String>) -> Vec<Effect> {
        if self.phase != Phase::AwaitingTools || self.recording.contains(&call_id) {
            return Vec::new();
        }
        let Some(call) = self.state.pending.iter().find(|c| c.id == call_id).cloned() else {
            return Vec::new();
        };
        if self.awaiting.contains(&call_id) {
            return Vec::new();
        }
        self.recording.push(call_id);
        vec![Effect::RecordToolResult { call, result }]
    }

    /// After a stored turn: finish on a limit or a final answer, else run the tools.
    fn after_assistant(&mut self, tool_calls: Vec<ToolCall>) -> Vec<Effect> {
        if let Some(budget) = self.limits.token_budget {
            if self.state.usage.total() > budget {
                return self.finish(
                    Outcome::Failed,
                    StopReason::TokenBudget,
                    Some(format!(
                        "the run used {} tokens, over its budget of {budget}",
                        self.state.usage.total()
                    )),
                );
            }
        }
        if tool_calls.is_empty() {
            return self.finish(Outcome::Completed, StopReason::Completed, None);
        }
        self.dispatch(tool_calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{MessageId, ThreadId};
    use crate::Timestamp;

    const LIMITS: LoopLimits = LoopLimits {
        max_iterations: 5,
        token_budget: None,
    };

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "notify_user".into(),
            arguments: serde_json::json!({"message": "hi"}),
        }
    }

    fn usage(n: u64) -> TokenUsage {
        TokenUsage {
            prompt_tokens: n,
            completion_tokens: n,
        }
    }

    fn reply(text: &str, calls: Vec<ToolCall>, n: u64) -> Event {
        Event::ModelReplied {
            text: text.into(),
            tool_calls: calls,
            usage: usage(n),
        }
    }

    /// Drives a loop: the model answers from `turns` in order; tools succeed.
    fn drive(limits: LoopLimits, turns: Vec<Event>) -> (AgentLoop, Vec<Effect>) {
        let (mut lp, mut queue) = AgentLoop::start(limits, LoopState::default());
        let mut turns = turns.into_iter();
        let mut log = Vec::new();
        while let Some(effect) = queue.first().cloned() {
            queue.remove(0);
            log.push(effect.clone());
            let next = match effect {
                Effect::CallModel => match turns.next() {
                    Some(e) => lp.handle(e),
                    None => lp.handle(Event::ModelFailed {
                        error: "script exhausted".into(),
                    }),
                },
                Effect::RecordAssistant { .. } => lp.handle(Event::AssistantRecorded),
                Effect::RunTools(calls) => calls
                    .into_iter()
                    .flat_map(|c| {
                        lp.handle(Event::ToolFinished {
                            call_id: c.id,
                            result: Ok("done".into()),
                        })
                    })
                    .collect(),
                Effect::RecordToolResult { call, .. } => {
                    lp.handle(Event::ToolResultRecorded { call_id: call.id })
                }
                Effect::Finish { .. } | Effect::Pause(_) => Vec::new(),
            };
            queue.extend(next);
        }
        (lp, log)
    }

    fn finish_of(log: &[Effect]) -> (Outcome, StopReason) {
        match log.last() {
            Some(Effect::Finish {
                outcome, reason, ..
            }) => (*outcome, *reason),
            other => panic!("expected a finish, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_answer_completes_in_one_turn() {
        let (lp, log) = drive(LIMITS, vec![reply("hello", vec![], 3)]);
        assert_eq!(finish_of(&log), (Outcome::Completed, StopReason::Completed));
        assert_eq!(lp.state().iterations, 1);
        assert_eq!(lp.state().usage.total(), 6);
    }

    #[test]
    fn tool_calls_run_then_the_model_is_asked_again() {
        let (lp, log) = drive(
            LIMITS,
            vec![
                reply("", vec![call("a"), call("b")], 1),
                reply("done", vec![], 1),
            ],
        );
        assert_eq!(finish_of(&log), (Outcome::Completed, StopReason::Completed));
        let calls_model = log.iter().filter(|e| **e == Effect::CallModel).count();
        assert_eq!(calls_model, 2);
        let recorded = log
            .iter()
            .filter(|e| matches!(e, Effect::RecordToolResult { .. }))
            .count();
        assert_eq!(recorded, 2);
        assert_eq!(lp.state().tool_calls, 2);
    }

    #[test]
    fn the_iteration_limit_ends_the_run() {
        let looping: Vec<_> = (0..10)
            .map(|i| reply("", vec![call(&format!("c{i}"))], 1))
            .collect();
        let (lp, log) = drive(LIMITS, looping);
        assert_eq!(
            finish_of(&log),
            (Outcome::Failed, StopReason::MaxIterations)
        );
        assert_eq!(lp.state().iterations, 5);
    }

    #[test]
    fn the_token_budget_ends_the_run_after_recording_the_turn() {
        let limits = LoopLimits {
            max_iterations: 5,
            token_budget: Some(10),
        };
        let (_, log) = drive(
            limits,
            vec![reply("", vec![call("a")], 3), reply("", vec![call("b")], 3)],
        );
        assert_eq!(finish_of(&log), (Outcome::Failed, StopReason::TokenBudget));
        let recorded = log
            .iter()
            .filter(|e| matches!(e, Effect::RecordAssistant { .. }))
            .count();
        assert_eq!(recorded, 2, "the over-budget turn is still stored");
    }

    #[test]
    fn model_failure_cancellation_and_timeout_finish() {
        let (mut lp, _) = AgentLoop::start(LIMITS, LoopState::default());
        let fx = lp.handle(Event::ModelFailed {
            error: "boom".into(),
        });
        assert!(matches!(
            fx[0],
            Effect::Finish {
                outcome: Outcome::Failed,
                reason: StopReason::ModelError,
                ..
            }
        ));
        assert!(
            lp.handle(Event::TimedOut).is_empty(),
            "finished loops ignore events"
        );

        let (mut lp, _) = AgentLoop::start(LIMITS, LoopState::default());
        let fx = lp.handle(Event::Cancelled { interrupted: true });
        assert!(matches!(
            fx[0],
            Effect::Finish {
                reason: StopReason::Interrupted,
                ..
            }
        ));
        let (mut lp, _) = AgentLoop::start(LIMITS, LoopState::default());
        let fx = lp.handle(Event::TimedOut);
        assert!(matches!(
            fx[0],
            Effect::Finish {
                reason: StopReason::Timeout,
                ..
            }
        ));
    }

    #[test]
    fn stray_events_are_ignored() {
        let (mut lp, _) = AgentLoop::start(LIMITS, LoopState::default());
        assert!(lp.handle(Event::AssistantRecorded).is_empty());
        assert!(lp
            .handle(Event::ToolFinished {
                call_id: "x".into(),
                result: Ok("".into())
            })
            .is_empty());
        assert!(lp
            .handle(Event::ToolResultRecorded {
                call_id: "x".into()
            })
            .is_empty());
        assert!(!lp.is_finished());
    }

    fn message(role: Role, calls: Vec<ToolCall>, answers: Option<&str>) -> Message {
        Message {
            id: MessageId::generate(),
            thread_id: ThreadId::generate(),
            run_id: None,
            role,
            content: String::new(),
            tool_calls: calls,
            tool_call_id: answers.map(str::to_owned),
            tool_name: None,
            is_error: false,
            attachments: vec![],
            usage: (role == Role::Assistant).then_some(usage(2)),
            created_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn resuming_runs_only_the_tools_without_stored_results() {
        let history = vec![
            message(Role::User, vec![], None),
            message(Role::Assistant, vec![call("a"), call("b")], None),
            message(Role::Tool, vec![], Some("a")),
        ];
        let state = LoopState::from_history(&history);
        assert_eq!(state.iterations, 1);
        assert_eq!(state.usage.total(), 4);
        assert_eq!(state.pending, vec![call("b")]);
        let (_, effects) = AgentLoop::start(LIMITS, state);
        assert_eq!(effects, vec![Effect::RunTools(vec![call("b")])]);
    }

    #[test]
    fn resuming_after_all_results_asks_the_model_again() {
        let history = vec![
            message(Role::Assistant, vec![call("a")], None),
            message(Role::Tool, vec![], Some("a")),
        ];
        let (_, effects) = AgentLoop::start(LIMITS, LoopState::from_history(&history));
        assert_eq!(effects, vec![Effect::CallModel]);
        // A resumed run keeps counting toward its limits.
        let full: Vec<_> = (0..5)
            .flat_map(|i| {
                let id = format!("c{i}");
                [
                    message(Role::Assistant, vec![call(&id)], None),
                    message(Role::Tool, vec![], Some(&id)),
                ]
            })
            .collect();
        let (_, effects) = AgentLoop::start(LIMITS, LoopState::from_history(&full));
        assert!(matches!(
            effects[0],
            Effect::Finish {
                reason: StopReason::MaxIterations,
                ..
            }
        ));
    }

    fn gated(rule: &str) -> Approvals {
        Approvals::new(
            vec![crate::agent::ApprovalRule {
                tool: crate::validate::ToolPattern::parse("t", rule).unwrap(),
                expires_in_seconds: None,
            }],
            Vec::new(),
            600,
        )
    }

    fn named(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: serde_json::json!({"to": "x"}),
        }
    }

    #[test]
    fn a_gated_call_pauses_after_the_free_ones_are_stored() {
        let (mut lp, _) =
            AgentLoop::start_with(LIMITS, LoopState::default(), gated("send_*"), Vec::new());
        lp.handle(reply(
            "",
            vec![named("a", "notify_user"), named("b", "send_email")],
            1,
        ));
        let effects = lp.handle(Event::AssistantRecorded);
        assert_eq!(
            effects,
            vec![Effect::RunTools(vec![named("a", "notify_user")])]
        );
        let effects = lp.handle(Event::ToolFinished {
            call_id: "a".into(),
            result: Ok("ok".into()),
        });
        assert!(matches!(effects[0], Effect::RecordToolResult { .. }));
        let effects = lp.handle(Event::ToolResultRecorded {
            call_id: "a".into(),
        });
        assert_eq!(effects, vec![Effect::Pause(vec![named("b", "send_email")])]);
        assert!(lp.is_paused());
        assert!(lp
            .handle(Event::Cancelled { interrupted: false })
            .is_empty());
    }

    #[test]
    fn a_tool_timeout_ends_the_run_once_the_turns_results_are_stored() {
        let (mut lp, _) =
            AgentLoop::start_with(LIMITS, LoopState::default(), gated("send_*"), Vec::new());
        lp.handle(reply(
            "",
            vec![
                named("a", "notify_user"),
                named("b", "lookup"),
                named("c", "send_email"),
            ],
            1,
        ));
        lp.handle(Event::AssistantRecorded);
        // A timeout reported for a call that is not runnable now changes nothing.
        for stray in ["c", "zz"] {
            let effects = lp.handle(Event::ToolTimedOut {
                call_id: stray.into(),
                error: "late".into(),
            });
            assert!(effects.is_empty(), "{stray}: {effects:?}");
        }
        let timed_out = lp.handle(Event::ToolTimedOut {
            call_id: "b".into(),
            error: "the tool `lookup` did not finish within 1 seconds".into(),
        });
        assert_eq!(
            timed_out,
            vec![Effect::RecordToolResult {
                call: named("b", "lookup"),
                result: Err("the tool `lookup` did not finish within 1 seconds".into()),
            }]
        );
        let finished = lp.handle(Event::ToolFinished {
            call_id: "a".into(),
            result: Ok("ok".into()),
        });
        assert!(matches!(finished[0], Effect::RecordToolResult { .. }));
        // Both results are stored before the run ends; no further model turn, and the gated
        // call is not held for a decision.
        assert!(lp
            .handle(Event::ToolResultRecorded {
                call_id: "b".into()
            })
            .is_empty());
        let effects = lp.handle(Event::ToolResultRecorded {
            call_id: "a".into(),
        });
        assert_eq!(
            effects,
            vec![Effect::Finish {
                outcome: Outcome::Failed,
                reason: StopReason::ToolTimeout,
                detail: Some("the tool `lookup` did not finish within 1 seconds".into()),
            }]
        );
        assert!(lp.is_finished());
    }

    #[test]
    fn only_gated_calls_pause_at_once() {
        let (mut lp, _) =
            AgentLoop::start_with(LIMITS, LoopState::default(), gated("send_*"), Vec::new());
        lp.handle(reply("", vec![named("b", "send_email")], 1));
        assert_eq!(
            lp.handle(Event::AssistantRecorded),
            vec![Effect::Pause(vec![named("b", "send_email")])]
        );
    }

    #[test]
    fn decisions_resume_a_paused_run() {
        let state = LoopState {
            iterations: 1,
            pending: vec![named("b", "send_email"), named("c", "send_sms")],
            ..LoopState::default()
        };
        let decisions = vec![
            ("b".to_owned(), Decision::Confirmed),
            ("c".to_owned(), Decision::Refused("expired".into())),
        ];
        let (mut lp, effects) = AgentLoop::start_with(LIMITS, state, gated("send_*"), decisions);
        assert_eq!(
            effects,
            vec![
                Effect::RunTools(vec![named("b", "send_email")]),
                Effect::RecordToolResult {
                    call: named("c", "send_sms"),
                    result: Err("expired".into())
                },
            ]
        );
        lp.handle(Event::ToolResultRecorded {
            call_id: "c".into(),
        });
        lp.handle(Event::ToolFinished {
            call_id: "b".into(),
            result: Ok("sent".into()),
        });
        let effects = lp.handle(Event::ToolResultRecorded {
            call_id: "b".into(),
        });
        assert_eq!(effects, vec![Effect::CallModel]);
    }

    #[test]
    fn a_held_call_with_invalid_arguments_is_answered_not_held() {
        let check = CallCheck::new(|c: &ToolCall| {
            if c.arguments.get("to").is_some() {
                Ok(())
            } else {
                Err("`to` is required".to_owned())
            }
        });
        let bad = ToolCall {
            id: "c".into(),
            name: "send_sms".into(),
            arguments: serde_json::json!({}),
        };
        let (mut lp, _) = AgentLoop::start_checked(
            LIMITS,
            LoopState::default(),
            gated("send_*"),
            Vec::new(),
            check.clone(),
        );
        lp.handle(reply("", vec![named("b", "send_email"), bad.clone()], 1));
        assert_eq!(
            lp.handle(Event::AssistantRecorded),
            vec![Effect::RecordToolResult {
                call: bad.clone(),
                result: Err("`to` is required".into())
            }]
        );
        // The valid one waits once the refusal is stored.
        assert_eq!(
            lp.handle(Event::ToolResultRecorded {
                call_id: "c".into()
            }),
            vec![Effect::Pause(vec![named("b", "send_email")])]
        );
        // Only invalid calls: the model gets the error and goes on, nothing waits.
        let (mut lp, _) = AgentLoop::start_checked(
            LIMITS,
            LoopState::default(),
            gated("send_*"),
            Vec::new(),
            check.clone(),
        );
        lp.handle(reply("", vec![bad.clone()], 1));
        lp.handle(Event::AssistantRecorded);
        assert_eq!(
            lp.handle(Event::ToolResultRecorded {
                call_id: "c".into()
            }),
            vec![Effect::CallModel]
        );
        // A resumed run checks again (the refusal was not stored before a crash).
        let state = LoopState {
            iterations: 1,
            pending: vec![bad.clone()],
            ..LoopState::default()
        };
        let (_, effects) =
            AgentLoop::start_checked(LIMITS, state, gated("send_*"), Vec::new(), check);
        assert!(matches!(
            &effects[..],
            [Effect::RecordToolResult { result: Err(_), .. }]
        ));
    }

    #[test]
    fn an_undecided_call_still_pauses_on_resume() {
        let state = LoopState {
            iterations: 1,
            pending: vec![named("b", "send_email")],
            ..LoopState::default()
        };
        let (lp, effects) = AgentLoop::start_with(LIMITS, state, gated("send_*"), Vec::new());
        assert_eq!(effects, vec![Effect::Pause(vec![named("b", "send_email")])]);
        assert!(lp.is_paused());
    }
}
