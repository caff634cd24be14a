//! Threads, their messages and runs.
//!
//! A thread is a conversation (or an execution lane) inside an actor project. Each message the
//! user sends starts a *run*: the agent loop working until a final answer, a limit or a
//! cancellation. A thread has at most one active run; later ones queue behind it.

use serde::{Deserialize, Serialize};

use crate::id::{ActorId, AgentId, MessageId, ProjectId, RunId, ThreadId};
use crate::validate::{CapabilityTag, Label, ValidationError};
use crate::Timestamp;

/// What a thread is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadPurpose {
    /// A conversation with a person.
    Conversation,
    /// A lane that executes tasks (board items, delegated work).
    Execution,
}

impl ThreadPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversation => "conversation",
            Self::Execution => "execution",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "conversation" => Some(Self::Conversation),
            "execution" => Some(Self::Execution),
            _ => None,
        }
    }
}

/// Where a thread's work stands, kept in step with its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadStatus {
    /// No active run.
    Idle,
    /// A run is working.
    Running,
    /// The active run waits for a person (confirmation, answer).
    WaitingForInput,
}

impl ThreadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::WaitingForInput => "waiting_for_input",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "idle" => Some(Self::Idle),
            "running" => Some(Self::Running),
            "waiting_for_input" => Some(Self::WaitingForInput),
            _ => None,
        }
    }
}

/// A conversation partition key: 1-256 characters of `[A-Za-z0-9:_.@-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContextGroup(String);

impl ContextGroup {
    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 256
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-')
            });
        if ok {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                field,
                "must be 1-256 characters of [A-Za-z0-9:_.@-]",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ContextGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<String> for ContextGroup {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("context_group", value)
    }
}

impl From<ContextGroup> for String {
    fn from(value: ContextGroup) -> Self {
        value.0
    }
}

/// System instructions of a thread: at most 20 000 characters.
pub const MAX_SYSTEM_INSTRUCTIONS: usize = 20_000;
/// Longest message a user may send, in characters.
pub const MAX_MESSAGE_CHARS: usize = 100_000;

/// A stored thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Thread {
    pub id: ThreadId,
    pub project_id: ProjectId,
    pub actor_id: ActorId,
    pub agent_id: AgentId,
    pub title: String,
    pub system_instructions: Option<String>,
    pub purpose: ThreadPurpose,
    pub capability_tags: Vec<String>,
    pub context_group: Option<String>,
    pub status: ThreadStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewThread {
    pub project_id: ProjectId,
    pub title: Label,
    pub system_instructions: Option<String>,
    pub purpose: ThreadPurpose,
    pub capability_tags: Vec<CapabilityTag>,
    pub context_group: Option<ContextGroup>,
}

/// Checks thread system instructions.
pub fn check_system_instructions(field: &str, value: &str) -> Result<(), ValidationError> {
    let len = value.chars().count();
    if len > MAX_SYSTEM_INSTRUCTIONS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_SYSTEM_INSTRUCTIONS} characters (got {len})"),
        ));
    }
    Ok(())
}

/// Checks the text of a message a user sends.
pub fn check_message_content(field: &str, value: &str) -> Result<(), ValidationError> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if len > MAX_MESSAGE_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_MESSAGE_CHARS} characters (got {len})"),
        ));
    }
    Ok(())
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// The result of a tool call.
    Tool,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
            Self::System => "system",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            "tool" => Some(Self::Tool),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

/// A tool call made by the model, as stored on the assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// Token counts of one model turn or one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TokenUsage {
    pub fn total(self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub thread_id: ThreadId,
    pub run_id: Option<RunId>,
    pub role: Role,
    pub content: String,
    /// Assistant messages: the tools the model called.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: which call this answers, and the tool's name.
    pub tool_call_id: Option<String>,
    pub tool_name: Option<String>,
    /// Tool messages: the tool failed (the content is the error given to the model).
    pub is_error: bool,
    /// References to files attached to the message (workspace paths).
    pub attachments: Vec<String>,
    /// Assistant messages: the model turn's token usage.
    pub usage: Option<TokenUsage>,
    pub created_at: Timestamp,
}

/// A run's state. Runs move queued → running → (waiting_for_input ↔ running) → a final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    WaitingForInput,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::WaitingForInput => "waiting_for_input",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "waiting_for_input" => Some(Self::WaitingForInput),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model gave a final answer.
    Completed,
    /// Cancelled on request.
    Cancelled,
    /// Cancelled because a newer message interrupted it (`multitask: interrupt`).
    Interrupted,
    MaxIterations,
    TokenBudget,
    /// The run's wall-clock limit passed.
    Timeout,
    /// A tool call took longer than its tool's timeout.
    ToolTimeout,
    /// The model provider failed (after its retries) or is not configured.
    ModelError,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::MaxIterations => "max_iterations",
            Self::TokenBudget => "token_budget",
            Self::Timeout => "timeout",
            Self::ToolTimeout => "tool_timeout",
            Self::ModelError => "model_error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "completed" => Some(Self::Completed),
            "cancelled" => Some(Self::Cancelled),
            "interrupted" => Some(Self::Interrupted),
            "max_iterations" => Some(Self::MaxIterations),
            "token_budget" => Some(Self::TokenBudget),
            "timeout" => Some(Self::Timeout),
            "tool_timeout" => Some(Self::ToolTimeout),
            "model_error" => Some(Self::ModelError),
            _ => None,
        }
    }
}

/// What a run consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Model turns taken.
    pub iterations: u32,
    pub tool_calls: u32,
    /// Milliseconds between the run starting and finishing (across attempts).
    pub wall_ms: u64,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub thread_id: ThreadId,
    pub status: RunStatus,
    /// Incremented on every claim; a worker's writes carry it (fencing token).
    pub attempt: i64,
    /// The user message this run answers.
    pub input_message_id: MessageId,
    pub stop_reason: Option<StopReason>,
    /// Details of a failure, for people.
    pub error: Option<String>,
    pub usage: RunUsage,
    pub cancel_requested: bool,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_groups_follow_the_rule() {
        assert!(ContextGroup::parse("c", "workspace:1:user:2").is_ok());
        assert!(ContextGroup::parse("c", "user:a@b.c_d-e").is_ok());
        assert!(ContextGroup::parse("c", "").is_err());
        assert!(ContextGroup::parse("c", "has space").is_err());
        assert!(ContextGroup::parse("c", "x".repeat(257)).is_err());
        assert!(ContextGroup::parse("c", "x".repeat(256)).is_ok());
    }

    #[test]
    fn message_content_limits() {
        assert!(check_message_content("m", "hi").is_ok());
        assert!(check_message_content("m", "   ").is_err());
        assert!(check_message_content("m", &"x".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
    }

    #[test]
    fn enums_round_trip() {
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::WaitingForInput,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        for r in [
            StopReason::Completed,
            StopReason::Cancelled,
            StopReason::Interrupted,
            StopReason::MaxIterations,
            StopReason::TokenBudget,
            StopReason::Timeout,
            StopReason::ToolTimeout,
            StopReason::ModelError,
        ] {
            assert_eq!(StopReason::parse(r.as_str()), Some(r));
        }
    }
}
