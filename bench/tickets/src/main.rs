//! `bench-tickets`: how many session tickets one Tessera node mints per second, and how many
//! mint + exchange pairs, with their latency, at a given number of concurrent clients.
//!
//! A benchmark program, not a test: it prints figures and whether the targets were met, and
//! fails only when something broke (requests that errored, a server that would not start).
//!
//! For each backend it starts a real `tessera_server::Application` in this process on
//! `127.0.0.1:0` over a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a
//! fresh schema, dropped at the end), creates one `echo` agent through the SDK, and runs:
//!
//! 1. **warm-up**: `--warmup-seconds` of mints by all clients, not measured;
//! 2. **mint**: `--clients` tasks, each minting tickets back to back through the SDK
//!    (`createBackendSessionTicket`, secret key) for `--seconds`;
//! 3. **mint + exchange**: the same, each iteration minting a ticket and exchanging it
//!    (`exchangeSessionTicket`) as a fresh browser (no cookie), which creates a browser session,
//!    an anonymous actor and the agent session: the full cost of one "open a chat link".
//!
//! 4. **at the target rates**: phases 2 and 3 again, with the clients together *offering* a fixed
//!    rate (`--mint-rate`, `--pair-rate`; the targets by default) instead of going flat
//!    out: client `i`'s `k`-th operation is due at `start + (k·clients + i) ÷ rate`.
//!
//! Throughput = operations completed ÷ the phase's wall time; latency = per operation (per pair
//! for the pair phases), to the parsed answer from just before the SDK sends (phases 2 and 3) or
//! from when the operation was due (phase 4, so that a server falling behind its schedule shows
//! the whole delay, and tokio's 1 ms timer granularity counts against it); percentiles
//! nearest-rank.
//!
//! Why both: with every client sending its next operation as soon as the previous one answered,
//! the number in flight is always `--clients`, so by Little's law the mean latency is `clients ÷
//! throughput` whatever the server does: 64 clients at 2,000 pairs/s wait 32 ms on average. That
//! phase measures how much the server can do. Phase 4 measures how fast it answers while doing
//! the target amount.
//!
//! Client and server share this process and the machine's cores, as on a one-node deployment
//! with a co-located load generator; the load average is printed before and after.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sqlx::Connection as _;
use tessera_client::models::{CreateAgentRequest, CreateSessionTicketRequest, ModelConfig};
use tessera_client::Client;
use tessera_server::config::{DatabaseConfig, SqliteSynchronous};
use tessera_server::{Application, Config, Secret};
use tokio::sync::oneshot;

const POSTGRES_ENV: &str = "TESSERA_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Targets of issue 5 (SQLite, 64 clients, this 2-core machine).
const TARGET_MINTS: f64 = 5_000.0;
const TARGET_PAIRS: f64 = 2_000.0;
const TARGET_P99_MS: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Parser)]
#[command(about = "Session tickets: mints/s and mint+exchange pairs/s with latency")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendArg,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// PostgreSQL server (default: $TESSERA_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    postgres_url: Option<String>,
    /// SQLite durability (`full`, the server default, or `normal`).
    #[arg(long, value_enum, default_value = "full")]
    sqlite_synchronous: Synchronous,
    /// Connections per database pool (the server default is 10).
    #[arg(long, default_value_t = 10)]
    db_connections: u32,
    /// Mints per second all clients together offer in the paced mint phase (0 skips it).
    #[arg(long, default_value_t = TARGET_MINTS)]
    mint_rate: f64,
    /// Pairs per second all clients together offer in the paced pair phase (0 skips it).
    #[arg(long, default_value_t = TARGET_PAIRS)]
    pair_rate: f64,
    /// Before the SQLite phases, time this many seconds of the disk alone: 40 KiB written and
    /// synced, over and over, in the system's temporary directory, where the benchmark's
    /// database also goes (0 skips it).
    #[arg(long, default_value_t = 5)]
    disk_probe_seconds: u64,
    /// Also print each phase as a timeline: operations, p50, p99 and max latency per this many
    /// milliseconds of start times (a paced operation's due time; 0: no timeline), to tell
    /// steady queueing from stalls.
    /// Failed operations are left out of it (the table counts them as errors).
    #[arg(long, default_value_t = 0)]
    timeline_ms: u64,
    /// SQLite: leave the writer's two threads wherever the system puts them instead of on one
    /// CPU (`database.sqlite_pin_writer = false`), for a side-by-side comparison.
    #[arg(long)]
    no_pin_writer: bool,
}

