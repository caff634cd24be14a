//! Group commit: concurrent callers' hot writes share a transaction.
//!
//! SQLite has a single writer, and each write transaction costs its round trips to the
//! connection thread plus a WAL sync at commit. When many callers submit messages, end runs, or
//! mint or exchange tickets at once (`HotWrite` in `sql_runs.rs`), they share transactions:
//! each caller queues its request ([`GroupCommit::push`]) and waits for its answer; one loop on
//! the writer thread ([`BatchLoop::run`]) takes every request queued so far, writes them in
//! one transaction (the store's batch function), answers each caller, and goes on with what
//! queued meanwhile until the queue is empty. Every caller still gets its answer only after the
//! transaction holding its write committed, so durability is unchanged.
//!
//! The loop, not a caller, moves from one batch to the next: the next batch starts on the
//! writer thread as soon as the previous one committed, without waiting for a busy HTTP worker
//! thread to poll some caller's task first. A caller that goes away (a client that
//! disconnected) changes nothing for the others.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::{StoreError, StoreResult};

/// Most requests written in one transaction.
pub(crate) const MAX_BATCH: usize = 128;

pub(crate) type Pending<Req, Res> = Vec<(Req, oneshot::Sender<StoreResult<Res>>)>;

/// The receiving end of one queued request.
pub(crate) type Answer<Res> = oneshot::Receiver<StoreResult<Res>>;

struct Queue<Req, Res> {
    pending: Pending<Req, Res>,
    /// A loop is writing (or has been started to write) the queue.
    writing: bool,
}

pub(crate) struct GroupCommit<Req, Res> {
    queue: Mutex<Queue<Req, Res>>,
}

impl<Req, Res> Default for GroupCommit<Req, Res> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                writing: false,
            }),
        }
    }
}

impl<Req, Res> GroupCommit<Req, Res> {
    /// Queues `request`. The answer comes on the returned receiver (see [`wait`]). When no loop
    /// is writing the queue, the caller also gets the one that must ([`BatchLoop`]).
    pub(crate) fn push(
        self: &Arc<Self>,
        request: Req,
    ) -> (Answer<Res>, Option<BatchLoop<Req, Res>>) {
        let (tx, rx) = oneshot::channel();
        let mut queue = self.lock();
        queue.pending.push((request, tx));
        let start = !queue.writing;
        queue.writing = true;
        let batch_loop = start.then(|| BatchLoop {
            group: Arc::clone(self),
            done: false,
        });
        (rx, batch_loop)
    }

    /// Gives up on writing the queue: every queued request is answered with an error, and the
    /// next [`Self::push`] starts a loop again.
    fn abandon(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.writing = false;
            std::mem::take(&mut queue.pending)
        };
        // The senders drop here, outside the lock: each caller gets `wait`'s error.
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<Req, Res>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The loop that must write a queue, handed to the [`GroupCommit::push`] that found none
/// running. Dropped before it emptied the queue (never run, its future dropped half-way, or a
/// panic), it answers every request still queued with an error instead of leaving it waiting
/// forever behind a loop that will not come.
pub(crate) struct BatchLoop<Req, Res> {
    group: Arc<GroupCommit<Req, Res>>,
    done: bool,
}

impl<Req, Res> BatchLoop<Req, Res> {
    /// Writes the queue, batch after batch, until it is empty. `write` writes one batch (in a
    /// single transaction) and must answer every sender; it is given the requests with their
    /// senders.
    pub(crate) async fn run<F, Fut>(mut self, mut write: F)
    where
        F: FnMut(Pending<Req, Res>) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let batch = {
                let mut queue = self.group.lock();
                if queue.pending.is_empty() {
                    // Under the lock: a request pushed from now on starts a new loop.
                    queue.writing = false;
                    self.done = true;
                    return;
                }
                let take = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..take).collect::<Vec<_>>()
            };
            write(batch).await;
        }
    }
}

impl<Req, Res> Drop for BatchLoop<Req, Res> {
    fn drop(&mut self) {
        if !self.done {
            self.group.abandon();
        }
    }
}

