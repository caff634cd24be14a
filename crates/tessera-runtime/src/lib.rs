//! Tessera's agent runtime: model providers, tool dispatch, the driver that performs the agent
//! loop's effects, the workers that claim runs, and the scheduler that expires pending actions.
//!
//! Architecture invariant: no HTTP server code (only HTTP *clients* to model and tool APIs) and
//! no SQL; storage is reached through `tessera-store` traits, the loop's decisions come from the
//! pure state machine in `tessera-domain`.

mod api_tool;
pub mod board_scheduler;
pub mod board_tools;
pub mod boards;
pub mod code_tools;
pub mod driver;
pub mod fault;
pub mod hub;
pub mod mcp;
pub mod provider;
pub mod sandbox;
pub mod scheduler;
pub mod tool_net;
pub mod tool_records;
pub mod toolkits;
pub mod tools;
pub mod worker;
