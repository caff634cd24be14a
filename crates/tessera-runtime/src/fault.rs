//! Test-only fault injection, for crash tests that must kill a node at an exact point.
//!
//! `TESSERA_TEST_FAULT=<point>` makes the task that reaches `<point>` log
//! `test fault point reached` (field `point`) and then wait forever, so that a test can SIGKILL
//! the process there, deterministically. The variable is read once; unset (always, outside
//! tests) a point costs one comparison. It is not a configuration setting and is documented as
//! test-only in `docs/session-management.md`.
//!
//! Points (all in the execution of a confirmed action, see `driver::execute_call`):
//! - `action_before_start`: the action is `confirmed`, not yet marked `executing`;
//! - `action_after_tool`: the tool returned (its side effect happened), its result is not stored;
//! - `action_after_result`: the result is on the action, the tool message is not stored yet.

use std::sync::OnceLock;

/// The environment variable naming the point to stop at.
pub const ENV: &str = "TESSERA_TEST_FAULT";

/// Stops here for good if `TESSERA_TEST_FAULT` names `point`.
pub async fn point(point: &str) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if configured.as_deref() == Some(point) {
        tracing::warn!(point, "test fault point reached; waiting to be killed");
        std::future::pending::<()>().await;
    }
}
