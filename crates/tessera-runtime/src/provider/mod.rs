//! Model providers: one interface, an OpenAI-compatible streaming client and the offline `echo`
//! provider, looked up by name in a registry built from configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod echo;
pub mod openai;
mod sse;
#[cfg(feature = "testing")]
pub mod testing;

/// Who said a message in the conversation sent to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; tool results refer to it.
    pub id: String,
    pub name: String,
    /// Parsed arguments. A provider sending invalid JSON arguments yields
    /// `{"_raw": "<text>"}` so the error can go back to the model instead of failing the run.
    pub arguments: serde_json::Value,
}

/// One message of the conversation as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// Text content (may be empty for an assistant message that only calls tools).
    pub content: String,
    /// Assistant messages: the tool calls it made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call this is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// One model turn to perform.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// The model name as the provider knows it.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Shared: a run offers the same tools on every request.
    pub tools: std::sync::Arc<[ToolSpec]>,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u32>,
}

/// Token counts reported by the provider (zero when it reports none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A final answer (also used when the provider sends no or an unknown finish reason and no
    /// tool calls).
    Stop,
    /// The model wants tools run.
    ToolCalls,
    /// The output hit `max_output_tokens`.
    Length,
    /// The provider filtered the output.
    ContentFilter,
}

/// The complete result of one model turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTurn {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

/// Receives text as it streams. Called from the provider's task; must not block.
pub type DeltaSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error status that retries did not cure.
    #[error("model provider answered {status}: {message}")]
    Status { status: u16, message: String },
    /// Connecting, sending or reading failed (after retries where retrying was safe).
    #[error("model provider unreachable: {0}")]
    Transport(String),
    /// No byte within the first-byte timeout, or a gap between chunks over the idle timeout.
    #[error("model provider timed out: {0}")]
    Timeout(String),
    /// The stream broke the protocol (a chunk that is not JSON, a tool call without a name…).
    #[error("model provider sent an invalid response: {0}")]
    Protocol(String),
    /// The request could not be built (e.g. the API key environment variable is unset).
    #[error("model provider is misconfigured: {0}")]
    Config(String),
}

/// A chat-completions model.
#[async_trait]
pub trait ModelProvider: Send + Sync {
    /// Performs one turn, streaming text deltas to `on_delta` as they arrive, and returns the
    /// assembled turn. Cancel by dropping the future.
    async fn complete(
        &self,
        request: &ModelRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<ModelTurn, ProviderError>;
}

/// The kinds of provider a configuration can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, …).
    Openai,
    /// The offline echo provider.
    Echo,
}

/// `[providers.NAME]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URL up to and including the version segment (`https://api.openai.com/v1`); the
    /// client appends `/chat/completions`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (the key itself never appears in
    /// configuration files), read on every request. `None` or an empty variable = no
    /// `Authorization` header; a named variable that is not set fails the request with
    /// `ProviderError::Config` (a typo must not silently send unauthenticated requests).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Whole-request timeout for a non-streamed part and the time to the first byte, seconds.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout_seconds: u64,
    /// Longest gap between two stream chunks, seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Retries on 429, 5xx and connection errors before any output was streamed.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

fn default_first_byte_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_retries() -> u32 {
    3
}

impl ProviderConfig {
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_secs(self.first_byte_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }
}

/// Providers by name. `echo` is always present.
#[derive(Clone)]
pub struct ProviderRegistry {
    providers: BTreeMap<String, Arc<dyn ModelProvider>>,
}

impl ProviderRegistry {
    /// Builds the registry; fails on a configuration that cannot work (an `openai` provider
    /// without `base_url`, an unparsable URL).
    pub fn from_config(configs: &BTreeMap<String, ProviderConfig>) -> Result<Self, ProviderError> {
        let mut providers: BTreeMap<String, Arc<dyn ModelProvider>> = BTreeMap::new();
        providers.insert("echo".to_owned(), Arc::new(echo::EchoProvider::default()));
        for (name, config) in configs {
            let provider: Arc<dyn ModelProvider> = match config.kind {
                ProviderKind::Echo => Arc::new(echo::EchoProvider::default()),
                ProviderKind::Openai => Arc::new(openai::OpenAiProvider::new(name, config)?),
            };
            providers.insert(name.clone(), provider);
        }
        Ok(Self { providers })
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn ModelProvider>> {
        self.providers.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }
}
