//! Tessera's wire format: the JSON shapes of every request and response, the table of error
//! codes, and the table of operations (operationId, method, path).
//!
//! Architecture invariant: shapes only. Server, SDK and CLI all depend on this crate, so it holds
//! no behaviour, no validation beyond what serde does, and no I/O. Field rules are enforced by the
//! server with the domain crate's validated types.

mod board_types;
pub mod error;
mod identity_types;
pub mod ops;
mod session_types;
mod ticket_types;
mod tool_types;
mod toolkit_types;
pub mod types;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ops::Operation;
pub use types::*;