/// Latencies of one phase and its wall time.
struct Phase {
    latencies_us: Vec<u64>,
    /// When each operation of `latencies_us` was due (paced) or sent (flat out), from the start
    /// of the phase.
    due_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
    /// CPU time (user + system) this whole process used during the phase.
    cpu: Option<Duration>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.latencies_us.len() as f64 / self.wall.as_secs_f64()
    }

    /// Process CPU time per completed operation: less sensitive to other processes on the
    /// machine than ops/s, since it counts only this process's work.
    fn cpu_per_op_us(&self) -> f64 {
        match self.cpu {
            Some(cpu) if !self.latencies_us.is_empty() => {
                cpu.as_secs_f64() * 1e6 / self.latencies_us.len() as f64
            }
            _ => f64::NAN,
        }
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&sorted(self.latencies_us.clone()), p)
    }

    /// The phase in windows of `window` by due time: (window start, operations, p50, p99, max).
    fn timeline(&self, window: Duration) -> Vec<(Duration, usize, f64, f64, f64)> {
        let width = window.as_micros().max(1) as u64;
        let mut windows: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for (&due, &latency) in self.due_us.iter().zip(&self.latencies_us) {
            windows.entry(due / width).or_default().push(latency);
        }
        windows
            .into_iter()
            .map(|(k, latencies)| {
                let latencies = sorted(latencies);
                (
                    Duration::from_micros(k * width),
                    latencies.len(),
                    percentile_ms(&latencies, 50.0),
                    percentile_ms(&latencies, 99.0),
                    percentile_ms(&latencies, 100.0),
                )
            })
            .collect()
    }
}

/// `latencies` in ascending order.
fn sorted(mut latencies: Vec<u64>) -> Vec<u64> {
    latencies.sort_unstable();
    latencies
}

/// The `p`th percentile of `latencies_us` (in ascending order), in milliseconds (NaN when
/// empty).
fn percentile_ms(latencies_us: &[u64], p: f64) -> f64 {
    if latencies_us.is_empty() {
        return f64::NAN;
    }
    // Nearest rank, in integers (thousandths of a percent): `ceil(p / 100 * n)` in floating
    // point lands one rank too high for p = 99.9 and n a multiple of 1,000.
    let thousandths = (p * 1000.0).round() as usize;
    let rank = (thousandths * latencies_us.len()).div_ceil(100_000);
    latencies_us[rank.clamp(1, latencies_us.len()) - 1] as f64 / 1000.0
}

/// CPU time (user + system) this process used so far, from `/proc/self/stat` (clock ticks of
/// `USER_HZ` = 100 per second on mainstream Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // utime and stime are fields 14 and 15, the 12th and 13th after the command name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn ticket_request(agent: &str) -> CreateSessionTicketRequest {
    CreateSessionTicketRequest {
        ticket_type: "agent_access".into(),
        agent_ids: Some(vec![agent.to_owned()]),
        context_group: Some("bench:tickets".into()),
        expires_in: Some(300),
        ..Default::default()
    }
}

/// How the clients of a phase send (see the module documentation).
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Each client sends its next operation as soon as the previous one answered.
    FlatOut,
    /// The clients together offer this many operations per second on a fixed schedule.
    Paced(f64),
}

