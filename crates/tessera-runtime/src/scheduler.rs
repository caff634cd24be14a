//! The action scheduler: expires pending actions at their `expires_at` and sends the
//! `pending_action.expiring` warning shortly before.
//!
//! It sleeps until the earliest deadline stored (not a coarse poll), wakes early when this node
//! pauses a run (the hub) or another node does (PostgreSQL `NOTIFY`), and on start handles what
//! fell due while no node was running. Each expiry is one conditional update, so when several
//! nodes' schedulers wake for the same deadline exactly one expires each action.

use std::sync::Arc;
use std::time::Duration;

use tessera_domain::Timestamp;
use tokio::sync::watch;

use crate::driver::Runtime;

/// Longest sleep: a safety net for wake-ups lost between nodes.
const SAFETY_NET: Duration = Duration::from_secs(30);
/// Pause after a failed store call before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true.
pub async fn run_action_scheduler(rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let sleep = match tick(&rt).await {
            Ok(sleep) => sleep,
            Err(err) => {
                tracing::warn!(error = %err, "the action scheduler failed; retrying");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = rt.hub.scheduler_woken() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Handles what is due now; returns how long to sleep until the next deadline.
async fn tick(rt: &Runtime) -> Result<Duration, tessera_store::StoreError> {
    let now = Timestamp::now();
    let warned = rt.store.warn_expiring_actions(now).await?;
    rt.publish(&warned);
    let expired = rt.store.expire_due_actions(now).await?;
    if !expired.is_empty() {
        tracing::info!(actions = expired.len(), "pending actions expired");
        rt.publish(&expired);
        // Their runs resume with the `expired` outcome.
        rt.hub.wake_workers();
    }
    Ok(match rt.store.next_action_deadline().await? {
        Some(next) => {
            let wait = (next.as_millis() - Timestamp::now().as_millis()).max(0) as u64;
            Duration::from_millis(wait).min(SAFETY_NET)
        }
        None => SAFETY_NET,
    })
}
