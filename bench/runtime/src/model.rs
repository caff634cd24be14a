//! The fake model, and the calibration that tells how long a model call takes by itself.
//!
//! `ScriptedModelServer` records request bodies but not how long it took to answer them, so the
//! model time is measured apart, before the measured phases: each request body the runtime sent
//! during the warm-up is replayed directly to the same server, and the median duration of a
//! complete streamed answer is the model time for that turn position.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tessera_runtime::provider::testing::ScriptedModelServer;
use tessera_runtime::provider::{ProviderConfig, ProviderKind};

use crate::ModelChoice;

/// The provider name agents use in this benchmark.
pub const PROVIDER: &str = "bench";

/// The fake model behind the agent's provider.
pub struct FakeModel {
    /// `None` for the offline echo provider.
    server: Option<ScriptedModelServer>,
}

impl FakeModel {
    pub async fn start(choice: ModelChoice) -> Self {
        let server = match choice {
            ModelChoice::Scripted => Some(ScriptedModelServer::echo().await),
            ModelChoice::Echo => None,
        };
        FakeModel { server }
    }

    /// `[providers]` for the server: provider `bench`, pointing at the fake model.
    pub fn providers(&self) -> BTreeMap<String, ProviderConfig> {
        let config = match &self.server {
            Some(server) => server.provider_config(),
            None => ProviderConfig {
                kind: ProviderKind::Echo,
                base_url: None,
                api_key_env: None,
                first_byte_timeout_seconds: 60,
                idle_timeout_seconds: 60,
                max_retries: 3,
            },
        };
        BTreeMap::from([(PROVIDER.to_owned(), config)])
    }

    /// Forgets the recorded requests (they are only needed for calibration).
    pub fn forget_requests(&self) {
        if let Some(server) = &self.server {
            server.clear_requests();
        }
    }

    /// The median time of a direct request per turn position, from the first `turns` recorded
    /// requests (the warm-up thread's, in order). All zero for the offline echo provider.
    pub async fn calibrate(&self, turns: usize, samples: u32) -> anyhow::Result<ModelTimes> {
        let Some(server) = &self.server else {
            return Ok(ModelTimes {
                per_position: vec![Duration::ZERO; turns],
                body_bytes: vec![0; turns],
            });
        };
        let recorded = server.requests();
        anyhow::ensure!(
            recorded.len() >= turns,
            "the warm-up made {} model requests, expected {turns}",
            recorded.len()
        );
        let http = reqwest::Client::new();
        let url = format!("{}/chat/completions", server.url());
        let mut per_position = Vec::with_capacity(turns);
        let mut body_bytes = Vec::with_capacity(turns);
        for request in recorded.iter().take(turns) {
            let body = serde_json::to_vec(&request.body).context("re-encoding a model request")?;
            body_bytes.push(body.len());
            // One unmeasured request so that the connection is open, as the provider's is.
            time_request(&http, &url, &body).await?;
            let mut times = Vec::with_capacity(samples as usize);
            for _ in 0..samples {
                times.push(time_request(&http, &url, &body).await?);
            }
            times.sort_unstable();
            per_position.push(times[times.len() / 2]);
        }
        Ok(ModelTimes {
            per_position,
            body_bytes,
        })
    }
}

/// One complete request: headers, every streamed chunk, end of body.
async fn time_request(http: &reqwest::Client, url: &str, body: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .body(body.to_vec())
        .send()
        .await
        .context("calibration request to the fake model")?;
    anyhow::ensure!(
        response.status().is_success(),
        "the fake model answered {} during calibration",
        response.status()
    );
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunk.context("reading the fake model's answer during calibration")?;
    }
    Ok(started.elapsed())
}

/// Model time per turn position (index 0 = a thread's first turn).
#[derive(Debug, Clone)]
pub struct ModelTimes {
    pub per_position: Vec<Duration>,
    /// Size of the request body at each position, for the report.
    pub body_bytes: Vec<usize>,
}

impl ModelTimes {
    /// The model time of the turn at `position` (the last known one beyond the calibrated range).
    pub fn at(&self, position: usize) -> Duration {
        self.per_position
            .get(position)
            .or_else(|| self.per_position.last())
            .copied()
            .unwrap_or_default()
    }
}
