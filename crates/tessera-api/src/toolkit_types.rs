//! Third-party toolkits (`/ai/toolkits`, `/ai/actors/{actor_id}/toolkits`): the `Virtual` tools.
//! A deployment enables toolkits of the server's toolkit provider; an actor connects one (the
//! end user authorizes it at the provider's `redirect_url`); then its tools surface to that
//! actor's runs as `tk_{toolkit}_{tool}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `enableToolkit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableToolkitRequest {
    /// The provider's toolkit slug: `^[a-z0-9][a-z0-9_-]{0,31}$`.
    #[schema(example = "github")]
    pub toolkit: String,
    /// Every call of the toolkit's tools waits for a person's confirmation (pending action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_confirmation: Option<bool>,
    /// How long such a confirmation stays open, 1-86400 seconds (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_expires_in_seconds: Option<u32>,
    /// Longest a call may take, 1-600 seconds (default: the server's tool timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// A toolkit enabled for the deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Toolkit {
    /// The provider's toolkit slug.
    pub toolkit: String,
    /// The provider's display name.
    pub name: String,
    pub requires_confirmation: bool,
    #[serde(default)]
    pub confirmation_expires_in_seconds: Option<u32>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
}

/// `listToolkits`: every enabled toolkit, by slug.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolkitList {
    pub data: Vec<Toolkit>,
}

/// `disableToolkit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DisabledToolkit {
    pub toolkit: String,
    pub disabled: bool,
    /// Actors' connections removed with it.
    pub connections_removed: u32,
}

/// Where an actor's connection to a toolkit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolkitConnectionStatus {
    /// No connection: the toolkit's tools are not offered to the actor's runs.
    NotConnected,
    /// Waiting for the end user to authorize it at `redirect_url`.
    Pending,
    /// Authorized: the toolkit's tools surface to the actor's runs.
    Connected,
    /// The authorization failed; connect again.
    Failed,
    /// The provider no longer accepts the account; connect again.
    Expired,
}

/// An enabled toolkit and the actor's connection to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActorToolkit {
    pub toolkit: String,
    pub name: String,
    pub status: ToolkitConnectionStatus,
    /// The connection (`conn_…`), when there is one.
    #[serde(default)]
    pub connection_id: Option<String>,
    /// The provider's URL where the end user authorizes the connection, while `pending`.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// When the connection last changed.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `listActorToolkits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActorToolkitList {
    pub data: Vec<ActorToolkit>,
}

/// `connectActorToolkit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectToolkitRequest {
    /// Where the provider sends the end user after they authorized (`http(s)://`, at most
    /// 2048 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

/// `connectActorToolkit`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolkitConnection {
    pub connection_id: String,
    pub toolkit: String,
    pub actor_id: String,
    pub status: ToolkitConnectionStatus,
    /// Open this (in the end user's browser) to authorize the connection, while `pending`.
    #[serde(default)]
    pub redirect_url: Option<String>,
    pub created_at: String,
}

/// `disconnectActorToolkit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DisconnectedToolkit {
    pub toolkit: String,
    pub actor_id: String,
    /// Always `not_connected`.
    pub status: ToolkitConnectionStatus,
    /// Whether there was a connection to remove.
    pub removed: bool,
}
