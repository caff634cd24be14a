//! This process's CPU time and context switches, from Linux's `/proc` (absent elsewhere).
//!
//! The whole stack (the SDK client, the server, the runtime, the fake model, SQLite) runs in
//! this process, so CPU per turn is what bounds turns/s on a machine with few cores. PostgreSQL's
//! own CPU is in its server processes and not counted here.

use std::time::Duration;

/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`), 100 on every mainstream Linux.
const USER_HZ: u64 = 100;

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    /// Voluntary context switches of the threads alive at the time of reading.
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

impl Usage {
    /// Reads the counters; `None` where `/proc` is not available.
    pub fn now() -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let after_comm = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
        // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the command.
        let (utime, stime) = (ticks(11)?, ticks(12)?);
        let mut usage = Usage {
            user: Duration::from_millis(utime * 1_000 / USER_HZ),
            system: Duration::from_millis(stime * 1_000 / USER_HZ),
            ..Usage::default()
        };
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            for line in status.lines() {
                if let Some(n) = line.strip_prefix("voluntary_ctxt_switches:") {
                    usage.voluntary_switches += n.trim().parse::<u64>().unwrap_or(0);
                } else if let Some(n) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                    usage.involuntary_switches += n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        Some(usage)
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }
}

/// The whole machine's CPU counters (`/proc/stat`, all cores), in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    busy: u64,
    total: u64,
}

impl Machine {
    pub fn now() -> Option<Machine> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
        Some(Machine {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    /// Share of all cores' time that was busy (any process) between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &Machine) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// The 1-minute load average, to tell a busy machine from a slow program.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