/// The answer to a queued request.
pub(crate) async fn wait<Res>(answer: Answer<Res>) -> StoreResult<Res> {
    answer.await.unwrap_or_else(|_| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer, or a failed test if it does not come (instead of a test that hangs).
    async fn within(answer: Answer<u32>) -> StoreResult<u32> {
        tokio::time::timeout(std::time::Duration::from_secs(5), wait(answer))
            .await
            .expect("a request was left waiting")
    }

    /// A batch writer that answers each request with itself, doubled, and records batch sizes.
    async fn double(batch: Pending<u32, u32>, sizes: &Mutex<Vec<usize>>) {
        sizes.lock().unwrap().push(batch.len());
        tokio::task::yield_now().await;
        let (requests, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        deliver(
            senders,
            Ok(requests.into_iter().map(|r| Ok(r * 2)).collect()),
        );
    }

    #[tokio::test]
    async fn every_request_is_answered_in_bounded_batches_by_one_loop() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let mut answers = Vec::new();
        let mut loops = Vec::new();
        for i in 0..300 {
            let (answer, batch_loop) = group.push(i);
            loops.extend(batch_loop);
            answers.push((i, answer));
        }
        assert_eq!(loops.len(), 1, "only the first push starts a loop");
        for batch_loop in loops {
            batch_loop.run(|batch| double(batch, &sizes)).await;
        }
        for (i, answer) in answers {
            assert_eq!(within(answer).await.unwrap(), i * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![128, 128, 44]);
        // The queue is empty and no loop runs: the next push starts one again.
        let (answer, batch_loop) = group.push(7);
        let batch_loop = batch_loop.expect("a new loop");
        batch_loop.run(|batch| double(batch, &sizes)).await;
        assert_eq!(within(answer).await.unwrap(), 14);
    }

    #[tokio::test]
    async fn requests_queued_while_a_batch_is_written_go_in_the_next_batch() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (first, batch_loop) = group.push(1);
        let batch_loop = batch_loop.expect("the first push starts a loop");
        let late = Mutex::new(Vec::new());
        batch_loop
            .run(|batch| {
                // While the first batch is written, three more arrive; none starts a loop.
                if batch.len() == 1 && late.lock().unwrap().is_empty() {
                    for i in 2..5 {
                        let (answer, batch_loop) = group.push(i);
                        assert!(batch_loop.is_none());
                        late.lock().unwrap().push((i, answer));
                    }
                }
                double(batch, &sizes)
            })
            .await;
        assert_eq!(wait(first).await.unwrap(), 2);
        for (i, answer) in late.into_inner().unwrap() {
            assert_eq!(within(answer).await.unwrap(), i * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_loop_that_stops_early_fails_the_queue_instead_of_leaving_it_waiting() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        // More than one batch: the second batch's requests are still queued when the loop stops.
        let mut loops = Vec::new();
        let mut answers = Vec::new();
        for i in 0..MAX_BATCH as u32 + 3 {
            let (answer, batch_loop) = group.push(i);
            loops.extend(batch_loop);
            answers.push(answer);
        }
        assert_eq!(loops.len(), 1);
        // The loop is dropped while its first batch is being written (a runtime shutting down);
        // that batch stays alive meanwhile, so only the guard can answer the queued ones.
        let run = loops.remove(0).run(|batch| async move {
            let _held = batch;
            std::future::pending::<()>().await
        });
        let stopped = tokio::time::timeout(std::time::Duration::from_millis(20), run).await;
        assert!(stopped.is_err());
        for answer in answers {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(5), wait(answer))
                .await
                .expect("a request was left waiting");
            let err = answered.unwrap_err();
            assert!(err.to_string().contains("without an answer"), "{err}");
        }
        // A new request starts a new loop.
        let (_answer, batch_loop) = group.push(3);
        assert!(batch_loop.is_some());
    }

    /// Callers on several threads push while loops start and stop: every request is answered
    /// (a push that raced a loop's exit either joined that loop's last batch or started one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_pushed_while_loops_start_and_stop_are_all_answered() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        let callers: Vec<_> = (0..8u32)
            .map(|caller| {
                let group = group.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        let request = caller * 1000 + i;
                        let (answer, batch_loop) = group.push(request);
                        if let Some(batch_loop) = batch_loop {
                            tokio::spawn(async move {
                                let sizes = Mutex::new(Vec::new());
                                batch_loop.run(|batch| double(batch, &sizes)).await;
                            });
                        }
                        assert_eq!(within(answer).await.unwrap(), request * 2);
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_loop_dropped_before_it_ran_answers_the_queue_and_allows_a_new_loop() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        let (first, batch_loop) = group.push(1);
        assert!(batch_loop.is_some());
        // Its task never ran (a runtime shutting down, or no writer thread).
        drop(batch_loop);
        assert!(within(first).await.is_err());
        let (_second, batch_loop) = group.push(2);
        assert!(batch_loop.is_some());
    }
}
