//! Rust client SDK for the Tessera API: a cheap, cloneable [`Client`] with one builder method per
//! operation of [`tessera_api::ops`].
//!
//! Every operation returns a [`Request`]; add headers if needed and `.send().await` it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tessera_client::Error> {
//! use tessera_client::{models::LookupActorParams, Client};
//!
//! let client = Client::new("http://127.0.0.1:8080", "tsk_…");
//! let response = client
//!     .ai()
//!     .actors()
//!     .lookup_actor(LookupActorParams {
//!         subject_type: "user".into(),
//!         external_key: "ext-1234".into(),
//!     })
//!     .send()
//!     .await?;
//! let actor = response.actor;
//! # let _ = actor;
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariant: the SDK holds no wire shapes of its own. Requests and responses are
//! the types of `tessera-api`, and every method, path and operationId comes from its operation
//! table, so the SDK cannot drift from the server.

mod ai;
mod boards;
mod client;
mod deployments;
mod error;
mod me;
mod request;
mod secret_keys;
mod sessions;
mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests;
mod threads;
mod tickets;
mod toolkits;
mod tools;
mod users;

pub use ai::{ActorProjects, Actors, Agents, Ai};
pub use client::Client;
pub use deployments::Deployments;
pub use error::Error;
pub use me::Me;
pub use request::{FileDownload, Request};
pub use secret_keys::SecretKeys;
pub use sessions::Sessions;
pub use stream::{StreamEvent, StreamRequest, ThreadStream};
pub use threads::Threads;
pub use tickets::{AgentSessions, Console, SessionTickets};
pub use toolkits::Toolkits;
pub use tools::Tools;
pub use users::{AuditEvents, Organizations, Users};

/// The wire crate, for [`tessera_api::ErrorCode`], [`tessera_api::ops`] and friends.
pub use tessera_api as api;
/// Request and response bodies and query parameters (`tessera_api::types`).
pub use tessera_api::types as models;
pub use tessera_api::ErrorCode;
