//! Session management: context variables, pending actions awaiting a person's confirmation,
//! closing a session, and the rules of the pool endpoint.
//!
//! A *session* is a thread seen through the session API (`/api/v1`): it can be closed (then it
//! accepts no message), it carries context variables the model sees, and its runs may pause on a
//! tool call that needs confirmation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::agent::ApprovalRule;
use crate::id::{ActionId, CallbackId, RunId, ThreadId};
use crate::validate::ValidationError;
use crate::Timestamp;

/// At most this many context variables per session, after a merge.
pub const MAX_VARIABLES: usize = 20;
/// At most this many bytes of context variables (serialized as a JSON object), after a merge.
pub const MAX_VARIABLES_BYTES: usize = 4096;
/// Longest variable name.
pub const MAX_VARIABLE_NAME: usize = 128;
/// Longest message sent to the pool endpoint, in characters.
pub const MAX_ASK_CHARS: usize = 10_000;

/// A context variable name: `^[A-Z][A-Z0-9_]*$`, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VariableName(String);

impl VariableName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let ok = raw.len() <= MAX_VARIABLE_NAME
            && raw.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
            && raw
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                field,
                format!(
                    "variable names must match ^[A-Z][A-Z0-9_]*$ (at most {MAX_VARIABLE_NAME} characters)"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session's context variables, by name (sorted, so the model always sees them in one order).
pub type Variables = BTreeMap<String, Value>;

/// A checked change of context variables: a value sets, `None` deletes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariablePatch(Vec<(VariableName, Option<Value>)>);

impl VariablePatch {
    /// Checks each entry of `{"NAME": value}`: names follow the pattern, values are strings,
    /// numbers or booleans, `null` deletes. `field` is the object's own field name.
    pub fn parse(field: &str, raw: &Map<String, Value>) -> Result<Self, ValidationError> {
        let mut entries = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let at = format!("{field}.{name}");
            let name = VariableName::parse(&at, name)?;
            let value = match value {
                Value::Null => None,
                Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(value.clone()),
                Value::Array(_) | Value::Object(_) => {
                    return Err(ValidationError::new(
                        at,
                        "must be a string, a number, a boolean, or null to delete it",
                    ))
                }
            };
            entries.push((name, value));
        }
        // A patch bigger than the limit can never fit once merged.
        if entries.iter().filter(|(_, v)| v.is_some()).count() > MAX_VARIABLES {
            return Err(ValidationError::new(
                field,
                format!("a session has at most {MAX_VARIABLES} variables"),
            ));
        }
        Ok(Self(entries))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names this patch sets (not those it deletes).
    pub fn set_names(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| n.as_str())
    }

    /// Applies the patch to `current`; refuses a result over the limits (then nothing is to be
    /// stored). Returns the merged variables and how many entries of the patch changed them.
    pub fn apply(
        &self,
        field: &str,
        current: &Variables,
    ) -> Result<(Variables, usize), ValidationError> {
        let mut merged = current.clone();
        let mut changed = 0;
        for (name, value) in &self.0 {
            let before = merged.get(name.as_str()).cloned();
            match value {
                Some(v) => {
                    merged.insert(name.as_str().to_owned(), v.clone());
                }
                None => {
                    merged.remove(name.as_str());
                }
            }
            if merged.get(name.as_str()) != before.as_ref() {
                changed += 1;
            }
        }
        if merged.len() > MAX_VARIABLES {
            return Err(ValidationError::new(
                field,
                format!(
                    "a session has at most {MAX_VARIABLES} variables (this change makes {})",
                    merged.len()
                ),
            ));
        }
        let bytes = variables_bytes(&merged);
        if bytes > MAX_VARIABLES_BYTES {
            return Err(ValidationError::new(
                field,
                format!(
                    "a session's variables are at most {MAX_VARIABLES_BYTES} bytes as JSON (this change makes {bytes})"
                ),
            ));
        }
        Ok((merged, changed))
    }
}

/// Size of the variables serialized as one JSON object.
pub fn variables_bytes(vars: &Variables) -> usize {
    serde_json::to_string(vars).map_or(usize::MAX, |s| s.len())
}

/// The variables as the model's system text shows them; `None` when there are none.
pub fn variables_prompt(vars: &Variables) -> Option<String> {
    if vars.is_empty() {
        return None;
    }
    let mut text = String::from("Context variables of this session:");
    for (name, value) in vars {
        let shown = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("\n{name} = {shown}"));
    }
    Some(text)
}

