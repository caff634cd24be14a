//! Driving turns through the SDK: send a message, then wait on the thread's open SSE stream for
//! that run's terminal `run.status` event.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tessera_client::{Client, ThreadStream};

/// The message sent at turn `position`: the same size at a given position in every thread, so
/// that the model request bodies (and their calibrated model time) match across threads.
pub fn message(position: usize) -> String {
    format!("Benchmark message number {position:04}: please repeat this sentence back to me.")
}

/// When the client saw each step of a turn, measured from just before sending the message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// `executeAgentThreadAsync` answered `202`.
    pub accepted: Duration,
    /// The stream delivered `run.status` = `running` (a worker claimed the run).
    pub running: Duration,
    /// The stream delivered the first `message.delta` (the model is answering).
    pub delta: Duration,
    /// The stream delivered the assistant's `message.completed` (model answered, step stored).
    pub message: Duration,
    /// The stream delivered `run.status` = `completed` (the end of the turn).
    pub completed: Duration,
}

/// What one turn came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run completed; `stages.completed` is the end-to-end latency.
    Completed { position: usize, stages: Stages },
    /// The run ended otherwise, timed out, or a request failed.
    Failed { message: String },
}

/// One thread with its stream open.
pub struct ThreadDriver {
    client: Client,
    thread_id: String,
    stream: ThreadStream,
    /// Stream reconnections (the server closed it or reading failed).
    pub reconnects: usize,
}

impl ThreadDriver {
    /// Opens the thread's stream (kept open for all its turns).
    pub async fn open(client: Client, thread_id: String) -> anyhow::Result<Self> {
        let stream = client
            .ai()
            .threads()
            .stream(&thread_id)
            .connect()
            .await
            .with_context(|| format!("opening the stream of {thread_id}"))?;
        Ok(ThreadDriver {
            client,
            thread_id,
            stream,
            reconnects: 0,
        })
    }

    /// Runs `turns` turns one after the other.
    pub async fn run(&mut self, turns: usize, timeout: Duration) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(turns);
        for position in 0..turns {
            outcomes.push(self.turn(position, timeout).await);
        }
        outcomes
    }

    /// One turn: send, then wait for the run's end on the stream.
    pub async fn turn(&mut self, position: usize, timeout: Duration) -> Outcome {
        let started = Instant::now();
        let mut stages = Stages::default();
        let result =
            tokio::time::timeout(timeout, self.send_and_wait(position, started, &mut stages)).await;
        match result {
            Ok(Ok(status)) if status == "completed" => Outcome::Completed { position, stages },
            Ok(Ok(status)) => Outcome::Failed {
                message: format!("a run of {} ended {status}", self.thread_id),
            },
            Ok(Err(err)) => Outcome::Failed {
                message: format!("{err:#}"),
            },
            Err(_) => Outcome::Failed {
                message: format!(
                    "a run of {} did not finish within {} s",
                    self.thread_id,
                    timeout.as_secs()
                ),
            },
        }
    }

    async fn send_and_wait(
        &mut self,
        position: usize,
        started: Instant,
        stages: &mut Stages,
    ) -> anyhow::Result<String> {
        let accepted = self
            .client
            .ai()
            .threads()
            .send_message(&self.thread_id, message(position))
            .send()
            .await
            .context("executeAgentThreadAsync")?;
        let run_id = accepted
            .run_id
            .context("executeAgentThreadAsync answered without a run id")?;
        stages.accepted = started.elapsed();
        self.wait_for_end(&run_id, started, stages).await
    }

    /// Reads the stream until `run_id` reaches a terminal status; returns that status.
    async fn wait_for_end(
        &mut self,
        run_id: &str,
        started: Instant,
        stages: &mut Stages,
    ) -> anyhow::Result<String> {
        loop {
            match self.stream.next().await {
                Some(Ok(event)) => {
                    let data = &event.data;
                    // `message.*` events carry the run in their message.
                    let of_run = data
                        .get("run_id")
                        .or_else(|| data.get("message").and_then(|m| m.get("run_id")))
                        .and_then(|v| v.as_str());
                    if of_run != Some(run_id) {
                        continue;
                    }
                    let status = data
                        .get("status")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    match event.event.as_str() {
                        "message.delta" if stages.delta.is_zero() => {
                            stages.delta = started.elapsed();
                        }
                        "message.completed" => stages.message = started.elapsed(),
                        "run.status" if status == "running" => {
                            stages.running = started.elapsed();
                        }
                        "run.status" if matches!(status, "completed" | "failed" | "cancelled") => {
                            stages.completed = started.elapsed();
                            return Ok(status.to_owned());
                        }
                        _ => {}
                    }
                }
                // Closed or broken: resume after the last event read, as any client would.
                Some(Err(_)) | None => self.reconnect().await?,
            }
        }
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.reconnects += 1;
        let mut request = self.client.ai().threads().stream(&self.thread_id);
        if let Some(id) = self.stream.last_event_id() {
            request = request.last_event_id(id);
        }
        self.stream = request
            .connect()
            .await
            .with_context(|| format!("reconnecting the stream of {}", self.thread_id))?;
        Ok(())
    }
}
