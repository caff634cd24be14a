//! HTTP-level integration tests of `tessera-server`: each test starts the real server on port 0
//! over a fresh database (SQLite always, PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set) and
//! drives it through the `tessera-client` SDK, or raw HTTP where the input must be malformed or
//! headers inspected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod helpers;

mod actors;
mod agents;
mod ask_user;
mod auth;
mod bad_input;
mod boards;
mod browser;
mod code;
mod identity;
mod keys;
mod lists;
mod ops_endpoints;
mod projects;
mod runtime;
mod sessions;
mod tenancy;
mod tickets;
mod tool_calls;
mod toolkits;
mod tools;
mod vanity;
mod walkthrough;