/// Runs `clients` loops of `op` for `duration`. Paced, every operation due before the end of
/// `duration` is sent, however late: a server that falls behind makes the phase last longer
/// (its throughput, over the whole wall time, then shows the rate it did serve).
async fn run_phase<F, Fut>(clients: usize, duration: Duration, load: Load, op: F) -> Phase
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut due = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            for k in 0u64.. {
                let began = match load {
                    Load::FlatOut => Instant::now(),
                    Load::Paced(rate) => {
                        let slot = k as f64 * clients as f64 + client as f64;
                        start + Duration::from_secs_f64(slot / rate)
                    }
                };
                if began >= deadline {
                    break;
                }
                if let Load::Paced(_) = load {
                    tokio::time::sleep_until(began.into()).await;
                }
                match op().await {
                    Ok(()) => {
                        latencies.push(began.elapsed().as_micros() as u64);
                        due.push(began.duration_since(start).as_micros() as u64);
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
            (latencies, due, errors, first_error)
        }));
    }
    let mut phase = Phase {
        latencies_us: Vec::new(),
        due_us: Vec::new(),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
        cpu: None,
    };
    for task in tasks {
        match task.await {
            Ok((latencies, due, errors, first)) => {
                phase.latencies_us.extend(latencies);
                phase.due_us.extend(due);
                phase.errors += errors;
                if phase.first_error.is_none() {
                    phase.first_error = first;
                }
            }
            Err(err) => {
                phase.errors += 1;
                phase.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    phase.wall = start.elapsed();
    phase.cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    phase
}

enum Database {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin: String,
        schema: String,
    },
}

impl Database {
    async fn create(postgres: Option<&str>) -> anyhow::Result<Self> {
        let Some(admin) = postgres else {
            let dir = tempfile::Builder::new()
                .prefix("bench-tickets-")
                .tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
            return Ok(Database::Sqlite { url, _dir: dir });
        };
        let schema = format!("bench_tickets_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| format!("cannot connect to {}", tessera_server::redact_url(admin)))?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let sep = if admin.contains('?') { '&' } else { '?' };
        Ok(Database::Postgres {
            url: format!("{admin}{sep}options=-c%20search_path%3D{schema}"),
            admin: admin.to_owned(),
            schema,
        })
    }

    fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. } | Database::Postgres { url, .. } => url,
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        if let Database::Postgres { admin, schema, .. } = &self {
            let mut conn = sqlx::PgConnection::connect(admin).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await?;
            let _ = conn.close().await;
        }
        Ok(())
    }
}

struct Report {
    backend: &'static str,
    mint: Phase,
    pairs: Phase,
    /// The paced phases, unless skipped.
    mint_paced: Option<Phase>,
    pairs_paced: Option<Phase>,
}

/// Runs `op` paced at `rate` for `--seconds`; `None` (skipped) when `rate` is 0.
async fn paced_phase<F, Fut>(
    args: &Args,
    backend: &str,
    what: &str,
    rate: f64,
    op: F,
) -> Option<Phase>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    if rate <= 0.0 {
        return None;
    }
    println!(
        "  {backend}: {what} offered at {rate:.0}/s (load average {})",
        load_average()
    );
    let seconds = Duration::from_secs(args.seconds);
    Some(run_phase(args.clients, seconds, Load::Paced(rate), op).await)
}

async fn bench_backend(
    args: &Args,
    backend: &'static str,
    postgres: Option<&str>,
) -> anyhow::Result<Report> {
    let db = Database::create(postgres).await?;
    let config = Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: db.url().to_owned(),
        database: DatabaseConfig {
            max_connections: args.db_connections,
            sqlite_pin_writer: !args.no_pin_writer,
            sqlite_synchronous: match args.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            },
            ..DatabaseConfig::default()
        },
        // No key file next to the database; no generated admin password to hash and print.
        secrets_key: Some(Secret::new(
            tessera_domain::token::SecretsKey::generate().to_hex(),
        )),
        bootstrap_admin_password: Some(Secret::new("bench-tickets admin password")),
        log_level: "warn".to_owned(),
        shutdown_timeout_seconds: 5,
        ..Config::default()
    };
    let app = Application::build(config)
        .await
        .context("the server does not start")?;
    let key = app
        .bootstrapped()
        .and_then(|b| b.secret_key.as_ref())
        .map(|k| k.expose().to_owned())
        .context("a fresh database gives a bootstrap key")?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = Client::new(base.clone(), key);
    let agent = client
        .ai()
        .agents()
        .create_agent(CreateAgentRequest {
            name: "Bench".into(),
            model: Some(ModelConfig {
                provider: "echo".into(),
                model: "echo".into(),
                temperature: None,
                max_output_tokens: None,
            }),
            ..Default::default()
        })
        .send()
        .await?
        .id;

    let mint = {
        let (client, agent) = (client.clone(), agent.clone());
        move || {
            let (client, agent) = (client.clone(), agent.clone());
            async move {
                client
                    .session_tickets()
                    .create_backend_session_ticket(ticket_request(&agent))
                    .send()
                    .await?;
                Ok(())
            }
        }
    };
    let seconds = Duration::from_secs(args.seconds);
    run_phase(
        args.clients,
        Duration::from_secs(args.warmup_seconds),
        Load::FlatOut,
        mint.clone(),
    )
    .await;
    println!("  {backend}: mint phase (load average {})", load_average());
    let mint_phase = run_phase(args.clients, seconds, Load::FlatOut, mint.clone()).await;

    let browser = Client::unauthenticated(base);
    let pair = {
        let (client, agent) = (client.clone(), agent.clone());
        move || {
            let (client, browser, agent) = (client.clone(), browser.clone(), agent.clone());
            async move {
                let ticket = client
                    .session_tickets()
                    .create_backend_session_ticket(ticket_request(&agent))
                    .send()
                    .await?;
                let exchanged = browser
                    .session_tickets()
                    .exchange(ticket.ticket)
                    .send()
                    .await?;
                anyhow::ensure!(exchanged.session_token.is_some(), "no session token");
                Ok(())
            }
        }
    };
    println!(
        "  {backend}: mint+exchange phase (load average {})",
        load_average()
    );
    let pair_phase = run_phase(args.clients, seconds, Load::FlatOut, pair.clone()).await;
    let mint_paced = paced_phase(args, backend, "mints", args.mint_rate, mint).await;
    let pairs_paced = paced_phase(args, backend, "pairs", args.pair_rate, pair).await;
    println!("  {backend}: done (load average {})", load_average());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .context("the server did not stop")?
        .context("the server task panicked")??;
    db.remove().await?;
    Ok(Report {
        backend,
        mint: mint_phase,
        pairs: pair_phase,
        mint_paced,
        pairs_paced,
    })
}

