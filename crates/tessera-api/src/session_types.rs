//! Wire types of session management (`/api/v1`): the pool endpoint, closing a session, context
//! variables, pending actions and usage.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// A message for an agent pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    /// The message, 1-10 000 characters.
    #[schema(example = "Where is my order #123?")]
    pub content: String,
    /// Continue this session (thread); absent: a new session on the least busy agent of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Variables to merge into the session before this turn (as `updateSessionVariables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context_variables: Option<Map<String, Value>>,
}

/// A tool call waiting for a person's confirmation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingActionView {
    pub action_id: String,
    pub tool: String,
    /// The exact arguments that will run when confirmed.
    #[schema(value_type = Object)]
    pub preview: Value,
    pub expires_at: String,
}

/// An `ask_user` question the agent waits on: the person's next message on the session is
/// the answer (send it with `askAgentPool` and this `thread_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuestionView {
    /// The model's `ask_user` call.
    pub call_id: String,
    pub question: String,
    /// Suggested answers (buttons); another answer is still delivered as written.
    pub choices: Vec<String>,
    /// Unanswered by then, the agent is told nobody answered and goes on.
    pub expires_at: String,
}

/// The final outcome of a pending action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    pub action_id: String,
    pub tool: String,
    /// `completed`, `failed`, `cancelled` or `expired`.
    pub status: String,
    #[serde(default)]
    pub callback_id: Option<String>,
    /// What the tool returned (or why it did not run).
    #[serde(default)]
    pub result: Option<String>,
}

/// The answer of `askAgentPool` (200, or 202 while the turn still works) and of
/// `getPoolResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AskResponse {
    pub thread_id: String,
    /// Poll `GET /api/v1/responses/{response_id}` while `status` is `processing`.
    pub response_id: String,
    pub agent_id: String,
    /// `processing`, `completed`, `waiting_for_input` (see `pending_action` and `question`),
    /// `failed` or `cancelled`.
    pub status: String,
    /// The agent's answer (absent while processing); while the agent waits on an `ask_user`
    /// question, that question.
    #[serde(default)]
    pub content: Option<String>,
    /// When the answer was written (or, while processing, when the message was accepted).
    pub timestamp: String,
    #[serde(default)]
    pub pending_action: Option<PendingActionView>,
    /// The `ask_user` question the agent waits on: the next message on this session answers it
    /// and the same turn goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<QuestionView>,
    /// Context variables the agent asked for that are not set yet.
    pub requested_variables: Vec<String>,
    pub files: Vec<String>,
    /// What the caller can do next about this session, as ready requests: confirm or cancel
    /// each open pending action, answer the open question, set the variables the agent asked
    /// for. Empty when nothing
    /// waits on the caller (and once the session is closed).
    pub suggested_actions: Vec<SuggestedAction>,
    /// Outcomes of this session's actions decided since an earlier answer (each is reported
    /// by one `askAgentPool` answer).
    pub action_results: Vec<ActionResult>,
    /// Why a failed turn failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A next step the caller can take on a session, as the request that does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SuggestedAction {
    /// `confirm_action`, `cancel_action` (`resolvePendingAction`), `answer_question`
    /// (`askAgentPool` on this session: with a choice as `body`, or, without a body, the
    /// person's own words as `content`) or `set_variables` (`updateSessionVariables` with the
    /// names in `variables`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short text to show on a button.
    pub label: String,
    /// The HTTP method of the request.
    pub method: String,
    /// The request's path, under the server's origin.
    pub path: String,
    /// The request body, when it is fixed (`{"confirmed": true}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// The pending action it decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    /// The variables to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<Vec<String>>,
}

/// A closed session's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionClosed {
    pub thread_id: String,
    pub closed_at: String,
    /// From the session's creation to its close.
    pub duration_seconds: i64,
    /// At least one agent response.
    pub billable: bool,
}

/// Context variables to merge: `null` deletes one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSessionVariablesRequest {
    /// Keys `^[A-Z][A-Z0-9_]*$`; values strings, numbers or booleans; at most 20 variables and
    /// 4 KiB (as JSON) after the merge.
    #[schema(value_type = Object, example = json!({"USER_PLAN": "enterprise"}))]
    pub context_variables: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionVariablesUpdated {
    pub thread_id: String,
    /// Entries of the request that changed a variable.
    pub variables_updated: usize,
    pub total_variables: usize,
}

/// A decision on a pending action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveActionRequest {
    /// `true` executes the action, `false` cancels it.
    pub confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionResolved {
    pub thread_id: String,
    pub action_id: String,
    /// `cancelled` (200) or `processing` (202).
    pub status: String,
    pub message: String,
    /// Confirmations: the handle of the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroupBy {
    #[default]
    Agent,
    Actor,
    Day,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start (inclusive), RFC 3339; default 30 days before `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; default now. At most 366 days after `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `agent` (default), `actor` or `day` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<UsageGroupBy>,
}

/// One group's usage: sessions created in the range, and runs created in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// Agent id, actor id, or day (`YYYY-MM-DD`).
    pub key: String,
    pub sessions: u64,
    /// Sessions with at least one agent response (for a closed session: its close record).
    pub billable_sessions: u64,
    /// Closed sessions: their recorded duration; open ones: time since they started.
    pub session_seconds: u64,
    pub runs: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub tool_calls: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: UsageGroupBy,
    pub data: Vec<UsageRow>,
    /// The sum of every group.
    pub totals: UsageRow,
}
