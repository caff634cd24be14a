//! The board scheduler: fires board item slots when they come due, exactly once across all nodes.
//!
//! Every node runs one. It sleeps until the earliest pending slot of the database (a timer, not
//! a poll), is woken at once when this node creates or changes an item, and re-reads the
//! earliest slot at least every [`RESCAN`] for items created on other nodes. Firing is one store
//! transaction per batch of due slots: it records each slot (unique per item and slot), moves
//! the item to its next slot and queues the slot's run, so a slot and its run exist together or
//! not at all, whichever node claims it and whenever a node dies. While the node claims the
//! slots it woke for, and while a burst of them lasts (see [`fire_due`]), its workers start no
//! new runs (for at most [`FIRST`] per burst), so that executing the first slots' runs does not
//! delay firing the last ones.

use std::sync::Arc;
use std::time::Duration;

use tessera_domain::Timestamp;
use tokio::sync::{watch, Notify};

use crate::driver::Runtime;

/// Longest time this node's workers start no new runs while the scheduler claims due slots
/// (the default of `RuntimeConfig::burst_hold`). Firing on time is the scheduler's promise,
/// and a claim competes with run execution for the database and the CPU; the runs it queues
/// start at most this much later, and a burst that lasts longer lets the workers in again.
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
    // The next pending slot, as last read.
    let mut next_due: Option<Timestamp> = None;
    // Looks in a row that found slots due that this node's claim could not take (another
    // node's claim holds them until it commits or rolls back): the next look comes after
    // `OTHERS_POLL`, doubled for each of them (at most 32 times), instead of at once, and does
    // not hold the workers back.
    let mut contended: u32 = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut wake_at = tokio::time::Instant::now() + RESCAN;
        let woke_for_due = contended == 0 && next_due.is_some_and(|due| due <= Timestamp::now());
        if fire_due(&rt, woke_for_due).await {
            match rt.store.next_due_slot().await {
                Ok(due) => {
                    next_due = due;
                    if let Some(due) = due {
                        let wait = due.as_millis() - Timestamp::now().as_millis();
                        let at = if wait <= 0 {
                            contended = contended.saturating_add(1);
                            tokio::time::Instant::now()
                                + OTHERS_POLL * 2u32.pow(contended.min(6) - 1)
                        } else {
                            contended = 0;
                            tokio::time::Instant::now() + Duration::from_millis(wait as u64)
                        };
                        wake_at = wake_at.min(at);
                    } else {
                        contended = 0;
                    }
                }
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
/// The node's workers start no new runs from the first claim on when `slots_due` (the
/// scheduler woke for a due slot), or else from the first full claim; and, once a claim came
/// back full (a burst), also while due slots are left that this node's last claim did not take
/// (other nodes' claims hold them until they commit): their runs would compete with the
/// burst's last claims for the database and the CPU. All of it ends at
/// `RuntimeConfig::burst_hold` after it began at the latest (see
/// [`crate::hub::Hub::defer_claims`]).
pub async fn fire_due(rt: &Runtime, slots_due: bool) -> bool {
    let batch = rt.store.slot_claim_batch();
    let hold = rt.config.burst_hold;
    if slots_due {
        rt.hub.defer_claims(hold);
    }
    let mut burst = false;
    loop {
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
        if full {
            // Before this node wakes its workers for the batch's runs (on PostgreSQL the
            // commit's `NOTIFY` may wake them first, and they may start a few).
            rt.hub.defer_claims(hold);
            burst = true;
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
/// have ended; also how soon a node that found due slots it could not take looks again (doubled
/// on each such look in a row, up to 32 times).
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
