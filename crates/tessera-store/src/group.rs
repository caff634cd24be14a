//! Group commit: concurrent callers' hot writes share a transaction.
//!
//! SQLite has a single writer, and each write transaction costs its round trips to the
//! connection thread plus a WAL sync at commit. When many callers submit messages, end runs, or
//! mint or exchange tickets at once (`HotWrite` in `sql_runs.rs`), the first caller becomes the *leader*: it takes every request queued so far and writes
//! them in one transaction (the store's batch function), then hands each caller its own result.
//! Callers that arrive meanwhile queue for the next batch. Every caller still gets its answer
//! only after the transaction holding its write committed, so durability is unchanged.
//!
//! The batch runs in a spawned task (the store's `offload`), so a leader whose request is
//! dropped (a client that went away) does not abandon the other callers' results.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::{StoreError, StoreResult};

/// Most requests written in one transaction.
pub(crate) const MAX_BATCH: usize = 128;

type Pending<Req, Res> = Vec<(Req, oneshot::Sender<StoreResult<Res>>)>;

pub(crate) struct GroupCommit<Req, Res> {
    pending: Mutex<Pending<Req, Res>>,
    /// Held by the leader while its batch is written.
    leader: tokio::sync::Mutex<()>,
}

impl<Req, Res> Default for GroupCommit<Req, Res> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Vec::new()),
            leader: tokio::sync::Mutex::new(()),
        }
    }
}

impl<Req: Send + 'static, Res: Send + 'static> GroupCommit<Req, Res> {
    /// Queues `request` and returns its result once a batch containing it was written.
    /// `write` writes one batch (in a single transaction) and must answer every sender; it is
    /// given the requests with their senders.
    pub(crate) async fn submit<F, Fut>(&self, request: Req, write: F) -> StoreResult<Res>
    where
        F: Fn(Pending<Req, Res>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (tx, mut rx) = oneshot::channel();
        self.lock_pending().push((request, tx));
        loop {
            tokio::select! {
                biased;
                result = &mut rx => return answer(result),
                guard = self.leader.lock() => {
                    // A previous leader may have written our request already: it answers before
                    // it lets go of the lock.
                    if let Ok(result) = rx.try_recv() {
                        return result;
                    }
                    let mut batch = {
                        let mut pending = self.lock_pending();
                        let take = pending.len().min(MAX_BATCH);
                        pending.drain(..take).collect::<Vec<_>>()
                    };
                    if batch.is_empty() {
                        // Our request is in a batch whose leader went away while its
                        // transaction goes on; that transaction answers it.
                        drop(guard);
                        return answer(rx.await);
                    }
                    batch.shrink_to_fit();
                    write(batch).await;
                    drop(guard);
                }
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending<Req, Res>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn answer<Res>(result: Result<StoreResult<Res>, oneshot::error::RecvError>) -> StoreResult<Res> {
    result.unwrap_or_else(|_| {
        Err(StoreError::Corrupt(
            "the batched write transaction ended without an answer".to_owned(),
        ))
    })
}

/// Answers each sender with its result (the two lists are in the same order), or every sender
/// with `failure` when the batch as a whole failed.
pub(crate) fn deliver<Res>(
    senders: Vec<oneshot::Sender<StoreResult<Res>>>,
    results: StoreResult<Vec<StoreResult<Res>>>,
) {
    match results {
        Ok(results) => {
            for (sender, result) in senders.into_iter().zip(results) {
                let _ = sender.send(result);
            }
        }
        Err(err) => {
            let message = err.to_string();
            for sender in senders {
                let _ = sender.send(Err(StoreError::Corrupt(format!(
                    "the batched write transaction failed: {message}"
                ))));
            }
        }
    }
}
