//! One benchmark run on one backend: fixtures, warm-up, calibration, the latency phase and the
//! throughput phase.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tessera_client::models::{
    CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest, CreateThreadRequest,
    ModelConfig,
};
use tessera_client::Client;

use crate::cpu::{Machine, Usage};
use crate::drive::{Outcome, ThreadDriver};
use crate::model::{FakeModel, ModelTimes, PROVIDER};
use crate::probe::{Floor, Probe};
use crate::server::{Database, Server};
use crate::stats::Distribution;
use crate::{Args, Backend};

/// Where a turn's time went, as seen by the client: the intervals between sending, the `202`,
/// the `running` event, the first `message.delta`, the assistant's `message.completed` and the
/// `completed` event (each point is taken no earlier than the one before, so that the intervals
/// add up to the end-to-end latency).
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    /// Send → `202` (API request: authentication, reads, the `submit_run` transaction).
    pub accept: Distribution,
    /// `202` → `running` seen (worker wake-up, the `claim_run` transaction, SSE delivery).
    pub claim: Distribution,
    /// `running` → first `message.delta` seen (heartbeat transaction, agent and history reads,
    /// the model's first bytes, live fan-out).
    pub first_delta: Distribution,
    /// First delta → `message.completed` seen (rest of the model's answer, the `record_step`
    /// transaction, SSE delivery).
    pub reply: Distribution,
    /// `message.completed` → `completed` seen (the `finish_run` transaction, SSE delivery).
    pub finish: Distribution,
}

/// The figures of one measured phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub wall: Duration,
    pub completed: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub e2e: Distribution,
    pub overhead: Distribution,
    pub model: Distribution,
    pub breakdown: Breakdown,
    pub reconnects: usize,
    /// This process's CPU and context switches during the phase (`None` without `/proc`).
    pub cpu: Option<Usage>,
    /// The machine's 1-minute load average at the end of the phase.
    pub load_average: Option<f64>,
    /// Share of the machine's CPU time (all cores, every process) busy during the phase.
    pub machine_busy: Option<f64>,
}

impl Phase {
    fn from_outcomes(
        wall: Duration,
        outcomes: Vec<Outcome>,
        model: &ModelTimes,
        reconnects: usize,
        cpu: Option<Usage>,
        machine_busy: Option<f64>,
    ) -> Self {
        let mut e2e = Vec::with_capacity(outcomes.len());
        let mut overhead = Vec::with_capacity(outcomes.len());
        let mut model_time = Vec::with_capacity(outcomes.len());
        let mut stage: [Vec<Duration>; 5] = Default::default();
        let mut errors = 0;
        let mut first_error = None;
        for outcome in outcomes {
            match outcome {
                Outcome::Completed { position, stages } => {
                    let d = stages.completed;
                    let m = model.at(position);
                    let running = stages.running.max(stages.accepted);
                    let delta = stages.delta.max(running);
                    let message = stages.message.max(delta);
                    stage[0].push(stages.accepted);
                    stage[1].push(running - stages.accepted);
                    stage[2].push(delta - running);
                    stage[3].push(message - delta);
                    stage[4].push(d.saturating_sub(message));
                    e2e.push(d);
                    model_time.push(m);
                    overhead.push(d.saturating_sub(m));
                }
                Outcome::Failed { message } => {
                    errors += 1;
                    first_error.get_or_insert(message);
                }
            }
        }
        let [accept, claim, first_delta, reply, finish] = stage.map(Distribution::of);
        Phase {
            wall,
            completed: e2e.len(),
            errors,
            first_error,
            e2e: Distribution::of(e2e),
            overhead: Distribution::of(overhead),
            model: Distribution::of(model_time),
            breakdown: Breakdown {
                accept,
                claim,
                first_delta,
                reply,
                finish,
            },
            reconnects,
            cpu,
            load_average: crate::cpu::load_average(),
            machine_busy,
        }
    }

    /// Process CPU time per completed turn.
    pub fn cpu_per_turn(&self) -> Option<Duration> {
        let cpu = self.cpu?;
        let turns = u32::try_from(self.completed).ok().filter(|n| *n > 0)?;
        Some((cpu.user + cpu.system) / turns)
    }

