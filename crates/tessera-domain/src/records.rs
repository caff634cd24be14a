//! Stored records of the foundation objects and the validated inputs that create them.

use serde::{Deserialize, Serialize};

use crate::agent::ModelRef;
use crate::id::{ActorId, AgentId, DeploymentId, ProjectId, SecretKeyId};
use crate::validate::{DeploymentName, ExternalKey, Label, Metadata, SubjectType};
use crate::Timestamp;

/// The tenant: one app of one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub name: String,
    /// Origin (scheme + host + port) of the backend API and vanity pages.
    pub backend_host: String,
    /// Origin of the deployment's own app (sign-in pages).
    pub frontend_host: String,
    pub settings: DeploymentSettings,
    pub created_at: Timestamp,
}

/// A deployment's own settings (stored as JSON, so that later settings need no migration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSettings {
    /// The model of agents that name none; absent: the server's `runtime.default_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<ModelRef>,
}

/// What creating a deployment needs.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub name: DeploymentName,
    pub backend_host: String,
    pub frontend_host: String,
}

/// A backend secret key as listed: never the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretKeyRecord {
    pub id: SecretKeyId,
    pub deployment_id: DeploymentId,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// Who an agent works for; `(subject_type, external_key)` is unique per deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    pub id: ActorId,
    pub subject_type: String,
    pub external_key: String,
    pub display_name: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewActor {
    pub subject_type: SubjectType,
    pub external_key: ExternalKey,
    pub display_name: Option<Label>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectStatus {
    Active,
    Archived,
}

impl ProjectStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// Binds one actor and one agent; threads and board items live inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: ProjectId,
    pub actor_id: ActorId,
    pub agent_id: AgentId,
    pub name: String,
    pub status: ProjectStatus,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct NewProject {
    pub actor_id: ActorId,
    pub agent_id: AgentId,
    pub name: Label,
}
