//! The board scheduler: fires board item slots when they come due, exactly once across all nodes.
//!
//! Every node runs one. It sleeps until the earliest pending slot of the database (a timer, not
//! a poll), is woken at once when this node creates or changes an item, and re-reads the
//! earliest slot at least every [`RESCAN`] for items created on other nodes. Firing is one store
//! transaction per batch of due slots: it records each slot (unique per item and slot), moves
//! the item to its next slot and queues the slot's run, so a slot and its run exist together or
//! not at all, whichever node claims it and whenever a node dies. While a burst of due slots
//! takes more than one claim, the node's workers start no new runs (for at most [`FIRST`]), so
//! that executing the first slots' runs does not delay firing the last ones.

use std::sync::Arc;
use std::time::Duration;

use tessera_domain::Timestamp;
use tokio::sync::{watch, Notify};

use crate::driver::Runtime;

/// Longest time this node's workers start no new runs while the scheduler claims a burst of
/// due slots (more than one claim takes). Firing on time is the scheduler's promise, and a
/// claim competes with run execution for the database and the CPU; the runs it queues start
/// at most this much later, and a burst that lasts longer lets the workers in again.
pub const FIRST: Duration = Duration::from_secs(2);
/// Longest sleep without looking at the database (items created on other nodes).
pub const RESCAN: Duration = Duration::from_secs(5);
/// Pause after a failed claim (the database is unreachable, …).
const RETRY: Duration = Duration::from_millis(500);

/// Wakes this node's board scheduler (an item was created or rescheduled here).
#[derive(Clone, Default)]
pub struct BoardSchedulerHandle {
    wake: Arc<Notify>,
}

impl BoardSchedulerHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Runs the board scheduler until `shutdown` turns true.
pub async fn run_board_scheduler(
    rt: Arc<Runtime>,
    handle: BoardSchedulerHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut wake_at = tokio::time::Instant::now() + RESCAN;
        if fire_due(&rt).await {
            match rt.store.next_due_slot().await {
                Ok(Some(due)) => {
                    let wait = due.as_millis() - Timestamp::now().as_millis();
                    let at =
                        tokio::time::Instant::now() + Duration::from_millis(wait.max(0) as u64);
                    wake_at = wake_at.min(at);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "reading the next due slot failed");
                    wake_at = tokio::time::Instant::now() + RETRY;
                }
            }
        } else {
            wake_at = tokio::time::Instant::now() + RETRY;
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = handle.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!("board scheduler stopped");
}

/// Claims every slot due now, batch after batch, publishing the queued runs' events and waking
/// the workers after each batch. `false` when a claim failed.
///
/// The node's workers start no new runs while a claim is under way, and during a burst (a
/// claim came back full) also while other nodes still hold due slots (their claims are not
/// committed yet, so due items are left): their runs would compete with the burst's last
/// claims for the database and the CPU. Both end at [`FIRST`] after the first claim at the
/// latest (see [`crate::hub::Hub::defer_claims`]).
pub async fn fire_due(rt: &Runtime) -> bool {
    let batch = rt.store.slot_claim_batch();
    let mut burst = false;
    loop {
        rt.hub.defer_claims(FIRST);
        let started = std::time::Instant::now();
        let slots = match rt
            .store
            .claim_due_slots(&rt.config.node_id, Timestamp::now(), batch)
            .await
        {
            Ok(slots) => slots,
            Err(err) => {
                tracing::warn!(error = %err, "claiming due slots failed");
                rt.hub.resume_claims();
                return false;
            }
        };
        let full = slots.len() == batch;
        if !slots.is_empty() {
            tracing::debug!(
                slots = slots.len(),
                ms = started.elapsed().as_millis() as u64,
                "claimed due slots"
            );
        }
        let mut queued = false;
        for slot in &slots {
            if !slot.events.is_empty() {
                rt.publish(&slot.events);
                queued = true;
            }
        }
        if queued {
            rt.hub.wake_workers();
        }
        burst |= full;
        if full {
            continue;
        }
        if burst && others_claiming(rt).await {
            tokio::time::sleep(OTHERS_POLL).await;
            continue;
        }
        rt.hub.resume_claims();
        return true;
    }
}

/// How often a node that has claimed its share of a burst looks whether other nodes' claims
/// have committed.
const OTHERS_POLL: Duration = Duration::from_millis(20);

/// Whether due slots are left that this node's last claim did not take (on PostgreSQL: items
/// other nodes are claiming, until they commit), while the deferral lasts.
async fn others_claiming(rt: &Runtime) -> bool {
    if rt.hub.claims_deferred_until().is_none() {
        return false;
    }
    match rt.store.next_due_slot().await {
        Ok(Some(due)) => due <= Timestamp::now(),
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(error = %err, "reading the next due slot failed");
            false
        }
    }
}
