//! Thread events: what the stream (`GET /ai/threads/{id}/stream`) carries.
//!
//! Durable events are stored in the same transaction as the change they describe and numbered
//! per thread; the number is the SSE `id`, so a client reconnecting with `Last-Event-ID` gets
//! exactly what it missed. Text deltas are live only (they are folded into the stored message).

use serde_json::{json, Value};

use crate::thread::{Message, Run};

pub const MESSAGE_CREATED: &str = "message.created";
pub const MESSAGE_DELTA: &str = "message.delta";
pub const MESSAGE_COMPLETED: &str = "message.completed";
pub const TOOL_STARTED: &str = "tool.started";
pub const TOOL_COMPLETED: &str = "tool.completed";
pub const RUN_STATUS: &str = "run.status";
pub const NOTIFICATION: &str = "notification";

/// An event to append to a thread's log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub data: Value,
}

/// A message as the API shows it (the same shape as `GET /ai/threads/{id}/messages` items).
pub fn message_json(m: &Message) -> Value {
    json!({
        "id": m.id.as_str(),
        "thread_id": m.thread_id.as_str(),
        "run_id": m.run_id.as_ref().map(|r| r.as_str()),
        "role": m.role.as_str(),
        "content": m.content,
        "tool_calls": m.tool_calls.iter().map(|c| json!({
            "id": c.id, "name": c.name, "arguments": c.arguments,
        })).collect::<Vec<_>>(),
        "tool_call_id": m.tool_call_id,
        "tool_name": m.tool_name,
        "is_error": m.is_error,
        "attachments": m.attachments,
        "usage": m.usage.map(|u| json!({
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        })),
        "created_at": m.created_at.to_rfc3339(),
    })
}

/// `message.created` (user and tool messages) or `message.completed` (assistant replies).
pub fn message_event(kind: &'static str, m: &Message) -> NewEvent {
    NewEvent {
        kind,
        data: json!({ "message": message_json(m) }),
    }
}

/// `run.status`: the run's new state.
pub fn run_status_event(run: &Run) -> NewEvent {
    NewEvent {
        kind: RUN_STATUS,
        data: json!({
            "run_id": run.id.as_str(),
            "status": run.status.as_str(),
            "stop_reason": run.stop_reason.map(|r| r.as_str()),
            "error": run.error,
        }),
    }
}