/// Checks a message sent to the pool endpoint.
pub fn check_ask_content(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let len = value.chars().count();
    if len > MAX_ASK_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_ASK_CHARS} characters (got {len})"),
        ));
    }
    Ok(())
}

/// Which tools need a confirmation before they run, and for how long one stays open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approvals {
    rules: Vec<ApprovalRule>,
    /// Tools that always need confirmation (`requires_confirmation` of the tool catalogue).
    always: Vec<String>,
    default_expiry_seconds: u32,
    /// Confirmation lifetimes set on tools themselves (tool records'
    /// `confirmation_expires_in_seconds`).
    tool_expiry: Vec<(String, u32)>,
}

impl Approvals {
    pub fn new(rules: Vec<ApprovalRule>, always: Vec<String>, default_expiry_seconds: u32) -> Self {
        Self {
            rules,
            always,
            default_expiry_seconds,
            tool_expiry: Vec::new(),
        }
    }

    /// Adds the confirmation lifetimes tools set for themselves; an approval rule's still wins.
    pub fn with_tool_expiry(mut self, tool_expiry: Vec<(String, u32)>) -> Self {
        self.tool_expiry = tool_expiry;
        self
    }

    pub fn needs(&self, tool: &str) -> bool {
        self.always.iter().any(|t| t == tool) || self.rules.iter().any(|r| r.tool.matches(tool))
    }

    /// Seconds a call of `tool` waits for its confirmation: the first matching rule's, else
    /// the tool's own, else the default.
    pub fn expiry_seconds(&self, tool: &str) -> u32 {
        self.rules
            .iter()
            .find(|r| r.tool.matches(tool))
            .and_then(|r| r.expires_in_seconds)
            .or_else(|| {
                self.tool_expiry
                    .iter()
                    .find(|(name, _)| name == tool)
                    .map(|(_, s)| *s)
            })
            .unwrap_or(self.default_expiry_seconds)
    }
}

/// Where a pending action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a decision.
    Pending,
    /// Confirmed; the tool has not started yet.
    Confirmed,
    /// The tool started (durably recorded before it did, so it never starts twice).
    Executing,
    /// The tool ran; `result` holds what it returned.
    Completed,
    /// The tool ran and failed, or its node stopped while it ran (then it is not repeated).
    Failed,
    Cancelled,
    /// Nobody decided before `expires_at`.
    Expired,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Executing => "executing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Self::Pending,
            "confirmed" => Self::Confirmed,
            "executing" => Self::Executing,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// What the agent loop makes of it: `None` while undecided.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Self::Pending => None,
            Self::Confirmed | Self::Executing | Self::Completed | Self::Failed => {
                Some(Decision::Confirmed)
            }
            Self::Cancelled => Some(Decision::Refused(
                "the user cancelled this action; it was not executed".to_owned(),
            )),
            Self::Expired => Some(Decision::Refused(
                "nobody confirmed this action before it expired; it was not executed".to_owned(),
            )),
        }
    }

    /// The outcome is final (nothing more will happen to the action).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

/// What a call waiting on a person waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A tool that needs a confirmation (`requires_confirmation` or an approval rule): the
    /// person confirms or cancels it (a *pending action* of the API).
    #[default]
    Confirmation,
    /// An `ask_user` question: the person's next message on the thread is the answer (`result`).
    /// It is never shown or decided as a pending action.
    Question,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmation => "confirmation",
            Self::Question => "question",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "confirmation" => Self::Confirmation,
            "question" => Self::Question,
            _ => return None,
        })
    }
}

/// The name of the internal tool that asks the person a question.
pub const ASK_USER: &str = "ask_user";

/// The tool result an `ask_user` call gets for `answer`: the answer as written, except that an
/// answer equal to one of the offered `choices` (ignoring case and surrounding white space) is
/// given in the choice's own spelling. An answer that matches no choice is still delivered: the
/// choices are suggestions an app shows as buttons, and the person may answer in their own
/// words.
pub fn question_answer(preview: &Value, answer: &str) -> String {
    let trimmed = answer.trim();
    preview
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|c| c.trim().to_lowercase() == trimmed.to_lowercase())
        .map_or_else(|| answer.to_owned(), str::to_owned)
}

/// A person's answer to a tool call awaiting confirmation, as the agent loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Confirmed,
    /// Cancelled or expired: the text is the tool result the model gets.
    Refused(String),
}