    /// Voluntary + involuntary context switches per completed turn.
    pub fn switches_per_turn(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.completed > 0).then(|| {
            (cpu.voluntary_switches + cpu.involuntary_switches) as f64 / self.completed as f64
        })
    }

    /// Completed turns per second of wall time.
    pub fn turns_per_second(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// Everything measured on one backend.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub backend: Backend,
    /// Sequential small write transactions on this backend (the storage floor).
    pub floor: Floor,
    /// Four-statement write transactions timed during the throughput phase.
    pub loaded_transaction: Distribution,
    pub model: ModelTimes,
    pub latency: Option<Phase>,
    pub throughput: Phase,
}

impl BackendReport {
    pub fn errors(&self) -> usize {
        self.throughput.errors + self.latency.as_ref().map_or(0, |p| p.errors)
    }
}

/// Runs the whole benchmark on `backend` with a fresh database, removed afterwards.
pub async fn run_backend(
    args: &Args,
    backend: Backend,
    postgres_url: &str,
) -> anyhow::Result<BackendReport> {
    let model = FakeModel::start(args.model).await;
    let database = Database::create(backend, postgres_url).await?;
    let result = async {
        eprintln!("storage probe: sequential one-row write transactions");
        let mut probe = Probe::open(&database, args.sqlite_synchronous)
            .await
            .map_err(|e| anyhow::anyhow!("storage probe: {e:#}"))?;
        let floor = probe
            .floor()
            .await
            .map_err(|e| anyhow::anyhow!("storage probe: {e:#}"))?;
        measure(args, backend, floor, probe, &model, database.url()).await
    }
    .await;
    if let Err(err) = database.remove().await {
        eprintln!("warning: the benchmark database was not removed: {err:#}");
    }
    result
}

async fn measure(
    args: &Args,
    backend: Backend,
    floor: Floor,
    probe: Probe,
    model: &FakeModel,
    database_url: &str,
) -> anyhow::Result<BackendReport> {
    let server = Server::start(args, database_url, model.providers(), PROVIDER).await?;
    let client = server.client.clone();
    let project = create_fixtures(&client).await?;
    let turns = args.turns as usize;
    let timeout = Duration::from_secs(args.turn_timeout_secs);

    eprintln!("warm-up: 1 thread x {turns} turns");
    let mut warm = open_thread(&client, &project, "warm-up").await?;
    for outcome in warm.run(turns, timeout).await {
        if let Outcome::Failed { message } = outcome {
            anyhow::bail!("the warm-up failed: {message}");
        }
    }
    drop(warm);

    eprintln!(
        "calibration: {} direct requests per turn position to the fake model",
        args.calibration_samples
    );
    let model_times = model.calibrate(turns, args.calibration_samples).await?;
    model.forget_requests();

    let latency = if args.latency_turns > 0 {
        eprintln!(
            "latency phase: {} turns, one at a time, on threads of {turns} turns",
            args.latency_turns
        );
        Some(latency_phase(args, &client, &project, &model_times, timeout).await?)
    } else {
        None
    };

    eprintln!(
        "throughput phase: {} threads x {turns} turns concurrently",
        args.threads
    );
    let (throughput, loaded_transaction) =
        throughput_phase(args, &client, &project, &model_times, timeout, probe).await?;
    model.forget_requests();

    server.stop().await?;
    Ok(BackendReport {
        backend,
        floor,
        loaded_transaction,
        model: model_times,
        latency,
        throughput,
    })
}

/// Creates an agent using the fake model, an actor and their project; returns the project id.
async fn create_fixtures(client: &Client) -> anyhow::Result<String> {
    let ai = client.ai();
    let agent = ai
        .agents()
        .create_agent(CreateAgentRequest {
            name: "bench-runtime".to_owned(),
            model: Some(ModelConfig {
                provider: PROVIDER.to_owned(),
                model: "echo".to_owned(),
                temperature: None,
                max_output_tokens: None,
            }),
            ..CreateAgentRequest::default()
        })
        .send()
        .await
        .context("createAgent")?;
    let actor = ai
        .actors()
        .create_actor(CreateActorRequest {
            subject_type: "service".to_owned(),
            external_key: "bench-runtime".to_owned(),
            display_name: None,
            metadata: None,
        })
        .send()
        .await
        .context("createActor")?;
    let project = ai
        .actor_projects()
        .create_actor_project(
            &actor.id,
            CreateActorProjectRequest {
                agent_id: agent.id,
                name: "bench-runtime".to_owned(),
            },
        )
        .send()
        .await
        .context("createActorProject")?;
    Ok(project.id)
}

