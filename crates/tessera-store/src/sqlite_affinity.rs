//! Keeps the SQLite writer's two threads on one CPU.
//!
//! A write transaction is a conversation between two threads: the writer thread, which runs the
//! transaction's code (`SqliteStore::offload`), and sqlx's thread of the writer connection, which
//! runs each statement. Every statement hands control from one to the other and back, and the
//! single writer is held meanwhile. When the two threads sit on different CPUs, each hand-off
//! wakes a thread on the other CPU (an inter-processor interrupt, dear on virtual machines), and
//! the hand-offs, not SQLite, were most of the writer's time. On one CPU a hand-off is a switch
//! between two threads of that CPU, and the writer commits more per second (figures in
//! `ARCHITECTURE.md`). The other threads (HTTP, readers, workers) keep every CPU.
//!
//! Best effort: where the threads cannot be pinned (another OS, a refused call, a single CPU)
//! nothing changes but speed.

/// The CPU for the writer's threads: the last one the calling thread may run on, when it may run
/// on more than one (with one, there is nothing to choose).
#[cfg(target_os = "linux")]
pub(crate) fn writer_cpu() -> Option<usize> {
    let cpus = allowed_cpus();
    if cpus.len() > 1 {
        cpus.last().copied()
    } else {
        None
    }
}

/// The CPUs the calling thread may run on.
#[cfg(target_os = "linux")]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Keeps the calling thread on `cpu`; `false` when the system refused.
#[cfg(target_os = "linux")]
pub(crate) fn pin_current_thread(cpu: usize) -> bool {
    use rustix::thread::{sched_setaffinity, CpuSet};
    if cpu >= CpuSet::MAX_CPU {
        return false;
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).is_ok()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn writer_cpu() -> Option<usize> {
    None
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pin_current_thread(_cpu: usize) -> bool {
    false
}

/// Runs `probe` on the thread of `conn` (sqlx runs each SQLite connection on a thread of its
/// own): as SQLite's progress handler, while a trivial statement executes there.
pub(crate) async fn on_connection_thread<T: Send + 'static>(
    conn: &mut sqlx::SqliteConnection,
    probe: impl FnOnce() -> T + Send + 'static,
) -> Result<Option<T>, sqlx::Error> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new((Some(probe), None)));
    let handler = std::sync::Arc::clone(&slot);
    conn.lock_handle().await?.set_progress_handler(1, move || {
        let mut slot = handler.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(probe) = slot.0.take() {
            slot.1 = Some(probe());
        }
        true
    });
    let ran = sqlx::query("SELECT 1").execute(&mut *conn).await;
    conn.lock_handle().await?.remove_progress_handler();
    ran?;
    let result = slot.lock().unwrap_or_else(|p| p.into_inner()).1.take();
    Ok(result)
}
