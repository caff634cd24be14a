//! The printed report: the setup, one table per phase with a column per backend, the targets.

use crate::bench::{BackendReport, Phase};
use crate::stats::ms;
use crate::{Args, Backend, ModelChoice, Synchronous};

/// The targets for this machine (SQLite).
const TARGET_TURNS_PER_SECOND: f64 = 1_000.0;
const TARGET_P50_OVERHEAD_MS: f64 = 2.0;

/// Width of the label column.
const LABEL: usize = 34;
/// Width of a figure column.
const COLUMN: usize = 22;

pub fn print_setup(args: &Args, postgres_url: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("bench-runtime {}", env!("CARGO_PKG_VERSION"));
    println!(
        "  load:      {} threads x {} turns (throughput phase), {} turns one at a time (latency phase)",
        args.threads, args.turns, args.latency_turns
    );
    println!(
        "  server:    in-process, runtime.workers = {}, database.max_connections = {}, {cpus} CPUs",
        args.workers, args.db_connections
    );
    println!(
        "  model:     {}",
        match args.model {
            ModelChoice::Scripted =>
                "scripted (ScriptedModelServer::echo(): no scripted delay, answer streamed over local HTTP)",
            ModelChoice::Echo => "echo (built-in offline provider, no HTTP)",
        }
    );
    println!(
        "  SQLite:    synchronous = {}",
        synchronous_name(args.sqlite_synchronous)
    );
    println!(
        "  PostgreSQL: {} (fresh schema, dropped at the end)",
        tessera_server::redact_url(postgres_url)
    );
    println!();
}

fn synchronous_name(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Full => "full",
        Synchronous::Normal => "normal (NOT the default: commits may be lost on power loss)",
    }
}

fn column_title(args: &Args, backend: Backend) -> String {
    match (backend, args.sqlite_synchronous) {
        (Backend::Sqlite, Synchronous::Full) => "SQLite (sync=full)".to_owned(),
        (Backend::Sqlite, Synchronous::Normal) => "SQLite (sync=NORMAL)".to_owned(),
        (Backend::Postgres, _) => "PostgreSQL".to_owned(),
    }
}

fn row(label: &str, cells: &[String]) {
    let mut line = format!("{label:<LABEL$}");
    for cell in cells {
        line.push_str(&format!("{cell:>COLUMN$}"));
    }
    println!("{}", line.trim_end());
}

fn phase_table(title: &str, args: &Args, phases: &[(Backend, &Phase)]) {
    println!("{title}");
    let titles: Vec<String> = phases.iter().map(|(b, _)| column_title(args, *b)).collect();
    row("", &titles);
    let cells = |f: &dyn Fn(&Phase) -> String| -> Vec<String> {
        phases.iter().map(|(_, p)| f(p)).collect()
    };
    row("turns completed", &cells(&|p| p.completed.to_string()));
    row(
        "errors (runs not completed)",
        &cells(&|p| p.errors.to_string()),
    );
    row(
        "wall time (s)",
        &cells(&|p| format!("{:.2}", p.wall.as_secs_f64())),
    );
    row(
        "turns/s",
        &cells(&|p| format!("{:.0}", p.turns_per_second())),
    );
    row("end-to-end p50 (ms)", &cells(&|p| ms(p.e2e.p50)));
    row("end-to-end p99 (ms)", &cells(&|p| ms(p.e2e.p99)));
    row("end-to-end max (ms)", &cells(&|p| ms(p.e2e.max)));
    row(
        "model time p50 (ms, calibrated)",
        &cells(&|p| ms(p.model.p50)),
    );
    row("runtime overhead p50 (ms)", &cells(&|p| ms(p.overhead.p50)));
    row("runtime overhead p99 (ms)", &cells(&|p| ms(p.overhead.p99)));
    row(
        "runtime overhead mean (ms)",
        &cells(&|p| ms(p.overhead.mean)),
    );
    row(
        "process CPU per turn (ms)",
        &cells(&|p| p.cpu_per_turn().map_or("n/a".to_owned(), ms)),
    );
    row(
        "context switches per turn",
        &cells(&|p| {
            p.switches_per_turn()
                .map_or("n/a".to_owned(), |n| format!("{n:.0}"))
        }),
    );
    row(
        "machine CPU busy (all cores, all)",
        &cells(&|p| {
            p.machine_busy
                .map_or("n/a".to_owned(), |b| format!("{:.0}%", b * 100.0))
        }),
    );
    row(
        "machine load average (1 min)",
        &cells(&|p| {
            p.load_average
                .map_or("n/a".to_owned(), |l| format!("{l:.2}"))
        }),
    );
    row("  where the time went (p50 / mean ms):", &[]);
    let split = |d: &crate::stats::Distribution| format!("{} / {}", ms(d.p50), ms(d.mean));
    row(
        "  send -> 202 accepted",
        &cells(&|p| split(&p.breakdown.accept)),
    );
    row(
        "  202 -> `running` seen",
        &cells(&|p| split(&p.breakdown.claim)),
    );
    row(
        "  `running` -> first delta seen",
        &cells(&|p| split(&p.breakdown.first_delta)),
    );
    row(
        "  first delta -> reply stored, seen",
        &cells(&|p| split(&p.breakdown.reply)),
    );
    row(
        "  reply seen -> `completed` seen",
        &cells(&|p| split(&p.breakdown.finish)),
    );
    if phases.iter().any(|(_, p)| p.reconnects > 0) {
        row("stream reconnects", &cells(&|p| p.reconnects.to_string()));
    }
    println!();
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "NOT met" }.to_owned()
}

