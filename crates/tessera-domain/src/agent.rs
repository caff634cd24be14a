//! Agent definitions: what model an agent uses, which tools it may call, how it is routed and
//! limited. An agent has no instructions or schedule: task content lives on board items and
//! threads, so one agent can run many different tasks.

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, ToolId};
use crate::validate::{
    CapabilityTag, Description, EndpointSlug, Label, ModelName, ProviderName, ToolPattern,
    ValidationError,
};
use crate::Timestamp;

/// Which model an agent talks to. Absent on an agent = the deployment's default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub provider: ProviderName,
    pub model: ModelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

impl ModelRef {
    pub const MAX_OUTPUT_TOKENS: u32 = 1_000_000;

    pub fn new(
        provider: ProviderName,
        model: ModelName,
        temperature: Option<f64>,
        max_output_tokens: Option<u32>,
    ) -> Result<Self, ValidationError> {
        if let Some(t) = temperature {
            if !(0.0..=2.0).contains(&t) || !t.is_finite() {
                return Err(ValidationError::new(
                    "temperature",
                    "must be between 0 and 2",
                ));
            }
        }
        if let Some(m) = max_output_tokens {
            if m == 0 || m > Self::MAX_OUTPUT_TOKENS {
                return Err(ValidationError::new(
                    "max_output_tokens",
                    format!("must be between 1 and {}", Self::MAX_OUTPUT_TOKENS),
                ));
            }
        }
        Ok(Self {
            provider,
            model,
            temperature,
            max_output_tokens,
        })
    }
}

/// What happens to a message sent while the thread already has an active run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultitaskPolicy {
    /// Queue the new run behind the active one.
    #[default]
    Enqueue,
    /// Refuse the new message with 409.
    Reject,
    /// Cancel the active run, then start the new one.
    Interrupt,
}

/// Tools whose name matches `tool` need a human's confirmation before they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRule {
    pub tool: ToolPattern,
    /// How long the confirmation stays open; absent: the server's default
    /// (`sessions.action_expiry_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u32>,
}

impl ApprovalRule {
    /// Longest an action may wait for its confirmation (a day).
    pub const MAX_EXPIRES_IN_SECONDS: u32 = 86_400;

    pub fn check_expiry(field: &str, seconds: Option<u32>) -> Result<Option<u32>, ValidationError> {
        match seconds {
            Some(s) if s == 0 || s > Self::MAX_EXPIRES_IN_SECONDS => Err(ValidationError::new(
                field,
                format!("must be between 1 and {}", Self::MAX_EXPIRES_IN_SECONDS),
            )),
            other => Ok(other),
        }
    }
}

/// Per-run limits; each ends the run with a recorded reason when reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLimits {
    pub max_iterations: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    pub run_timeout_seconds: u32,
}

impl AgentLimits {
    pub const DEFAULT_MAX_ITERATIONS: u32 = 20;
    pub const MAX_MAX_ITERATIONS: u32 = 200;
    pub const MAX_TOKEN_BUDGET: u64 = 100_000_000;
    pub const DEFAULT_RUN_TIMEOUT_SECONDS: u32 = 600;
    pub const MAX_RUN_TIMEOUT_SECONDS: u32 = 86_400;

    pub fn new(
        max_iterations: Option<u32>,
        token_budget: Option<u64>,
        run_timeout_seconds: Option<u32>,
    ) -> Result<Self, ValidationError> {
        let max_iterations = max_iterations.unwrap_or(Self::DEFAULT_MAX_ITERATIONS);
        if max_iterations == 0 || max_iterations > Self::MAX_MAX_ITERATIONS {
            return Err(ValidationError::new(
                "max_iterations",
                format!("must be between 1 and {}", Self::MAX_MAX_ITERATIONS),
            ));
        }
        if let Some(b) = token_budget {
            if b == 0 || b > Self::MAX_TOKEN_BUDGET {
                return Err(ValidationError::new(
                    "token_budget",
                    format!("must be between 1 and {}", Self::MAX_TOKEN_BUDGET),
                ));
            }
        }
        let run_timeout_seconds = run_timeout_seconds.unwrap_or(Self::DEFAULT_RUN_TIMEOUT_SECONDS);
        if run_timeout_seconds == 0 || run_timeout_seconds > Self::MAX_RUN_TIMEOUT_SECONDS {
            return Err(ValidationError::new(
                "run_timeout_seconds",
                format!("must be between 1 and {}", Self::MAX_RUN_TIMEOUT_SECONDS),
            ));
        }
        Ok(Self {
            max_iterations,
            token_budget,
            run_timeout_seconds,
        })
    }
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            max_iterations: Self::DEFAULT_MAX_ITERATIONS,
            token_budget: None,
            run_timeout_seconds: Self::DEFAULT_RUN_TIMEOUT_SECONDS,
        }
    }
}