async fn create_thread(client: &Client, project: &str, title: &str) -> anyhow::Result<String> {
    let thread = client
        .ai()
        .threads()
        .create_thread(
            project,
            CreateThreadRequest {
                title: title.to_owned(),
                ..CreateThreadRequest::default()
            },
        )
        .send()
        .await
        .context("createAgentThread")?;
    Ok(thread.id)
}

async fn open_thread(client: &Client, project: &str, title: &str) -> anyhow::Result<ThreadDriver> {
    let id = create_thread(client, project, title).await?;
    ThreadDriver::open(client.clone(), id).await
}

/// Turns one at a time, on fresh threads of `--turns` turns: nothing waits behind anything.
async fn latency_phase(
    args: &Args,
    client: &Client,
    project: &str,
    model: &ModelTimes,
    timeout: Duration,
) -> anyhow::Result<Phase> {
    let per_thread = args.turns as usize;
    let mut remaining = args.latency_turns as usize;
    let mut outcomes = Vec::with_capacity(remaining);
    let mut reconnects = 0;
    let mut wall = Duration::ZERO;
    let mut cpu = Some(Usage::default());
    let machine_before = Machine::now();
    let mut n = 0;
    while remaining > 0 {
        n += 1;
        let mut driver = open_thread(client, project, &format!("latency {n}")).await?;
        let turns = remaining.min(per_thread);
        let before = Usage::now();
        let started = Instant::now();
        outcomes.extend(driver.run(turns, timeout).await);
        wall += started.elapsed();
        cpu = match (cpu, before, Usage::now()) {
            (Some(total), Some(before), Some(after)) => Some(add(total, after.since(&before))),
            _ => None,
        };
        reconnects += driver.reconnects;
        remaining -= turns;
    }
    // Includes the creation of the latency threads, a small part of the phase.
    let busy = Machine::now()
        .zip(machine_before)
        .and_then(|(after, before)| after.busy_since(&before));
    Ok(Phase::from_outcomes(
        wall, outcomes, model, reconnects, cpu, busy,
    ))
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        user: a.user + b.user,
        system: a.system + b.system,
        voluntary_switches: a.voluntary_switches + b.voluntary_switches,
        involuntary_switches: a.involuntary_switches + b.involuntary_switches,
    }
}

/// All threads at once, each running its turns back to back.
async fn throughput_phase(
    args: &Args,
    client: &Client,
    project: &str,
    model: &ModelTimes,
    timeout: Duration,
    probe: Probe,
) -> anyhow::Result<(Phase, Distribution)> {
    let threads = args.threads as usize;
    let turns = args.turns as usize;
    let mut ids = Vec::with_capacity(threads);
    for i in 0..threads {
        ids.push(create_thread(client, project, &format!("throughput {i}")).await?);
    }
    let drivers = futures_util::future::try_join_all(
        ids.into_iter()
            .map(|id| ThreadDriver::open(client.clone(), id)),
    )
    .await?;

    let probe = probe.start_loaded();
    let before = Usage::now();
    let machine_before = Machine::now();
    let started = Instant::now();
    let tasks: Vec<_> = drivers
        .into_iter()
        .map(|mut driver| {
            tokio::spawn(async move {
                let outcomes = driver.run(turns, timeout).await;
                (outcomes, driver.reconnects)
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(threads * turns);
    let mut reconnects = 0;
    for task in futures_util::future::join_all(tasks).await {
        let (o, r) = task.context("a benchmark thread panicked")?;
        outcomes.extend(o);
        reconnects += r;
    }
    let wall = started.elapsed();
    let cpu = Usage::now()
        .zip(before)
        .map(|(after, before)| after.since(&before));
    let busy = Machine::now()
        .zip(machine_before)
        .and_then(|(after, before)| after.busy_since(&before));
    let loaded = probe
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("storage probe under load: {e:#}"))?;
    Ok((
        Phase::from_outcomes(wall, outcomes, model, reconnects, cpu, busy),
        loaded,
    ))
}