pub fn print_results(args: &Args, reports: &[BackendReport]) {
    let throughput: Vec<(Backend, &Phase)> =
        reports.iter().map(|r| (r.backend, &r.throughput)).collect();
    phase_table(
        &format!(
            "Throughput phase: {} threads x {} turns, all threads at once",
            args.threads, args.turns
        ),
        args,
        &throughput,
    );
    let latency: Vec<(Backend, &Phase)> = reports
        .iter()
        .filter_map(|r| r.latency.as_ref().map(|p| (r.backend, p)))
        .collect();
    if !latency.is_empty() {
        phase_table(
            &format!(
                "Latency phase: {} turns one at a time (threads of {} turns), nothing queued",
                args.latency_turns, args.turns
            ),
            args,
            &latency,
        );
    }

    println!(
        "Storage floor (scratch tables next to the benchmark database, same durability settings)"
    );
    let titles: Vec<String> = reports
        .iter()
        .map(|r| column_title(args, r.backend))
        .collect();
    row("", &titles);
    for (label, pick) in [
        ("1-statement write tx p50 (ms)", 1),
        ("1-statement write tx p99 (ms)", 2),
        ("4-statement write tx p50 (ms)", 3),
        ("4-statement write tx p99 (ms)", 4),
        ("  same, during throughput p50 (ms)", 5),
        ("  same, during throughput p99 (ms)", 6),
    ] {
        let cells: Vec<String> = reports
            .iter()
            .map(|r| {
                ms(match pick {
                    1 => r.floor.one_statement.p50,
                    2 => r.floor.one_statement.p99,
                    3 => r.floor.four_statements.p50,
                    4 => r.floor.four_statements.p99,
                    5 => r.loaded_transaction.p50,
                    _ => r.loaded_transaction.p99,
                })
            })
            .collect();
        row(label, &cells);
    }
    println!();

    println!("Targets (the issue states them for SQLite; PostgreSQL shown for comparison)");
    row("", &titles);
    row(
        "turns/s >= 1000 (throughput)",
        &reports
            .iter()
            .map(|r| verdict(r.throughput.turns_per_second() >= TARGET_TURNS_PER_SECOND))
            .collect::<Vec<_>>(),
    );
    let p50_met = |p: &Phase| p.overhead.p50.as_secs_f64() * 1_000.0 <= TARGET_P50_OVERHEAD_MS;
    if !latency.is_empty() {
        row(
            "overhead p50 <= 2 ms (latency)",
            &reports
                .iter()
                .map(|r| {
                    r.latency
                        .as_ref()
                        .map_or("-".to_owned(), |p| verdict(p50_met(p)))
                })
                .collect::<Vec<_>>(),
        );
    }
    row(
        "overhead p50 <= 2 ms (throughput)",
        &reports
            .iter()
            .map(|r| verdict(p50_met(&r.throughput)))
            .collect::<Vec<_>>(),
    );
    println!();

    for r in reports {
        if args.model == ModelChoice::Echo {
            println!(
                "{}: model time is zero (built-in echo provider, no HTTP)",
                r.backend.name()
            );
        } else if let Some(first) = r.model.per_position.first() {
            let last = r.model.at(r.model.per_position.len().saturating_sub(1));
            let bytes_first = r.model.body_bytes.first().copied().unwrap_or(0);
            let bytes_last = r.model.body_bytes.last().copied().unwrap_or(0);
            println!(
                "{}: calibrated model time {} ms (turn 1, {} B request) .. {} ms (turn {}, {} B request)",
                r.backend.name(),
                ms(*first),
                bytes_first,
                ms(last),
                r.model.per_position.len(),
                bytes_last,
            );
        }
        for (name, phase) in [
            ("throughput", Some(&r.throughput)),
            ("latency", r.latency.as_ref()),
        ] {
            if let Some(error) = phase.and_then(|p| p.first_error.as_ref()) {
                println!("{} {name} phase, first error: {error}", r.backend.name());
            }
        }
    }
    println!();
    println!("How the figures are computed:");
    println!("  end-to-end = from just before the SDK sends executeAgentThreadAsync to the client reading");
    println!(
        "               the run's `run.status` = completed event on the thread's open SSE stream."
    );
    println!("  model time = median duration of the same request body (same turn position) sent directly");
    println!(
        "               to the fake model server before the run, streamed answer read to its end"
    );
    println!("               (zero for --model echo).");
    println!(
        "  overhead   = end-to-end - model time (floored at 0): API, store transactions, worker"
    );
    println!(
        "               claim, provider client, event fan-out, SSE delivery, and in the throughput"
    );
    println!("               phase also the wait behind other turns (mean ~ threads / turns-per-second).");
    println!("  turns/s    = completed turns of the throughput phase / its wall time.");
}