/// A tool call waiting for (or past) a person's confirmation.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAction {
    pub id: ActionId,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    /// The model's tool call id.
    pub call_id: String,
    pub tool: String,
    pub kind: ActionKind,
    /// The exact arguments that will run when confirmed (a question: `{question, choices?}`).
    pub preview: Value,
    pub status: ActionStatus,
    pub expires_at: Timestamp,
    pub callback_id: Option<CallbackId>,
    /// What the tool returned (or why it did not run).
    pub result: Option<String>,
    pub created_at: Timestamp,
    pub decided_at: Option<Timestamp>,
}

impl PendingAction {
    /// How long before `expires_at` the `pending_action.expiring` event is sent: a fifth of
    /// the action's lifetime, between 1 and 60 seconds.
    pub fn warn_at(&self) -> Timestamp {
        expiring_warning_at(self.created_at, self.expires_at)
    }

    /// What the agent loop makes of it: `None` while undecided. A question answered (its
    /// `result` holds the answer) runs as confirmed, which hands the stored answer back.
    pub fn decision(&self) -> Option<Decision> {
        match (self.kind, self.status) {
            (ActionKind::Confirmation, status) => status.decision(),
            (ActionKind::Question, ActionStatus::Expired) => Some(Decision::Refused(
                "nobody answered the question before it expired".to_owned(),
            )),
            (ActionKind::Question, ActionStatus::Cancelled) => Some(Decision::Refused(
                "the question was withdrawn before anyone answered it".to_owned(),
            )),
            (ActionKind::Question, status) => status.decision(),
        }
    }
}

/// When the `pending_action.expiring` event of an action created at `created_at` is due.
pub fn expiring_warning_at(created_at: Timestamp, expires_at: Timestamp) -> Timestamp {
    let life = expires_at.as_millis() - created_at.as_millis();
    let lead = (life / 5).clamp(1_000, 60_000).min(life.max(0));
    Timestamp::from_millis(expires_at.as_millis() - lead)
}

/// A tool call awaiting confirmation, as the driver stores it when the loop pauses.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub id: ActionId,
    pub call_id: String,
    pub tool: String,
    pub kind: ActionKind,
    pub preview: Value,
    pub expires_at: Timestamp,
}

/// The record a closed session keeps (a second close returns it unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionClose {
    pub thread_id: ThreadId,
    pub closed_at: Timestamp,
    pub duration_seconds: i64,
    /// At least one agent response.
    pub billable: bool,
}

/// A session's own state beyond its thread.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionState {
    pub closed: Option<SessionClose>,
    pub variables: Variables,
    /// Variables the agent asked for (`request_variables`) that are not set yet.
    pub requested_variables: Vec<String>,
}

/// Event kinds of session management.
pub const PENDING_ACTION_CREATED: &str = "pending_action.created";
pub const PENDING_ACTION_RESOLVED: &str = "pending_action.resolved";
pub const PENDING_ACTION_EXPIRING: &str = "pending_action.expiring";
pub const SESSION_CLOSED: &str = "session.closed";
pub const VARIABLES_REQUESTED: &str = "variables.requested";

/// An action as the API and the stream show it.
pub fn action_json(a: &PendingAction) -> Value {
    json!({
        "action_id": a.id.as_str(),
        "thread_id": a.thread_id.as_str(),
        "run_id": a.run_id.as_str(),
        "tool": a.tool,
        "preview": a.preview,
        "status": a.status.as_str(),
        "expires_at": a.expires_at.to_rfc3339(),
        "callback_id": a.callback_id.as_ref().map(|c| c.as_str()),
        "result": a.result,
    })
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Agent,
    Actor,
    /// UTC calendar day.
    Day,
}

