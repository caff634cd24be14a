//! Tessera's core vocabulary: ids, timestamps, secrets, validated values and the records the
//! rest of the system stores and serves.
//!
//! Architecture invariant: this crate does no I/O. Its only ambient inputs are the system clock
//! and the OS random generator (ids and secrets); everything else arrives as arguments.

pub mod agent;
pub mod agent_loop;
pub mod board;
pub mod clock;
pub mod event;
pub mod id;
pub mod identity;
pub mod password;
pub mod records;
pub mod secret;
pub mod session;
pub mod thread;
pub mod ticket;
pub mod token;
pub mod tool;
pub mod toolkit;
pub mod validate;

pub use clock::Timestamp;
pub use id::{
    ActionId, ActorId, AdminId, AgentId, AgentSessionId, AuditEventId, BlobId, BoardItemId,
    CallbackId, ConnectionId, DeploymentId, MembershipId, MessageId, OrganizationId,
    PlatformEventId, ProjectId, RequestId, ResponseId, RunId, SecretKeyId, SessionId, SigningKeyId,
    ThreadId, TicketId, ToolId, UserId,
};
pub use validate::ValidationError;

/// The tenancy scope of a caller. Every storage operation takes one, so a query can only ever
/// see the objects of the deployment the caller authenticated for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    deployment_id: DeploymentId,
}

impl Scope {
    /// The scope of a deployment. Built by authentication (or by an operator command that
    /// names the deployment explicitly), never from request input.
    pub fn deployment(deployment_id: DeploymentId) -> Self {
        Self { deployment_id }
    }

    pub fn deployment_id(&self) -> &DeploymentId {
        &self.deployment_id
    }
}
