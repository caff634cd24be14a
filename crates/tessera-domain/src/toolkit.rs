//! Third-party toolkits (the `Virtual` tools): a deployment enables toolkits of the operator's
//! toolkit provider; an actor connects a toolkit (a connected account at the provider, which the
//! end user authorizes through a redirect URL); from then on the toolkit's tools surface to the
//! actor's runs as `tk_{toolkit}_{tool}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{ActorId, ConnectionId};
use crate::tool::ToolSpec;
use crate::validate::ValidationError;
use crate::Timestamp;

/// A toolkit's name at the provider: `^[a-z0-9][a-z0-9_-]{0,31}$` (it becomes part of the
/// model-facing tool names).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ToolkitSlug(String);

impl ToolkitSlug {
    pub const MAX_LEN: usize = 32;

    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = value.into();
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                field,
                "must match ^[a-z0-9][a-z0-9_-]{0,31}$ (the provider's toolkit slug, e.g. `github`)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolkitSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ToolkitSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for ToolkitSlug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse("toolkit", raw).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// How a deployment uses an enabled toolkit's tools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolkitSettings {
    /// Every call of the toolkit's tools waits for a person's confirmation.
    #[serde(default)]
    pub requires_confirmation: bool,
    /// How long such a confirmation stays open (absent: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_expires_in_seconds: Option<u32>,
    /// Longest a call may take (absent: the server's `runtime.tool_timeout_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

impl ToolkitSettings {
    /// The limits of tool records apply.
    pub fn check(&self) -> Result<(), ValidationError> {
        if let Some(t) = self.timeout_seconds {
            if t == 0 || t > ToolSpec::MAX_TIMEOUT_SECONDS {
                return Err(ValidationError::new(
                    "timeout_seconds",
                    format!("must be between 1 and {}", ToolSpec::MAX_TIMEOUT_SECONDS),
                ));
            }
        }
        if let Some(t) = self.confirmation_expires_in_seconds {
            if t == 0 || t > ToolSpec::MAX_CONFIRMATION_SECONDS {
                return Err(ValidationError::new(
                    "confirmation_expires_in_seconds",
                    format!(
                        "must be between 1 and {}",
                        ToolSpec::MAX_CONFIRMATION_SECONDS
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A toolkit enabled for a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolkit {
    pub slug: ToolkitSlug,
    /// The provider's display name, as it was when the toolkit was enabled.
    pub name: String,
    pub settings: ToolkitSettings,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where an actor's connected account stands. An actor without a connection is
/// `not_connected` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionStatus {
    /// Created at the provider; the end user has not finished authorizing it.
    Pending,
    /// Authorized: the toolkit's tools surface to the actor's runs.
    Connected,
    /// The authorization failed.
    Failed,
    /// The provider no longer accepts it (revoked, expired, deleted).
    Expired,
}

impl ConnectionStatus {
    pub const ALL: [ConnectionStatus; 4] = [
        ConnectionStatus::Pending,
        ConnectionStatus::Connected,
        ConnectionStatus::Failed,
        ConnectionStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Pending => "pending",
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Failed => "failed",
            ConnectionStatus::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// An actor's connection to an enabled toolkit: a connected account at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolkitConnection {
    pub id: ConnectionId,
    pub actor_id: ActorId,
    pub toolkit: ToolkitSlug,
    /// The provider's id of the connected account.
    pub account_id: String,
    pub status: ConnectionStatus,
    /// Where the end user authorizes the account (the provider's URL), while it is pending.
    pub redirect_url: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The model-facing name of `tool` of `toolkit`: `tk_{toolkit}_{tool}`, made model-safe and
/// at most 64 characters by the rule MCP tool names follow
/// ([`crate::tool::namespaced_tool_name`]).
pub fn exposed_name(toolkit: &ToolkitSlug, tool: &str) -> String {
    crate::tool::namespaced_tool_name(&format!("{}{}", crate::tool::TOOLKIT_PREFIX, toolkit), tool)
}

/// Checks a URL the provider sends the end user to after authorizing: `http(s)://`, at most
/// 2048 characters, no whitespace or control characters.
pub fn check_redirect_url(field: &str, url: &str) -> Result<(), ValidationError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be an http:// or https:// URL of at most 2048 characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_checked() {
        for good in ["github", "google-calendar", "x_1", "0"] {
            assert!(ToolkitSlug::parse("toolkit", good).is_ok(), "{good}");
        }
        for bad in ["", "GitHub", "-a", "a.b", "a b", &"a".repeat(33)] {
            assert_eq!(
                ToolkitSlug::parse("toolkit", bad).unwrap_err().field,
                "toolkit",
                "{bad}"
            );
        }
    }

    #[test]
    fn exposed_names_are_prefixed_and_model_safe() {
        let gh = ToolkitSlug::parse("t", "github").unwrap();
        assert_eq!(
            exposed_name(&gh, "GITHUB_CREATE_ISSUE"),
            "tk_github_GITHUB_CREATE_ISSUE"
        );
        let odd = exposed_name(&gh, "issues.create");
        assert!(
            odd.starts_with("tk_github_issues_create_") && odd.len() == 32,
            "{odd}"
        );
        assert_ne!(odd, exposed_name(&gh, "issues/create"));
        let long = exposed_name(&gh, &"x".repeat(100));
        assert_eq!(long.len(), 64);
        for name in [odd, long] {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }
    }

    #[test]
    fn settings_limits_are_those_of_tools() {
        let ok = ToolkitSettings {
            requires_confirmation: true,
            confirmation_expires_in_seconds: Some(3600),
            timeout_seconds: Some(30),
        };
        assert!(ok.check().is_ok());
        let bad = ToolkitSettings {
            timeout_seconds: Some(0),
            ..ok.clone()
        };
        assert_eq!(bad.check().unwrap_err().field, "timeout_seconds");
        let bad = ToolkitSettings {
            confirmation_expires_in_seconds: Some(86_401),
            ..ok
        };
        assert_eq!(
            bad.check().unwrap_err().field,
            "confirmation_expires_in_seconds"
        );
    }

    #[test]
    fn statuses_round_trip_and_redirects_are_checked() {
        for s in ConnectionStatus::ALL {
            assert_eq!(ConnectionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ConnectionStatus::parse("active"), None);
        assert!(check_redirect_url("r", "https://app.example.com/done?x=1").is_ok());
        for bad in ["ftp://x", "https://", "https://a b", "javascript:alert(1)"] {
            assert!(check_redirect_url("r", bad).is_err(), "{bad}");
        }
    }
}
