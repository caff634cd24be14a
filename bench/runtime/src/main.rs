//! `bench-runtime`: how many agent turns per second one Tessera node sustains, and how much time
//! each turn spends in the runtime rather than in the model.
//!
//! A benchmark program, not a test (see `/work/shared/STYLE.md`): it prints figures and whether
//! the targets were met, and fails only when something broke (a run that did not complete, a
//! server that would not start).
//!
//! # What it does
//!
//! For each backend asked for, it starts a real [`tessera_server::Application`] in-process on
//! `127.0.0.1:0` over a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a
//! fresh schema, dropped at the end), with a zero-latency fake model configured as a provider:
//!
//! - `--model scripted` (default): `ScriptedModelServer::echo()`, a local OpenAI-compatible HTTP
//!   server in the same process that streams the last user message back in two chunks, so each
//!   turn makes a real streamed HTTP request through the runtime's `openai` provider;
//! - `--model echo`: the built-in offline `echo` provider (no HTTP at all).
//!
//! Before the server starts it times small write transactions on scratch tables next to the
//! benchmark database (the *storage floor*, see `probe`); it times them again while the throughput
//! phase runs. Then it creates an agent, an actor and a project through the SDK, and runs, in
//! order:
//!
//! 1. **warm-up**: one thread × M turns, not measured; its model requests are recorded;
//! 2. **calibration** (scripted model only): each recorded model request body is replayed
//!    directly to the fake model server `--calibration-samples` times; the median duration per
//!    turn position is the *model time* of a turn at that position (see below);
//! 3. **latency phase** (unloaded): `--latency-turns` turns, one at a time, on threads of M turns
//!    each, so that nothing queues and the figures show the runtime's own cost per turn;
//! 4. **throughput phase**: N threads × M turns, all threads concurrently; this gives turns/s.
//!
//! A *turn* is: send a message with `executeAgentThreadAsync` (SDK `send_message`), then wait on
//! the thread's Server-Sent Events stream for the `run.status` event carrying that run's id and a
//! terminal status. Each thread keeps one stream open for all its turns.
//!
//! # How the figures are computed
//!
//! - **turns/s** = turns completed in the throughput phase ÷ its wall time (from the moment all
//!   streams are open and the first message is sent, to the last `completed` event seen).
//! - **end-to-end latency** of a turn = from just before the SDK sends the message to the moment
//!   the client reads the run's `run.status` `completed` event.
//! - **model time** of a turn: the fake model server does not record how long it took to
//!   answer, and the benchmark may not change the runtime's crates, so it is measured apart: the
//!   request bodies the runtime actually sent during the warm-up (turn position k of a thread has
//!   the same body size in every thread) are replayed to the same fake model server with a
//!   keep-alive HTTP client, reading each streamed answer to its end; the median over the
//!   samples is the model time for position k. With `--model echo` the model time is zero.
//! - **runtime overhead** of a turn = end-to-end latency − model time of its position (floored
//!   at zero). It therefore includes the API request, every store transaction, the worker
//!   wake-up and claim, building the model request and parsing the model's stream, event fan-out
//!   to the SSE stream and the client's own reading — and, in the throughput phase, the time the
//!   turn waited behind other turns (queueing: with N turns in flight at R turns/s, Little's law
//!   puts the mean latency near N ÷ R whatever the per-turn cost).
//!
//! - **process CPU / context switches per turn** come from `/proc/self` over the phase (the
//!   client, server, runtime, fake model and SQLite all live in this process; PostgreSQL's
//!   server processes do not), and **machine CPU busy** from `/proc/stat` (every process): a
//!   phase that leaves the cores idle is limited by something that serialises, not by CPU.
//!
//! Percentiles are nearest-rank over the completed turns. Runs that did not complete (failed,
//! cancelled, timed out, or a request error) count as errors, and any error makes the program
//! exit non-zero after printing the figures.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

mod bench;
mod cpu;
mod drive;
mod model;
mod probe;
mod report;
mod server;
mod stats;

/// The PostgreSQL server used when neither `--postgres-url` nor `TESSERA_TEST_POSTGRES_URL` names
/// one.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const POSTGRES_ENV: &str = "TESSERA_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

/// The database a benchmark run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// The fake model behind the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelChoice {
    /// `ScriptedModelServer::echo()`: a zero-latency OpenAI-compatible server, over real HTTP.
    Scripted,
    /// The built-in offline `echo` provider: no HTTP.
    Echo,
}

/// SQLite's `synchronous` setting (`Config.database.sqlite_synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// Every commit survives power loss (the server's default).
    Full,
    /// Commits survive a process crash, not necessarily power loss.
    Normal,
}

/// N concurrent threads × M turns against a zero-latency fake model; prints turns/s and the
/// per-turn runtime overhead (time not spent in the model).
#[derive(Debug, Clone, Parser)]
#[command(name = "bench-runtime", version)]
pub struct Args {
    /// Threads driven concurrently in the throughput phase (N).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub threads: u32,
    /// Turns per thread (M).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub turns: u32,
    #[arg(long, value_enum, default_value_t = BackendChoice::Sqlite)]
    backend: BackendChoice,
    /// PostgreSQL server (a fresh schema is created in it and dropped at the end). Default:
    /// `TESSERA_TEST_POSTGRES_URL`, else postgres://postgres@127.0.0.1:5432/test.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Runs the node executes concurrently (`runtime.workers`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    #[arg(long, value_enum, default_value_t = ModelChoice::Scripted)]
    pub model: ModelChoice,
    /// SQLite durability (`database.sqlite_synchronous`). Report figures with `full`, the
    /// server's default; `normal` is for comparison only.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,
    /// Connections per database pool (`database.max_connections`, the server's default is 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_connections: u32,
    /// SQLite: leave the writer's two threads wherever the system puts them instead of on one
    /// CPU (`database.sqlite_pin_writer = false`), for a side-by-side comparison.
    #[arg(long)]
    pub no_pin_writer: bool,
    /// Turns in the unloaded latency phase (run one at a time, on threads of M turns); 0 skips it.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub latency_turns: u32,
    /// Direct requests per turn position when calibrating the model time.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub calibration_samples: u32,
    /// A turn that has not completed after this many seconds counts as an error.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub turn_timeout_secs: u64,
}

impl Args {
    fn backends(&self) -> Vec<Backend> {
        match self.backend {
            BackendChoice::Sqlite => vec![Backend::Sqlite],
            BackendChoice::Postgres => vec![Backend::Postgres],
            BackendChoice::Both => vec![Backend::Sqlite, Backend::Postgres],
        }
    }

    fn postgres_url(&self) -> String {
        self.postgres_url
            .clone()
            .or_else(|| std::env::var(POSTGRES_ENV).ok())
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
    }
}

/// The allocator the `tessera` binary uses, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // Only warnings and errors, so that a problem in the server shows without per-run logging
    // costing anything.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench-runtime: cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-runtime: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every backend asked for and prints the report; `Ok(false)` when some turn failed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let postgres_url = args.postgres_url();
    report::print_setup(&args, &postgres_url);
    let mut reports = Vec::new();
    for backend in args.backends() {
        eprintln!("== {}", backend.name());
        let report = bench::run_backend(&args, backend, &postgres_url).await?;
        reports.push(report);
    }
    report::print_results(&args, &reports);
    Ok(reports.iter().all(|r| r.errors() == 0))
}
