//! Request and response bodies and query parameters.
//!
//! Requests refuse unknown fields (`deny_unknown_fields`): a misspelt or unsupported field, such
//! as `instructions` on an agent, is an error naming that field rather than silently ignored.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use crate::board_types::*;
pub use crate::identity_types::*;
pub use crate::session_types::*;
pub use crate::ticket_types::*;
pub use crate::tool_types::*;
pub use crate::toolkit_types::*;

/// Distinguishes "field absent" (`None`) from "field set to null" (`Some(None)`) in PATCH bodies.
pub(crate) fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

macro_rules! list_type {
    ($(#[$meta:meta])* $name:ident, $item:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            /// More items exist beyond this page in the direction of travel.
            pub has_more: bool,
            /// Id of the first item: pass as `before` for the previous page.
            #[serde(default)]
            pub first_id: Option<String>,
            /// Id of the last item: pass as `after` for the next page.
            #[serde(default)]
            pub last_id: Option<String>,
        }
    };
}

/// Paging parameters shared by every list operation. Items are ordered oldest first by id;
/// `after` returns the page following that id, `before` the page preceding it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Health

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` from `/readyz` when the database cannot be reached.
    pub status: String,
}

// ---------------------------------------------------------------------------------------------
// Deployments and secret keys

/// The tenant the caller's credentials belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    #[schema(example = "dep_01jdq3z6x2v8m4k0t5r7w9y1bc")]
    pub id: String,
    pub name: String,
    /// Origin of the backend API and the vanity pages (`https://agents.example.com`).
    pub backend_host: String,
    /// Origin of the deployment's own app, used for sign-in URLs.
    pub frontend_host: String,
    pub settings: DeploymentSettings,
    pub created_at: String,
}

/// A deployment's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSettings {
    /// The model of agents that name none. Absent or `null`: the server's
    /// `runtime.default_provider` / `runtime.default_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<ModelConfig>,
}

/// Body of `updateCurrentDeployment`: fields given replace the stored ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDeploymentRequest {
    /// Replaces all settings (a setting left out is reset to its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<DeploymentSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecretKeyRequest {
    /// A label to recognise the key by (1-200 characters). Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A secret key as listed: the key itself is never returned after creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretKey {
    pub id: String,
    pub name: String,
    /// The key's first characters, to recognise it (`tsk_3kd9a1b2`).
    pub prefix: String,
    pub created_at: String,
    #[serde(default)]
    pub last_used_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// A newly created key. `key` is shown only in this response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedSecretKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    /// The secret key (`tsk_…`). Store it now: it cannot be retrieved again.
    pub key: String,
}

list_type!(
    /// A page of secret keys.
    SecretKeyList,
    SecretKey
);

// ---------------------------------------------------------------------------------------------
// Actors

/// Who an agent works for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub id: String,
    pub subject_type: String,
    pub external_key: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateActorRequest {
    /// Kind of subject: `[a-z][a-z0-9_]*`, at most 32 characters (`user`, `service`).
    #[schema(example = "user")]
    pub subject_type: String,
    /// Your identifier for the subject: 1-256 characters. Unique per subject type.
    #[schema(example = "ext-1234")]
    pub external_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A JSON object of at most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListActorsParams {
    /// Only actors of this subject type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_type: Option<String>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupActorParams {
    pub subject_type: String,
    pub external_key: String,
}

/// `actor` is `null` when no actor has that pair (not a 404).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LookupActorResponse {
    pub actor: Option<Actor>,
}

list_type!(
    /// A page of actors.
    ActorList,
    Actor
);

// ---------------------------------------------------------------------------------------------
// Agents

/// Which model an agent uses. Omit it to use the deployment's default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A configured provider name (`echo` is built in).
    #[schema(example = "echo")]
    pub provider: String,
    #[schema(example = "echo")]
    pub model: String,
    /// 0-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// 1-1 000 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// What happens to a message sent while a run is active on the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MultitaskPolicy {
    #[default]
    Enqueue,
    Reject,
    Interrupt,
}

/// Tools whose name matches `tool` (`*` is a wildcard) need a human's confirmation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    #[schema(example = "send_*")]
    pub tool: String,
    /// Seconds a matching call waits for its confirmation before it expires, 1-86 400
    /// (default: the server's `sessions.action_expiry_seconds`, 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u32>,
}

/// Per-run limits. Omitted fields take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    /// Model turns per run, 1-200 (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    /// Total tokens per run, 1-100 000 000 (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    /// Wall-clock seconds per run, 1-86 400 (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub model: Option<ModelConfig>,
    pub tool_ids: Vec<String>,
    pub sub_agent_ids: Vec<String>,
    pub capability_tags: Vec<String>,
    #[serde(default)]
    pub endpoint_slug: Option<String>,
    pub approval_rules: Vec<ApprovalRule>,
    pub limits: AgentLimits,
    pub multitask: MultitaskPolicy,
    pub created_at: String,
    pub updated_at: String,
}

/// An agent. There is deliberately no `instructions` or `schedule` field: task content belongs
/// to threads and board items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRequest {
    /// 1-200 characters.
    #[schema(example = "Support bot")]
    pub name: String,
    /// At most 10 000 characters; part of the model's system text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    /// Tools the agent may call (at most 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_ids: Option<Vec<String>>,
    /// Agents of this deployment this agent may hand work to (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_agent_ids: Option<Vec<String>>,
    /// Tags used to route delegated work, `[a-z0-9][a-z0-9_.:-]*` (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
    /// Pool endpoint this agent serves (`/api/v1/ask/{endpoint_slug}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_rules: Option<Vec<ApprovalRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AgentLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask: Option<MultitaskPolicy>,
}

