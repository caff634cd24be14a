//! In-process signalling: live stream items per thread, worker wake-ups and run cancellation.
//!
//! Everything durable is in the database; the hub hands stream subscribers what was just stored
//! (so that they need not read it back) and carries text deltas, which are live only. Channels
//! are bounded: a slow stream subscriber lags and re-reads durable events from storage instead of
//! growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_domain::{RunId, ThreadId};
use tessera_store::ThreadEvent;
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Items per thread a subscriber may fall behind by before it lags.
const THREAD_CHANNEL_CAPACITY: usize = 256;

/// Something a stream subscriber should know now.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// Text streamed by the model for the assistant message `message_id` (not stored).
    Delta {
        run_id: RunId,
        message_id: String,
        text: String,
    },
    /// Events this node just stored, contiguous and in order (one transaction's).
    Stored(Arc<[ThreadEvent]>),
    /// New durable events may exist that this node did not store (another node wrote them):
    /// look in storage.
    Look,
}

/// What a running run is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    #[default]
    Continue,
    Cancel,
    Interrupt,
    /// The lease was lost: stop without writing anything.
    Abandon,
    /// The node is stopping: stop without writing, then release the lease so that any node
    /// resumes the run at once.
    Release,
}

#[derive(Default)]
pub struct Hub {
    threads: Mutex<HashMap<ThreadId, broadcast::Sender<Live>>>,
    runs: Mutex<HashMap<RunId, watch::Sender<Stop>>>,
    work: Notify,
    /// `wake_workers` calls so far, and the count the claim loop last found no run queued
    /// after: more wake-ups than that mean runs may wait for a worker slot.
    wakes: AtomicU64,
    settled: AtomicU64,
    /// Pending actions changed: the action scheduler recomputes its next deadline.
    scheduler: Notify,
    /// Until when workers start no new runs: the board scheduler is claiming a burst of due
    /// slots (see [`Hub::defer_claims`]).
    claims_deferred: Mutex<Option<std::time::Instant>>,
    /// The worker slots of this node's claim loop while it runs (`worker::run_workers`).
    workers: Mutex<Option<Arc<Semaphore>>>,
    /// Cancels and interruptions asked of runs not registered here, newest last, at most
    /// [`EARLY_STOPS`]: one committed between a claim's commit and the run's registration
    /// reaches the run when it registers, instead of at its next heartbeat.
    early_stops: Mutex<std::collections::VecDeque<(RunId, Stop)>>,
}

