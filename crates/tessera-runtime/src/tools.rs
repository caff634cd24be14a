//! Tool dispatch: which tools an agent's model sees and how a call is executed.
//!
//! The interface is what the loop uses. Internal tools here: `ask_user`, `notify_user` and
//! `request_variables` (the board tools are in `board_tools.rs`); the tools agents attach are in
//! `tool_records.rs`.
//!
//! `ask_user` never runs as such: it is always held like a tool needing confirmation, as a
//! *question* (the driver stores it with the run paused in `waiting_for_input`), and the
//! person's next message on the thread is its result (see `SubmitRun`).

use async_trait::async_trait;
use serde_json::json;
use tessera_domain::event::{NewEvent, NOTIFICATION};
use tessera_domain::thread::ToolCall;
use tessera_domain::{RunId, Scope, ThreadId};
use tessera_store::{Lease, Store, ThreadEvent};

use crate::provider::ToolSpec;

/// What a tool execution may use.
pub struct ToolContext<'a> {
    pub store: &'a dyn Store,
    pub scope: &'a Scope,
    pub thread_id: &'a ThreadId,
    pub run_id: &'a RunId,
    pub lease: &'a Lease,
}

/// The result of a tool call: text for the model, and events it stored (to publish).
pub struct ToolOutput {
    pub result: Result<String, String>,
    pub events: Vec<ThreadEvent>,
}

impl ToolOutput {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            result: Err(message.into()),
            events: Vec::new(),
        }
    }
}

#[async_trait]
pub trait ToolExecutor: Send + Sync {
    /// The tools offered to the model. Fixed once the executor is built:
    /// [`ToolChain`](crate::board_tools::ToolChain) collects them when it is made.
    fn specs(&self) -> Vec<ToolSpec>;

    /// Executes one call. Errors are returned as `Err` text for the model, not raised.
    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput;

    /// Tools that always need a person's confirmation (`requires_confirmation`), whatever the
    /// agent's approval rules say.
    fn requiring_confirmation(&self) -> Vec<String> {
        Vec::new()
    }

    /// The longest a call of `tool` may take, when the tool sets its own (otherwise the
    /// server's `runtime.tool_timeout_seconds`).
    fn timeout(&self, _tool: &str) -> Option<std::time::Duration> {
        None
    }

    /// How long a confirmation of `tool` stays open, when the tool sets its own.
    fn confirmation_expiry(&self, _tool: &str) -> Option<u32> {
        None
    }

    /// Checks a call's arguments against its tool's input schema, before the call is held for
    /// a person (`Err`: the text the model gets; nobody is asked). A tool whose schema this
    /// server cannot compile checks its arguments itself when it runs.
    fn check(&self, call: &ToolCall) -> Result<(), String> {
        let Some(spec) = self.specs().into_iter().find(|s| s.name == call.name) else {
            return Err(format!("unknown tool `{}`", call.name));
        };
        match tessera_domain::tool::InputSchema::parse("parameters", spec.parameters) {
            Ok(schema) => schema.validate(&call.arguments).map_err(|problem| {
                format!(
                    "invalid arguments for `{}` (nobody was asked to confirm it and it did not run): {problem}",
                    call.name
                )
            }),
            Err(_) => Ok(()),
        }
    }
}

/// The built-in tools.
#[derive(Default)]
pub struct InternalTools;

pub const ASK_USER: &str = tessera_domain::session::ASK_USER;
pub const NOTIFY_USER: &str = "notify_user";
pub const REQUEST_VARIABLES: &str = "request_variables";

