//! End-to-end tests of the `tessera` binary: the server process, the offline operator commands
//! and the API client commands, run as a user would run them.
//!
//! Tests marked per backend run on SQLite always and on PostgreSQL when
//! `TESSERA_TEST_POSTGRES_URL` is set. Each test has its own database and port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod api;
mod boards;
mod crash;
mod identity;
mod offline;
mod readme;
mod server;
mod sessions;
mod support;
