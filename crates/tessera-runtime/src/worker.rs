//! Workers: claim runs and execute them, up to the configured concurrency.
//!
//! A claim is one atomic store transaction; wake-ups are immediate within the node (the hub) and
//! across nodes (PostgreSQL `NOTIFY`), with a slow poll as the safety net that also picks up runs
//! whose node died once their lease expires.

use std::sync::Arc;

use tessera_domain::Timestamp;
use tessera_store::{Notification, WaitingRuns};
use tokio::sync::{watch, Semaphore};

use crate::driver::Runtime;
use crate::hub::Stop;

/// Runs the claim loop until `shutdown` turns true. Runs still executing then are abandoned:
/// their leases expire and any node resumes them from their last stored step.
pub async fn run_workers(rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    // Lives as long as this loop, even when the loop is aborted.
    let _forwarder = forward_notifications(&rt).await;
    let permits = Arc::new(Semaphore::new(rt.config.workers.max(1)));
    // Submissions may start runs on these workers while this loop runs, and only then (also
    // when the loop is aborted).
    let offered = Offered(rt.hub.clone());
    rt.hub.set_workers(Some(permits.clone()));
    let lease_ms = rt.config.lease.as_millis() as i64;
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            maintain(&rt, Timestamp::now()).await;
        }
        // The board scheduler is firing a burst of due slots: it goes first (see
        // `board_scheduler::FIRST`), runs in flight go on, new ones wait.
        if let Some(until) = rt.hub.claims_deferred_until() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = rt.hub.work_available() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        // Claims as many runs as there are free workers, in one transaction per batch: under
        // load, several workers free up while a claim waits for the database. The slots are
        // taken first: submissions take them too (`Hub::reserve_worker`), and a run claimed
        // without one would wait for a worker while its lease runs out.
        loop {
            let seen = rt.hub.wake_count();
            let mut slots = Vec::new();
            while slots.len() < MAX_CLAIM_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(slot) => slots.push(slot),
                    Err(_) => break,
                }
            }
            if slots.is_empty() {
                break;
            }
            // Look before claiming: most wake-ups find nothing, and looking is a read where a
            // claim is a write transaction (on SQLite, the single writer's).
            match rt.store.waiting_runs(Timestamp::now()).await {
                Ok(WaitingRuns::Claimable) => {}
                Ok(WaitingRuns::Blocked) => break,
                Ok(WaitingRuns::None) => {
                    rt.hub.settle(seen);
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "looking for runs to claim failed");
                    break;
                }
            }
            let free = slots.len();
            let batch = match rt
                .store
                .claim_runs(&rt.config.node_id, Timestamp::now(), lease_ms, free)
                .await
            {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming runs failed");
                    break;
                }
            };
            let full = batch.len() == free;
            // One slot per run claimed; the others are given back as `slots` drops.
            for (claimed, slot) in batch.into_iter().zip(slots) {
                rt.spawn_execute(claimed, slot);
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = rt.hub.work_available() => {}
            () = tokio::time::sleep(rt.config.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    // No run starts here any more; runs in flight stop at their next await point and release
    // their leases, so a restarted (or any other) node resumes them at once instead of after
    // the lease.
    drop(offered);
    rt.hub.stop_all(Stop::Release);
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while rt.hub.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::info!(still_running = rt.hub.running(), "workers stopped");
}

/// Most runs claimed in one transaction.
const MAX_CLAIM_BATCH: usize = 32;

/// How long stopping waits for runs in flight to release their leases.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Idempotency keys answer retries for this long (SPEC: 24 h).
const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// How often the maintenance below runs (and once when the workers start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Periodic maintenance, on every node (each step is one idempotent statement, so nodes doing
/// it at once do no harm): deletes expired idempotency keys, board slot records older than
/// `slot_retention` (see `BoardStore::prune_slots`: exactly-once firing survives it), and the
/// chunks of uploads that never committed, once `upload_grace` has passed since their last
/// chunk.
pub async fn maintain(rt: &Runtime, now: Timestamp) {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let idempotency = rt
        .store
        .prune_idempotency(now.plus_millis(-IDEMPOTENCY_TTL_MS))
        .await;
    let slots = rt
        .store
        .prune_slots(now.plus_millis(-ms(rt.config.slot_retention)))
        .await;
    let chunks = rt
        .store
        .prune_orphan_chunks(now.plus_millis(-ms(rt.config.upload_grace)))
        .await;
    for (what, result) in [
        ("expired idempotency keys", idempotency),
        ("old board slot records", slots),
        ("chunks of uncommitted uploads", chunks),
    ] {
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned {what}"),
            Err(err) => tracing::warn!(error = %err, "pruning {what} failed"),
        }
    }
}

/// Withdraws the workers offered to submissions when dropped.
struct Offered(Arc<crate::hub::Hub>);

impl Drop for Offered {
    fn drop(&mut self) {
        self.0.set_workers(None);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Relays other nodes' notifications (PostgreSQL) to this node's hub, until the returned guard
/// is dropped. Dropping it drops the receiver, which lets the store's LISTEN task end and give
/// its connection back: closing the store waits for that connection.
async fn forward_notifications(rt: &Arc<Runtime>) -> Option<AbortOnDrop> {
    let mut rx = match rt.store.listen().await {
        Ok(Some(rx)) => rx,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(error = %err, "cannot LISTEN for other nodes; relying on polling");
            return None;
        }
    };
    let hub = rt.hub.clone();
    let task = tokio::spawn(async move {
        while let Some(n) = rx.recv().await {
            match n {
                Notification::Runs => hub.wake_workers(),
                Notification::ThreadEvents(thread) => hub.publish(&thread, crate::hub::Live::Look),
                Notification::CancelRun(run) => hub.stop_run(&run, Stop::Cancel),
                Notification::Actions => hub.wake_scheduler(),
            }
        }
    });
    Some(AbortOnDrop(task))
}