/// One group's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub sessions: u64,
    pub billable_sessions: u64,
    pub session_seconds: u64,
    pub runs: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tool_calls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(v: Value) -> Result<VariablePatch, ValidationError> {
        VariablePatch::parse("context_variables", v.as_object().unwrap())
    }

    #[test]
    fn names_follow_the_pattern() {
        for ok in ["A", "USER_PLAN", "X1_2", "A_"] {
            assert!(VariableName::parse("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "1A", "_A", "USER-PLAN", "User", "A B", "É"] {
            assert!(VariableName::parse("f", bad).is_err(), "{bad}");
        }
        assert!(VariableName::parse("f", &"A".repeat(129)).is_err());
    }

    #[test]
    fn values_are_scalars_and_null_deletes() {
        let p = patch(json!({"A": "x", "B": 1.5, "C": true, "D": null})).unwrap();
        let current: Variables = [("D".to_owned(), json!("old"))].into();
        let (merged, changed) = p.apply("context_variables", &current).unwrap();
        assert_eq!(merged.len(), 3);
        assert!(!merged.contains_key("D"));
        assert_eq!(changed, 4);
        let err = patch(json!({"A": [1]})).unwrap_err();
        assert_eq!(err.field, "context_variables.A");
        let err = patch(json!({"A": {"b": 1}})).unwrap_err();
        assert_eq!(err.field, "context_variables.A");
        let err = patch(json!({"bad": 1})).unwrap_err();
        assert_eq!(err.field, "context_variables.bad");
    }

    #[test]
    fn limits_apply_after_the_merge() {
        let current: Variables = (0..19).map(|i| (format!("V{i}"), json!(i))).collect();
        let ok = patch(json!({"NEW": 1})).unwrap();
        assert_eq!(ok.apply("c", &current).unwrap().0.len(), 20);
        let too_many = patch(json!({"NEW": 1, "NEWER": 2})).unwrap();
        assert_eq!(too_many.apply("c", &current).unwrap_err().field, "c");
        // Deleting one makes room for another.
        let swap = patch(json!({"V0": null, "NEW": 1, "NEWER": 2})).unwrap();
        assert_eq!(swap.apply("c", &current).unwrap().0.len(), 20);
        let big = patch(json!({"BIG": "x".repeat(4096)})).unwrap();
        assert!(big.apply("c", &Variables::new()).is_err());
        let fits = patch(json!({"BIG": "x".repeat(4000)})).unwrap();
        assert!(fits.apply("c", &Variables::new()).is_ok());
    }

    #[test]
    fn approvals_match_rules_and_the_catalogue() {
        let rule = ApprovalRule {
            tool: crate::validate::ToolPattern::parse("t", "send_*").unwrap(),
            expires_in_seconds: Some(5),
        };
        let a = Approvals::new(vec![rule], vec!["delete_all".into()], 600);
        assert!(a.needs("send_email"));
        assert!(a.needs("delete_all"));
        assert!(!a.needs("notify_user"));
        assert_eq!(a.expiry_seconds("send_email"), 5);
        assert_eq!(a.expiry_seconds("delete_all"), 600);
        let a = a.with_tool_expiry(vec![("delete_all".into(), 30), ("send_email".into(), 99)]);
        assert_eq!(
            a.expiry_seconds("delete_all"),
            30,
            "the tool's own lifetime"
        );
        assert_eq!(
            a.expiry_seconds("send_email"),
            5,
            "a rule's wins over the tool's"
        );
    }

    #[test]
    fn the_expiring_warning_comes_shortly_before() {
        let mut a = PendingAction {
            id: ActionId::generate(),
            thread_id: ThreadId::generate(),
            run_id: RunId::generate(),
            call_id: "c".into(),
            tool: "t".into(),
            kind: ActionKind::Confirmation,
            preview: json!({}),
            status: ActionStatus::Pending,
            expires_at: Timestamp::from_millis(600_000),
            callback_id: None,
            result: None,
            created_at: Timestamp::from_millis(0),
            decided_at: None,
        };
        assert_eq!(a.warn_at().as_millis(), 540_000);
        a.expires_at = Timestamp::from_millis(2_000);
        assert_eq!(a.warn_at().as_millis(), 1_000);
    }

    #[test]
    fn an_answer_is_delivered_in_the_spelling_of_a_matching_choice_or_as_written() {
        let preview = json!({"question": "Ship now?", "choices": ["Yes", "No"]});
        assert_eq!(question_answer(&preview, " yes "), "Yes");
        assert_eq!(question_answer(&preview, "NO"), "No");
        assert_eq!(question_answer(&preview, "maybe later"), "maybe later");
        assert_eq!(
            question_answer(&json!({"question": "Why?"}), " because "),
            " because "
        );
        for k in [ActionKind::Confirmation, ActionKind::Question] {
            assert_eq!(ActionKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            ActionStatus::Pending,
            ActionStatus::Confirmed,
            ActionStatus::Executing,
            ActionStatus::Completed,
            ActionStatus::Failed,
            ActionStatus::Cancelled,
            ActionStatus::Expired,
        ] {
            assert_eq!(ActionStatus::parse(s.as_str()), Some(s));
        }
    }
}