/// Everything that defines an agent, validated. Stored as one unit; updates replace it whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: Label,
    pub description: Description,
    #[serde(default)]
    pub model: Option<ModelRef>,
    #[serde(default)]
    pub tool_ids: Vec<ToolId>,
    #[serde(default)]
    pub sub_agent_ids: Vec<AgentId>,
    #[serde(default)]
    pub capability_tags: Vec<CapabilityTag>,
    #[serde(default)]
    pub endpoint_slug: Option<EndpointSlug>,
    #[serde(default)]
    pub approval_rules: Vec<ApprovalRule>,
    #[serde(default)]
    pub limits: AgentLimits,
    #[serde(default)]
    pub multitask: MultitaskPolicy,
}

impl AgentSpec {
    pub const MAX_TOOLS: usize = 128;
    pub const MAX_SUB_AGENTS: usize = 32;
    pub const MAX_CAPABILITY_TAGS: usize = 32;
    pub const MAX_APPROVAL_RULES: usize = 64;

    /// Rules that span fields (list sizes are checked while parsing each list).
    pub fn check(&self, own_id: Option<&AgentId>) -> Result<(), ValidationError> {
        if let Some(id) = own_id {
            if let Some(i) = self.sub_agent_ids.iter().position(|s| s == id) {
                return Err(ValidationError::new(
                    format!("sub_agent_ids[{i}]"),
                    "an agent cannot be its own sub-agent",
                ));
            }
        }
        Ok(())
    }
}

/// A stored agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: AgentId,
    pub spec: AgentSpec,
    /// Incremented on every update; used for optimistic concurrency.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_have_defaults_and_ranges() {
        let l = AgentLimits::new(None, None, None).unwrap();
        assert_eq!(l, AgentLimits::default());
        assert_eq!(
            AgentLimits::new(Some(0), None, None).unwrap_err().field,
            "max_iterations"
        );
        assert_eq!(
            AgentLimits::new(None, Some(0), None).unwrap_err().field,
            "token_budget"
        );
        assert_eq!(
            AgentLimits::new(None, None, Some(86_401))
                .unwrap_err()
                .field,
            "run_timeout_seconds"
        );
    }

    #[test]
    fn model_ranges() {
        let p = ProviderName::parse("provider", "echo").unwrap();
        let m = ModelName::parse("model", "echo").unwrap();
        assert!(ModelRef::new(p.clone(), m.clone(), Some(0.7), Some(100)).is_ok());
        assert_eq!(
            ModelRef::new(p.clone(), m.clone(), Some(2.5), None)
                .unwrap_err()
                .field,
            "temperature"
        );
        assert_eq!(
            ModelRef::new(p.clone(), m.clone(), Some(f64::NAN), None)
                .unwrap_err()
                .field,
            "temperature"
        );
        assert_eq!(
            ModelRef::new(p, m, None, Some(0)).unwrap_err().field,
            "max_output_tokens"
        );
    }

    #[test]
    fn multitask_defaults_to_enqueue() {
        assert_eq!(MultitaskPolicy::default(), MultitaskPolicy::Enqueue);
        let p: MultitaskPolicy = serde_json::from_str("\"interrupt\"").unwrap();
        assert_eq!(p, MultitaskPolicy::Interrupt);
    }
}