/// The allocator the `tessera` binary uses, so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bench-tickets failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Syncs slower than this in the disk probe are counted: one such sync stalls every commit
/// behind it, so one inside a paced phase can decide its p99.
const SLOW_SYNC_MS: f64 = 20.0;

/// The disk alone, as a commit sees it: 40 KiB (ten 4 KiB pages) written then synced, over and
/// over for `seconds`, in a scratch file in the system's temporary directory (where the
/// benchmark's database goes). Returns the sync latencies in microseconds.
fn disk_probe(seconds: u64) -> anyhow::Result<Vec<u64>> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = tempfile::Builder::new()
        .prefix("bench-tickets-disk-")
        .tempfile()?;
    let block = vec![0x5a_u8; 40 * 1024];
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut offset = 0u64;
    while Instant::now() < end {
        let began = Instant::now();
        file.as_file_mut().seek(SeekFrom::Start(offset))?;
        file.as_file_mut().write_all(&block)?;
        file.as_file().sync_all()?;
        latencies.push(began.elapsed().as_micros() as u64);
        // Like a WAL: appended, then started over from the beginning (here at 64 MiB). The
        // first pass grows the file; later passes overwrite it, as a WAL does once restarted.
        offset += block.len() as u64;
        if offset + block.len() as u64 > 64 << 20 {
            offset = 0;
        }
    }
    Ok(latencies)
}