/// Changes to an agent: absent fields stay as they are; `null` clears a nullable field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ModelConfig>, nullable)]
    pub model: Option<Option<ModelConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_agent_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub endpoint_slug: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_rules: Option<Vec<ApprovalRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AgentLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask: Option<MultitaskPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAgentsParams {
    /// Only agents serving this pool endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_slug: Option<String>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

list_type!(
    /// A page of agents.
    AgentList,
    Agent
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedAgent {
    pub id: String,
    pub deleted: bool,
}

// ---------------------------------------------------------------------------------------------
// Actor projects

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Active,
    Archived,
}

/// Binds one actor and one agent; threads and board items live inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActorProject {
    pub id: String,
    pub actor_id: String,
    pub agent_id: String,
    pub name: String,
    pub status: ProjectStatus,
    pub created_at: String,
    #[serde(default)]
    pub archived_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateActorProjectParams {
    /// The actor the project works for.
    pub actor_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateActorProjectRequest {
    pub agent_id: String,
    /// 1-200 characters.
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListActorProjectsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// `active` or `archived`; both when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ProjectStatus>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

list_type!(
    /// A page of actor projects.
    ActorProjectList,
    ActorProject
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let absent: UpdateAgentRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.endpoint_slug, None);
        let null: UpdateAgentRequest = serde_json::from_str(r#"{"endpoint_slug":null}"#).unwrap();
        assert_eq!(null.endpoint_slug, Some(None));
        let set: UpdateAgentRequest = serde_json::from_str(r#"{"endpoint_slug":"x"}"#).unwrap();
        assert_eq!(set.endpoint_slug, Some(Some("x".into())));
        assert_eq!(serde_json::to_string(&absent).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&null).unwrap(),
            r#"{"endpoint_slug":null}"#
        );
    }

    #[test]
    fn agents_refuse_instructions() {
        let err = serde_json::from_str::<CreateAgentRequest>(r#"{"name":"a","instructions":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("instructions"));
    }
}

// ---------------------------------------------------------------------------------------------
// Threads, messages and runs

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThreadPurpose {
    /// A conversation with a person.
    #[default]
    Conversation,
    /// A lane that executes tasks.
    Execution,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThreadStatus {
    Idle,
    Running,
    WaitingForInput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Thread {
    pub id: String,
    pub project_id: String,
    pub actor_id: String,
    pub agent_id: String,
    pub title: String,
    #[serde(default)]
    pub system_instructions: Option<String>,
    pub purpose: ThreadPurpose,
    pub capability_tags: Vec<String>,
    #[serde(default)]
    pub context_group: Option<String>,
    pub status: ThreadStatus,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThreadRequest {
    /// 1-200 characters.
    #[schema(example = "Billing question")]
    pub title: String,
    /// Extra system text for this thread's model turns (at most 20 000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instructions: Option<String>,
    /// `conversation` (default) or `execution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<ThreadPurpose>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
    /// Partition key, 1-256 characters of `[A-Za-z0-9:_.@-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_group: Option<String>,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    User,
    Assistant,
    Tool,
    System,
}

/// A message of a thread. This is also the `message` of stream events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: String,
    pub thread_id: String,
    #[serde(default)]
    pub run_id: Option<String>,
    pub role: MessageRole,
    pub content: String,
    /// Assistant messages: the tools the model called.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call answered.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub tool_name: Option<String>,
    /// Tool messages: the tool failed; `content` is the error given to the model.
    pub is_error: bool,
    /// Workspace paths of attached files.
    pub attachments: Vec<String>,
    /// Assistant messages: the model turn's token usage.
    #[serde(default)]
    pub usage: Option<TokenUsage>,
    pub created_at: String,
}

list_type!(
    /// A page of messages.
    MessageList,
    Message
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageOrder {
    /// Oldest first (default).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMessagesParams {
    /// `asc` (oldest first, default) or `desc` (newest first). `after`/`before` follow this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<MessageOrder>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return messages that come before this id (in the chosen order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return messages that come after this id (in the chosen order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The message a run answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The text, 1-100 000 characters.
    #[schema(example = "What is the status of order 123?")]
    pub content: String,
    /// Workspace paths of files to attach (at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
}

/// Send `message` to start a run, or `cancel: true` to cancel the thread's queued and active
/// runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteThreadRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<NewMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    WaitingForInput,
    Completed,
    Failed,
    Cancelled,
}

/// The answer to `executeAgentThreadAsync`: the run was queued (or, for `cancel`, the runs
/// affected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunAccepted {
    /// `queued` for a new run, `cancelled` / `cancelling` for a cancel request.
    pub status: String,
    /// The new run — or, when the message answered the `ask_user` question a run was waiting
    /// on, that run, which resumes (no new run is started) — or, for `cancel`, the active run
    /// that was asked to stop.
    #[serde(default)]
    pub run_id: Option<String>,
    /// For `cancel`: every run affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ids: Option<Vec<String>>,
}

/// What a run consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct RunUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Model turns.
    pub iterations: u32,
    pub tool_calls: u32,
    /// Milliseconds from the run starting to its end.
    pub wall_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub thread_id: String,
    pub status: RunStatus,
    /// How many times a worker claimed it (more than 1 after a node failure).
    pub attempt: i64,
    pub input_message_id: String,
    /// Why it ended: `completed`, `cancelled`, `interrupted`, `max_iterations`,
    /// `token_budget`, `timeout` (the run's wall-clock limit), `tool_timeout` (a tool call over
    /// its tool's timeout) or `model_error`.
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub usage: RunUsage,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}