/// Stop requests for unregistered runs remembered (most are for runs executing on other nodes:
/// every node hears every cancel).
const EARLY_STOPS: usize = 256;

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to a thread's live items.
    pub fn subscribe(&self, thread: &ThreadId) -> broadcast::Receiver<Live> {
        Self::lock(&self.threads)
            .entry(thread.clone())
            .or_insert_with(|| broadcast::channel(THREAD_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Publishes to a thread's subscribers, if any (drops the channel when none are left).
    pub fn publish(&self, thread: &ThreadId, item: Live) {
        let mut threads = Self::lock(&self.threads);
        if let Some(sender) = threads.get(thread) {
            if sender.send(item).is_err() {
                threads.remove(thread);
            }
        }
    }

    /// Wakes the workers: there may be runs to claim.
    pub fn wake_workers(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.work.notify_one();
    }

    /// A worker slot was freed (a run ended or paused on this node): wakes the workers only when
    /// runs may be waiting — woken for since the claim loop last found none queued. A run that
    /// ends with nothing waiting (its successor claimed at submission, or none) then costs the
    /// claim loop nothing.
    pub fn worker_freed(&self) {
        if self.runs_may_wait() {
            self.work.notify_one();
        }
    }

    /// Woken for since the claim loop last found no run queued.
    fn runs_may_wait(&self) -> bool {
        self.wakes.load(Ordering::SeqCst) > self.settled.load(Ordering::SeqCst)
    }

    /// The count of wake-ups so far; pass it to [`Hub::settle`] after looking.
    pub(crate) fn wake_count(&self) -> u64 {
        self.wakes.load(Ordering::SeqCst)
    }

    /// The claim loop found no run queued after reading [`Hub::wake_count`] as `seen`: a freed
    /// slot need not wake it until the next `wake_workers`.
    pub(crate) fn settle(&self, seen: u64) {
        self.settled.fetch_max(seen, Ordering::SeqCst);
    }

    /// Completes when `wake_workers` was called (or had been called since the last wait).
    pub async fn work_available(&self) {
        self.work.notified().await;
    }

    /// Asks the workers to start no new runs for at most `longest` (runs in flight go on):
    /// the board scheduler is claiming due slots, and firing them on time comes first. Until
    /// [`Hub::resume_claims`] ends it, a deferral is neither extended nor started again once it
    /// has run out, so workers wait at most `longest` per burst however long the burst lasts.
    pub fn defer_claims(&self, longest: std::time::Duration) {
        let mut deferred = Self::lock(&self.claims_deferred);
        if deferred.is_none() {
            *deferred = Some(std::time::Instant::now() + longest);
        }
    }

    /// Ends a deferral and wakes the claim loop, which may be waiting for its end. (Runs queued
    /// meanwhile were announced by `wake_workers`; ending a deferral queues none, so it does
    /// not count as a wake-up.)
    pub fn resume_claims(&self) {
        if Self::lock(&self.claims_deferred).take().is_some() {
            self.work.notify_one();
        }
    }

    /// When workers may start runs again, while a deferral is under way.
    pub fn claims_deferred_until(&self) -> Option<tokio::time::Instant> {
        let deferred = *Self::lock(&self.claims_deferred);
        deferred
            .filter(|until| *until > std::time::Instant::now())
            .map(tokio::time::Instant::from_std)
    }

    /// Offers (`Some`) or withdraws (`None`: the node is stopping) the workers' slots.
    pub(crate) fn set_workers(&self, slots: Option<Arc<Semaphore>>) {
        *Self::lock(&self.workers) = slots;
    }

    /// Takes a free worker slot without waiting, for a run to start on this node at once (see
    /// `tessera_store::StartHere`); `None` when every worker is busy, no workers run here
    /// (none configured, or stopping), or runs that may be waiting (a burst of scheduled slots,
    /// runs queued while no worker was free) go first.
    pub fn reserve_worker(&self) -> Option<OwnedSemaphorePermit> {
        if self.claims_deferred_until().is_some() || self.runs_may_wait() {
            return None;
        }
        let slots = Self::lock(&self.workers).clone()?;
        slots.try_acquire_owned().ok()
    }

    /// Whether the workers run (they were offered and not withdrawn).
    pub(crate) fn workers_running(&self) -> bool {
        Self::lock(&self.workers).is_some()
    }

    /// Wakes the action scheduler: a pending action was created.
    pub fn wake_scheduler(&self) {
        self.scheduler.notify_one();
    }

    /// Completes when `wake_scheduler` was called (or had been since the last wait).
    pub async fn scheduler_woken(&self) {
        self.scheduler.notified().await;
    }

    /// Registers a run executing on this node; the receiver learns of stop requests, including
    /// a cancel or interruption asked of it shortly before.
    pub fn register_run(&self, run: &RunId) -> watch::Receiver<Stop> {
        let mut runs = Self::lock(&self.runs);
        let early = {
            let mut early = Self::lock(&self.early_stops);
            early
                .iter()
                .rposition(|(r, _)| r == run)
                .and_then(|i| early.remove(i))
                .map(|(_, stop)| stop)
        };
        let (tx, rx) = watch::channel(early.unwrap_or_default());
        runs.insert(run.clone(), tx);
        rx
    }

    pub fn unregister_run(&self, run: &RunId) {
        Self::lock(&self.runs).remove(run);
    }

    /// Asks a run executing on this node to stop. A cancel or interruption of a run not
    /// registered here is remembered for a while, in case the run was just claimed here.
    pub fn stop_run(&self, run: &RunId, stop: Stop) {
        let runs = Self::lock(&self.runs);
        match runs.get(run) {
            Some(tx) => {
                let _ = tx.send(stop);
            }
            None if matches!(stop, Stop::Cancel | Stop::Interrupt) => {
                let mut early = Self::lock(&self.early_stops);
                if early.len() == EARLY_STOPS {
                    early.pop_front();
                }
                early.push_back((run.clone(), stop));
            }
            None => {}
        }
    }

    /// Asks every run executing on this node to stop.
    pub fn stop_all(&self, stop: Stop) {
        for tx in Self::lock(&self.runs).values() {
            let _ = tx.send(stop);
        }
    }

    /// Runs executing on this node.
    pub fn running(&self) -> usize {
        Self::lock(&self.runs).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_to_subscribers_and_forgets_idle_threads() {
        let hub = Hub::new();
        let thread = ThreadId::generate();
        let mut rx = hub.subscribe(&thread);
        hub.publish(&thread, Live::Look);
        assert_eq!(rx.recv().await.unwrap(), Live::Look);
        drop(rx);
        hub.publish(&thread, Live::Look);
        assert!(Hub::lock(&hub.threads).is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_that_never_reads_holds_a_bounded_backlog() {
        let hub = Hub::new();
        let thread = ThreadId::generate();
        let mut rx = hub.subscribe(&thread);
        let published = 10 * THREAD_CHANNEL_CAPACITY;
        for _ in 0..published {
            // Never blocks the publisher (the run), however far behind the reader is.
            hub.publish(&thread, Live::Look);
        }
        // All but the last `capacity` items were overwritten, not kept for the reader.
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                assert_eq!(missed as usize, published - THREAD_CHANNEL_CAPACITY)
            }
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap(), Live::Look);
    }

    #[tokio::test]
    async fn a_claim_deferral_is_bounded_and_not_extended() {
        let hub = Hub::new();
        assert!(hub.claims_deferred_until().is_none());
        hub.defer_claims(std::time::Duration::from_millis(50));
        let until = hub.claims_deferred_until().expect("deferred");
        hub.defer_claims(std::time::Duration::from_secs(60));
        assert_eq!(hub.claims_deferred_until(), Some(until), "not extended");
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(
            hub.claims_deferred_until().is_none(),
            "over after its longest"
        );
        // The same burst cannot start another one.
        hub.defer_claims(std::time::Duration::from_secs(60));
        assert!(hub.claims_deferred_until().is_none(), "not started again");
        hub.resume_claims();
        hub.defer_claims(std::time::Duration::from_secs(60));
        assert!(
            hub.claims_deferred_until().is_some(),
            "the next burst defers"
        );
        hub.resume_claims();
        assert!(hub.claims_deferred_until().is_none());
        // Resuming woke the workers.
        tokio::time::timeout(std::time::Duration::from_secs(1), hub.work_available())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn a_freed_worker_wakes_the_loop_only_while_runs_may_wait() {
        let hub = Hub::new();
        let woken = |hub: &Hub| {
            let hub_wait = hub.work_available();
            futures_ready(hub_wait)
        };
        // Nothing was ever woken for: a freed slot wakes nobody.
        hub.worker_freed();
        assert!(!woken(&hub));
        hub.wake_workers();
        assert!(woken(&hub));
        // Not settled yet: freed slots wake the loop.
        hub.worker_freed();
        assert!(woken(&hub));
        // The loop looked after that wake-up and found nothing queued.
        hub.settle(hub.wake_count());
        hub.worker_freed();
        assert!(!woken(&hub));
        // A wake-up during the look (after `seen` was read) keeps freed slots waking it.
        let seen = hub.wake_count();
        hub.wake_workers();
        assert!(woken(&hub));
        hub.settle(seen);
        hub.worker_freed();
        assert!(woken(&hub));
    }

    /// Whether a wait completes at once (its wake-up was stored), polled once.
    fn futures_ready(fut: impl std::future::Future<Output = ()>) -> bool {
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        fut.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_worker_is_reserved_only_while_one_is_free_and_nothing_goes_first() {
        let hub = Hub::new();
        assert!(hub.reserve_worker().is_none(), "no workers offered");
        hub.set_workers(Some(Arc::new(Semaphore::new(1))));
        hub.wake_workers();
        assert!(hub.reserve_worker().is_none(), "runs may be waiting");
        hub.settle(hub.wake_count());
        let first = hub.reserve_worker().expect("a free worker");
        assert!(hub.reserve_worker().is_none(), "the only worker is taken");
        drop(first);
        hub.defer_claims(std::time::Duration::from_secs(60));
        assert!(
            hub.reserve_worker().is_none(),
            "a burst of slots goes first"
        );
        // A claim that queued nothing (no slot was due after all) holds nothing back.
        hub.resume_claims();
        assert!(hub.reserve_worker().is_some(), "nothing was queued");
        hub.defer_claims(std::time::Duration::from_secs(60));
        // The scheduler queued the burst's runs.
        hub.wake_workers();
        hub.resume_claims();
        assert!(hub.reserve_worker().is_none(), "the woken loop looks first");
        hub.settle(hub.wake_count());
        assert!(hub.reserve_worker().is_some());
        hub.set_workers(None);
        assert!(hub.reserve_worker().is_none(), "stopping");
    }

    #[tokio::test]
    async fn a_stop_asked_just_before_a_run_registers_reaches_it() {
        let hub = Hub::new();
        let run = RunId::generate();
        hub.stop_run(&run, Stop::Interrupt);
        // Releases and abandons concern runs executing here only.
        hub.stop_run(&RunId::generate(), Stop::Release);
        assert_eq!(Hub::lock(&hub.early_stops).len(), 1);
        let rx = hub.register_run(&run);
        assert_eq!(*rx.borrow(), Stop::Interrupt);
        assert!(Hub::lock(&hub.early_stops).is_empty(), "used once");
        // Bounded: the oldest are forgotten.
        let first = RunId::generate();
        hub.stop_run(&first, Stop::Cancel);
        for _ in 0..EARLY_STOPS {
            hub.stop_run(&RunId::generate(), Stop::Cancel);
        }
        assert_eq!(Hub::lock(&hub.early_stops).len(), EARLY_STOPS);
        assert_eq!(*hub.register_run(&first).borrow(), Stop::Continue);
    }

    #[tokio::test]
    async fn stop_requests_reach_registered_runs() {
        let hub = Hub::new();
        let run = RunId::generate();
        let mut rx = hub.register_run(&run);
        hub.stop_run(&run, Stop::Interrupt);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Stop::Interrupt);
        hub.unregister_run(&run);
        hub.stop_run(&run, Stop::Cancel);
        assert_eq!(hub.running(), 0);
    }
}