#[async_trait]
impl ToolExecutor for InternalTools {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: ASK_USER.to_owned(),
                description: "Ask the person you work for a question and wait for the answer \
                              (their next message). Offer `choices` when a short list of answers \
                              fits; they may still answer in their own words."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "question": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": "\\S", "description": "The question (at most 2000 characters)."},
                        "choices": {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1, "maxLength": 200},
                            "minItems": 1,
                            "maxItems": 10,
                            "uniqueItems": true,
                            "description": "Suggested answers, shown as buttons (at most 10)."
                        }
                    },
                    "required": ["question"],
                    "additionalProperties": false
                }),
            },
            ToolSpec {
                name: NOTIFY_USER.to_owned(),
                description:
                    "Show a short notification to the person the agent works for, without \
                          ending the turn."
                        .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {"message": {"type": "string", "description": "The text to show (at most 2000 characters)."}},
                    "required": ["message"],
                    "additionalProperties": false
                }),
            },
            ToolSpec {
                name: REQUEST_VARIABLES.to_owned(),
                description: "Ask the application for context variables this session lacks \
                              (names like USER_PLAN); they reach you on the next turn."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "names": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"}, "minItems": 1, "maxItems": 20},
                        "reason": {"type": "string", "description": "Why they are needed (at most 500 characters)."}
                    },
                    "required": ["names"],
                    "additionalProperties": false
                }),
            },
        ]
    }

    fn requiring_confirmation(&self) -> Vec<String> {
        // Held for the person's answer, whatever the approval rules say.
        vec![ASK_USER.to_owned()]
    }

    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        match call.name.as_str() {
            // Reached only when its question is gone (the driver answers with the stored
            // answer otherwise).
            ASK_USER => ToolOutput::error("the question has no answer"),
            NOTIFY_USER => notify_user(ctx, &call.arguments).await,
            REQUEST_VARIABLES => request_variables(ctx, &call.arguments).await,
            other => ToolOutput::error(format!("unknown tool `{other}`")),
        }
    }
}

async fn notify_user(ctx: &ToolContext<'_>, args: &serde_json::Value) -> ToolOutput {
    let Some(message) = args.get("message").and_then(|m| m.as_str()) else {
        return ToolOutput::error("notify_user needs {\"message\": string}");
    };
    if message.trim().is_empty() || message.chars().count() > 2000 {
        return ToolOutput::error("message must be 1-2000 characters");
    }
    let event = NewEvent {
        kind: NOTIFICATION,
        data: json!({"run_id": ctx.run_id.as_str(), "message": message}),
    };
    match ctx.store.append_events(ctx.lease, &[event]).await {
        Ok(events) => ToolOutput {
            result: Ok("the user was notified".to_owned()),
            events,
        },
        Err(err) => ToolOutput::error(format!("could not notify the user: {err}")),
    }
}

async fn request_variables(ctx: &ToolContext<'_>, args: &serde_json::Value) -> ToolOutput {
    const USAGE: &str = "request_variables needs {\"names\": [\"NAME\", …], \"reason\"?: string}";
    let Some(raw) = args.get("names").and_then(|n| n.as_array()) else {
        return ToolOutput::error(USAGE);
    };
    if raw.is_empty() || raw.len() > tessera_domain::session::MAX_VARIABLES {
        return ToolOutput::error("names must list 1-20 variable names");
    }
    let mut names = Vec::with_capacity(raw.len());
    for (i, name) in raw.iter().enumerate() {
        let Some(name) = name.as_str() else {
            return ToolOutput::error(USAGE);
        };
        match tessera_domain::session::VariableName::parse(&format!("names[{i}]"), name) {
            Ok(name) => names.push(name.as_str().to_owned()),
            Err(err) => return ToolOutput::error(err.to_string()),
        }
    }
    let reason = args.get("reason").and_then(|r| r.as_str());
    if reason.is_some_and(|r| r.chars().count() > 500) {
        return ToolOutput::error("reason must be at most 500 characters");
    }
    match ctx.store.request_variables(ctx.lease, &names, reason).await {
        Ok(events) => ToolOutput {
            result: Ok(format!(
                "the application was asked for {}; they reach you on the next turn once set",
                names.join(", ")
            )),
            events,
        },
        Err(err) => ToolOutput::error(format!("could not request the variables: {err}")),
    }
}
