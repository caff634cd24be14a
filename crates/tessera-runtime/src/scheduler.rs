//! The scheduler: fires board item slots when they come due, exactly once across all nodes.
//!
//! Every node runs one. It sleeps until the earliest pending slot of the database (a timer, not
//! a poll), is woken at once when this node creates or changes an item, and re-reads the
//! earliest slot at least every [`RESCAN`] for items created on other nodes. A firing is one
//! store transaction that records the slot (unique per item and slot) and moves the item to
//! its next slot; the slot's run is then submitted with an idempotency key naming the slot.
//! A node that dies in between leaves a recorded slot without a run: any node re-submits it
//! (same run id, same key) after [`RECOVER_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;
use tessera_domain::agent::MultitaskPolicy;
use tessera_domain::thread::{Message, Role};
use tessera_domain::Timestamp;
use tessera_store::{Idempotency, SlotOutcome, SlotRecord, StoreError, SubmitOutcome, SubmitRun};
use tokio::sync::{watch, Notify};

use crate::driver::Runtime;

/// Slots claimed per transaction.
const BATCH: usize = 256;
/// Runs submitted concurrently by one node.
const SUBMIT_CONCURRENCY: usize = 16;
/// Longest sleep without looking at the database (items created on other nodes).
pub const RESCAN: Duration = Duration::from_secs(5);
/// A recorded slot without a run this old is re-submitted.
const RECOVER_AFTER_MS: i64 = 30_000;
/// How often recorded-but-unsubmitted slots are looked for.
const RECOVER_EVERY: Duration = Duration::from_secs(30);
/// Slots older than this are not recovered (their idempotency records are gone).
const RECOVER_WINDOW_MS: i64 = 23 * 3600 * 1000;

/// Wakes this node's scheduler (an item was created or rescheduled here).
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
}

impl SchedulerHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The idempotency operation of a slot's run submission.
pub fn slot_operation(slot: &SlotRecord) -> String {
    format!("boardSlot:{}", slot.item_id)
}

/// Runs the scheduler until `shutdown` turns true.
pub async fn run_scheduler(
    rt: Arc<Runtime>,
    handle: SchedulerHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_recovery = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        fire_due(&rt).await;
        if tokio::time::Instant::now() >= next_recovery {
            recover(&rt).await;
            next_recovery = tokio::time::Instant::now() + RECOVER_EVERY;
        }
        let mut wake_at = (tokio::time::Instant::now() + RESCAN).min(next_recovery);
        match rt.store.next_due_slot().await {
            Ok(Some(due)) => {
                let wait = due.as_millis() - Timestamp::now().as_millis();
                let at = tokio::time::Instant::now() + Duration::from_millis(wait.max(0) as u64);
                wake_at = wake_at.min(at);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "reading the next due slot failed"),
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = handle.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!("scheduler stopped");
}

/// Claims and submits every slot due now, batch after batch.
pub async fn fire_due(rt: &Arc<Runtime>) {
    loop {
        let slots = match rt
            .store
            .claim_due_slots(&rt.config.node_id, Timestamp::now(), BATCH)
            .await
        {
            Ok(slots) => slots,
            Err(err) => {
                tracing::warn!(error = %err, "claiming due slots failed");
                return;
            }
        };
        let full = slots.len() == BATCH;
        submit_all(rt, slots).await;
        if !full {
            return;
        }
    }
}

async fn submit_all(rt: &Arc<Runtime>, slots: Vec<SlotRecord>) {
    futures_util::stream::iter(
        slots
            .into_iter()
            .filter(|s| s.outcome == SlotOutcome::Fired),
    )
    .for_each_concurrent(SUBMIT_CONCURRENCY, |slot| async move {
        submit_slot(rt, &slot).await;
    })
    .await;
}

/// Submits a fired slot's run (idempotently: a second submission of the same slot replays).
pub async fn submit_slot(rt: &Runtime, slot: &SlotRecord) {
    let (Some(run_id), Some(message_id)) = (slot.run_id.clone(), slot.message_id.clone()) else {
        return;
    };
    let submit = SubmitRun {
        message: Message {
            id: message_id,
            thread_id: slot.thread_id.clone(),
            run_id: Some(run_id.clone()),
            role: Role::User,
            content: slot.description.clone(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
            attachments: Vec::new(),
            usage: None,
            created_at: Timestamp::now(),
        },
        run_id: run_id.clone(),
        // Scheduled work waits its turn on the thread, whatever the agent's policy for
        // interactive messages.
        policy: MultitaskPolicy::Enqueue,
        idempotency: Some(Idempotency {
            operation: slot_operation(slot),
            key: slot.slot_at.as_millis().to_string(),
            request_hash: run_id.to_string(),
            result: json!({"run_id": run_id.as_str()}),
        }),
    };
    match rt
        .store
        .submit_run(&slot.scope, &slot.thread_id, &submit)
        .await
    {
        Ok(SubmitOutcome::Created { events, .. }) => {
            rt.publish(&events);
            rt.hub.wake_workers();
        }
        Ok(SubmitOutcome::Replayed { .. }) => {}
        Err(err @ (StoreError::NotFound { .. } | StoreError::Conflict(_))) => {
            tracing::warn!(item = %slot.item_id, error = %err, "a due slot's run cannot start");
            if let Err(err) = rt
                .store
                .fail_slot(&slot.scope, &slot.item_id, slot.slot_at, &err.to_string())
                .await
            {
                tracing::warn!(error = %err, "recording a failed slot failed");
            }
        }
        Err(err) => {
            // Retried by recovery (same run id and idempotency key).
            tracing::warn!(item = %slot.item_id, error = %err, "submitting a due slot's run failed");
        }
    }
}

/// Re-submits slots recorded by a node that died before submitting their runs.
pub async fn recover(rt: &Arc<Runtime>) {
    let now = Timestamp::now();
    let slots = match rt
        .store
        .unsubmitted_slots(
            now.plus_millis(-RECOVER_WINDOW_MS),
            now.plus_millis(-RECOVER_AFTER_MS),
            BATCH,
        )
        .await
    {
        Ok(slots) => slots,
        Err(err) => {
            tracing::warn!(error = %err, "looking for unsubmitted slots failed");
            return;
        }
    };
    if !slots.is_empty() {
        tracing::info!(
            count = slots.len(),
            "re-submitting slots of a node that stopped"
        );
    }
    submit_all(rt, slots).await;
}