/// Prints what [`disk_probe`] measured.
fn print_disk_probe(seconds: u64, latencies_us: &[u64]) {
    let ordered = sorted(latencies_us.to_vec());
    let slow: Vec<f64> = latencies_us
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .filter(|&ms| ms > SLOW_SYNC_MS)
        .collect();
    println!(
        "  disk alone ({seconds} s of 40 KiB written and synced, one after another): {} syncs, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; {} slower than {SLOW_SYNC_MS:.0} ms{}",
        latencies_us.len(),
        percentile_ms(&ordered, 50.0),
        percentile_ms(&ordered, 99.0),
        percentile_ms(&ordered, 99.9),
        percentile_ms(&ordered, 100.0),
        slow.len(),
        if slow.is_empty() {
            String::new()
        } else {
            format!(
                " ({} ms)",
                slow.iter()
                    .take(10)
                    .map(|ms| format!("{ms:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if slow.len() > 10 { ", …" } else { "" }
            )
        }
    );
}

/// Each phase by windows of `--timeline-ms` of start times (a paced operation's due time):
/// whether its slow operations were spread out (queueing) or bunched (a stall).
fn print_timelines(args: &Args, reports: &[Report]) {
    let window = Duration::from_millis(args.timeline_ms);
    for r in reports {
        let phases = [
            ("flat-out mints", Some(&r.mint)),
            ("flat-out pairs", Some(&r.pairs)),
            ("paced mints", r.mint_paced.as_ref()),
            ("paced pairs", r.pairs_paced.as_ref()),
        ];
        for (what, phase) in phases {
            let Some(phase) = phase else { continue };
            println!();
            println!(
                "{} {what}, per {} ms of start times:",
                r.backend, args.timeline_ms
            );
            println!("| from s | ops | p50 ms | p99 ms | max ms |");
            println!("|---|---|---|---|---|");
            for (from, ops, p50, p99, max) in phase.timeline(window) {
                println!(
                    "| {:.2} | {ops} | {p50:.2} | {p99:.2} | {max:.2} |",
                    from.as_secs_f64()
                );
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let postgres = args
        .postgres_url
        .clone()
        .or_else(|| std::env::var(POSTGRES_ENV).ok())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
    println!(
        "bench-tickets: {} clients, {} s per phase, SQLite synchronous={:?}, {} cores, load average {}",
        args.clients,
        args.seconds,
        args.sqlite_synchronous,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average()
    );
    let mut reports = Vec::new();
    if matches!(args.backend, BackendArg::Sqlite | BackendArg::Both) {
        if args.disk_probe_seconds > 0 {
            let seconds = args.disk_probe_seconds;
            let latencies = tokio::task::spawn_blocking(move || disk_probe(seconds))
                .await
                .context("the disk probe panicked")?
                .context("the disk probe failed")?;
            print_disk_probe(seconds, &latencies);
        }
        reports.push(bench_backend(&args, "sqlite", None).await?);
    }
    if matches!(args.backend, BackendArg::Postgres | BackendArg::Both) {
        reports.push(bench_backend(&args, "postgres", Some(&postgres)).await?);
    }
    println!();
    println!("| backend | phase | ops/s | p50 ms | p99 ms | max ms | CPU µs/op | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut errors = 0;
    for r in &reports {
        let mut phases = vec![
            ("mint".to_owned(), &r.mint),
            ("mint+exchange".to_owned(), &r.pairs),
        ];
        if let Some(phase) = &r.mint_paced {
            phases.push((format!("mint, {:.0}/s offered", args.mint_rate), phase));
        }
        if let Some(phase) = &r.pairs_paced {
            phases.push((
                format!("mint+exchange, {:.0}/s offered", args.pair_rate),
                phase,
            ));
        }
        for (name, phase) in phases {
            println!(
                "| {} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
                r.backend,
                phase.per_second(),
                phase.percentile_ms(50.0),
                phase.percentile_ms(99.0),
                phase.percentile_ms(100.0),
                phase.cpu_per_op_us(),
                phase.errors
            );
            errors += phase.errors;
            if let Some(first) = &phase.first_error {
                println!("  first error ({} {name}): {first}", r.backend);
            }
        }
    }
    if args.timeline_ms > 0 {
        print_timelines(&args, &reports);
    }
    if let Some(sqlite) = reports.iter().find(|r| r.backend == "sqlite") {
        let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
        let mints = sqlite.mint.per_second();
        let pairs = sqlite.pairs.per_second();
        let p99 = |phases: &[&Phase]| {
            phases
                .iter()
                .map(|phase| phase.percentile_ms(99.0))
                .fold(f64::NAN, f64::max)
        };
        let flat_out = p99(&[&sqlite.mint, &sqlite.pairs]);
        println!();
        println!("targets (SQLite, {} clients):", args.clients);
        println!(
            "  mints/s >= {TARGET_MINTS:.0}: {mints:.0} — {}",
            verdict(mints >= TARGET_MINTS)
        );
        println!(
            "  pairs/s >= {TARGET_PAIRS:.0}: {pairs:.0} — {}",
            verdict(pairs >= TARGET_PAIRS)
        );
        let at_targets = args.mint_rate >= TARGET_MINTS && args.pair_rate >= TARGET_PAIRS;
        if let (true, Some(mint), Some(pair)) =
            (at_targets, &sqlite.mint_paced, &sqlite.pairs_paced)
        {
            // Offered load the server did not keep up with fails, whatever the percentile.
            let kept_up = mint.per_second() >= 0.95 * args.mint_rate
                && pair.per_second() >= 0.95 * args.pair_rate;
            let paced = p99(&[mint, pair]);
            println!(
                "  p99 <= {TARGET_P99_MS:.0} ms at {:.0} mints/s and {:.0} pairs/s offered: {paced:.2} ms{} — {}",
                args.mint_rate,
                args.pair_rate,
                if kept_up { "" } else { ", not kept up with" },
                verdict(kept_up && paced <= TARGET_P99_MS)
            );
        }
        println!(
            "  p99 <= {TARGET_P99_MS:.0} ms flat out ({} in flight all the time): {flat_out:.2} ms — {}",
            args.clients,
            verdict(flat_out <= TARGET_P99_MS)
        );
    }
    println!("load average at the end: {}", load_average());
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
