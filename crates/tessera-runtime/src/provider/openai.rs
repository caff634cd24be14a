//! The OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, …):
//! streaming over SSE, tool calls, usage, retries and timeouts.
//!
//! Real servers differ in small ways, so the parser is lenient: unknown fields are ignored,
//! `finish_reason` may be missing, empty or unknown (the turn then ends in `tool_calls` if it has
//! tool calls, else `stop`), tool-call fragments may lack an `index` or an `id`, arguments may
//! arrive as a string in pieces or as an object, `usage` may come in any chunk, the final
//! `[DONE]` may be missing once a finish reason was seen, and a server that ignores `stream`
//! and answers with one JSON document is understood too.
//!
//! Retries: 429, 5xx and transport failures are retried, with exponential back-off and jitter or
//! the server's `Retry-After`, but only while nothing has been passed to `on_delta` (the caller
//! would otherwise see text twice). Timeouts are not retried: the first byte of the body must come
//! within `first_byte_timeout`, then every chunk within `idle_timeout`.
//!
//! The API key is read from the environment variable named by `api_key_env` on every request. It
//! is never logged or put in an error; error messages also leave out the URL.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::sse::{SseParser, DEFAULT_MAX_EVENT_SIZE};
use super::{
    ChatMessage, ChatRole, DeltaSink, FinishReason, ModelProvider, ModelRequest, ModelTurn,
    ProviderConfig, ProviderError, ToolCall, Usage,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry waits about this long, the next twice as long, and so on.
const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(250);
/// Neither back-off nor `Retry-After` makes one wait longer than this.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// How much of an error body is read, and how much of its message is kept.
const MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_ERROR_MESSAGE_CHARS: usize = 500;
/// Bound on a non-streamed JSON answer.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// An OpenAI-compatible chat-completions provider.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    name: String,
    endpoint: reqwest::Url,
    api_key_env: Option<String>,
    client: reqwest::Client,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_retries: u32,
    retry_base_delay: Duration,
}

impl OpenAiProvider {
    /// Checks the configuration (a `base_url` with an http(s) scheme, non-zero timeouts) and
    /// builds the HTTP client. The API key is not read here but on each request.
    pub fn new(name: &str, config: &ProviderConfig) -> Result<Self, ProviderError> {
        let base_url = config
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .ok_or_else(|| {
                ProviderError::Config(format!(
                    "provider {name}: an openai provider needs base_url (e.g. https://api.openai.com/v1)"
                ))
            })?;
        let endpoint = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let endpoint = reqwest::Url::parse(&endpoint).map_err(|err| {
            ProviderError::Config(format!(
                "provider {name}: base_url is not a valid URL: {err}"
            ))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ProviderError::Config(format!(
                "provider {name}: base_url must be an http or https URL"
            )));
        }
        if config.first_byte_timeout_seconds == 0 || config.idle_timeout_seconds == 0 {
            return Err(ProviderError::Config(format!(
                "provider {name}: first_byte_timeout_seconds and idle_timeout_seconds must be at least 1"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|err| {
                ProviderError::Config(format!(
                    "provider {name}: cannot build the HTTP client: {}",
                    describe_reqwest_error(&err)
                ))
            })?;
        Ok(Self {
            name: name.to_owned(),
            endpoint,
            api_key_env: config
                .api_key_env
                .clone()
                .filter(|var| !var.trim().is_empty()),
            client,
            first_byte_timeout: config.first_byte_timeout(),
            idle_timeout: config.idle_timeout(),
            max_retries: config.max_retries,
            retry_base_delay: DEFAULT_RETRY_BASE_DELAY,
        })
    }

    /// Overrides the configured timeouts with finer ones (tests, embedders).
    pub fn with_timeouts(mut self, first_byte: Duration, idle: Duration) -> Self {
        self.first_byte_timeout = first_byte;
        self.idle_timeout = idle;
        self
    }

    /// Overrides the first back-off delay (250 ms); later retries double it.
    pub fn with_retry_base_delay(mut self, delay: Duration) -> Self {
        self.retry_base_delay = delay;
        self
    }

    /// The `Authorization` header value, if a key is configured.
    fn authorization(&self) -> Result<Option<HeaderValue>, ProviderError> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        let key = match std::env::var(var) {
            Ok(key) => key,
            Err(std::env::VarError::NotPresent) => {
                return Err(ProviderError::Config(format!(
                    "provider {}: the environment variable {var} (api_key_env) is not set",
                    self.name
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ProviderError::Config(format!(
                    "provider {}: the environment variable {var} (api_key_env) is not valid UTF-8",
                    self.name
                )))
            }
        };
        let key = key.trim();
        if key.is_empty() {
            // Local servers (Ollama, llama.cpp) need no key; an empty variable says so.
            return Ok(None);
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ProviderError::Config(format!(
                "provider {}: the API key in {var} contains characters not allowed in an HTTP header",
                self.name
            ))
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(MAX_RETRY_WAIT);
        // "Equal jitter": half fixed, half random, so retries of many runs spread out.
        let half = exponential / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_nanos == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(random_u64() % jitter_nanos)
        };
        half + jitter
    }

    /// One HTTP exchange.
    async fn attempt(
        &self,
        body: &Bytes,
        authorization: Option<&HeaderValue>,
        on_delta: DeltaSink<'_>,
        emitted: &mut bool,
    ) -> Result<ModelTurn, Failure> {
        let deadline = Instant::now() + self.first_byte_timeout;
        let mut builder = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value.clone());
        }
        let mut response = match tokio::time::timeout_at(deadline, builder.send()).await {
            Err(_) => return Err(Failure::fatal(self.first_byte_timeout_error())),
            Ok(Err(err)) if err.is_builder() => {
                return Err(Failure::fatal(ProviderError::Config(format!(
                    "provider {}: cannot build the request: {}",
                    self.name,
                    describe_reqwest_error(&err)
                ))))
            }
            Ok(Err(err)) => {
                return Err(Failure::retryable(ProviderError::Transport(format!(
                    "provider {}: {}",
                    self.name,
                    describe_reqwest_error(&err)
                ))))
            }
            Ok(Ok(response)) => response,
        };

        let status = response.status();
        if !status.is_success() {
            let retry_after = parse_retry_after(response.headers(), SystemTime::now());
            let body = read_limited(&mut response, MAX_ERROR_BODY, self.idle_timeout)
                .await
                .unwrap_or_default();
            let message = error_message(&body)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            let code = status.as_u16();
            let error = ProviderError::Status {
                status: code,
                message,
            };
            return Err(if is_retryable_status(code) {
                Failure {
                    error,
                    retryable: true,
                    retry_after,
                    status: Some(code),
                }
            } else {
                Failure::fatal(error)
            });
        }

        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();

        // The first chunk must come before the first-byte deadline.
        let first = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(Failure::fatal(self.first_byte_timeout_error())),
            Ok(Err(err)) => return Err(self.body_error(&err)),
            Ok(Ok(chunk)) => chunk.unwrap_or_default(),
        };

        let is_json = if content_type.contains("event-stream") {
            false
        } else if content_type.contains("json") {
            true
        } else {
            // No or an odd content type: sniff.
            first
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'{')
        };
        if is_json {
            self.read_json(response, first, deadline, on_delta, emitted)
                .await
        } else {
            self.read_stream(response, first, on_delta, emitted).await
        }
    }

    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        first: Bytes,
        on_delta: DeltaSink<'_>,
        emitted: &mut bool,
    ) -> Result<ModelTurn, Failure> {
        let mut parser = SseParser::new(DEFAULT_MAX_EVENT_SIZE);
        let mut turn = TurnBuilder::default();
        let mut events = Vec::new();
        // The start of the body, to show when it turns out not to be an event stream.
        let mut head = String::new();
        let mut saw_event = false;
        let mut chunk = Some(first);
        loop {
            if let Some(bytes) = &chunk {
                if head.len() < 200 {
                    let take = bytes.len().min(256);
                    head.push_str(&String::from_utf8_lossy(
                        bytes.get(..take).unwrap_or_default(),
                    ));
                }
            }
            match chunk {
                Some(ref bytes) => parser
                    .push(bytes, &mut events)
                    .map_err(|err| Failure::fatal(ProviderError::Protocol(err.to_string())))?,
                None => events.extend(
                    parser
                        .finish()
                        .map_err(|err| Failure::fatal(ProviderError::Protocol(err.to_string())))?,
                ),
            }
            for event in events.drain(..) {
                saw_event = true;
                let data = event.data.trim();
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    return turn.finish().map_err(Failure::fatal);
                }
                let value: Value = serde_json::from_str(data).map_err(|err| {
                    Failure::fatal(ProviderError::Protocol(format!(
                        "a stream chunk is not JSON ({err}): {}",
                        truncate_chars(data, 200)
                    )))
                })?;
                if let Some(failure) = stream_error(&value, event.event.as_deref()) {
                    return Err(failure);
                }
                turn.apply_chunk(&value, on_delta, emitted)
                    .map_err(Failure::fatal)?;
            }
            if chunk.is_none() {
                break;
            }
            chunk = match tokio::time::timeout(self.idle_timeout, response.chunk()).await {
                Err(_) => {
                    return Err(Failure::fatal(ProviderError::Timeout(format!(
                        "provider {}: no data for {} ms (idle timeout)",
                        self.name,
                        self.idle_timeout.as_millis()
                    ))))
                }
                Ok(Err(err)) => return Err(self.body_error(&err)),
                Ok(Ok(chunk)) => chunk,
            };
        }
        if turn.finish_reason_seen {
            turn.finish().map_err(Failure::fatal)
        } else if !saw_event && !head.trim().is_empty() {
            // An HTML error page from a proxy, plain text…: not something a retry fixes.
            Err(Failure::fatal(ProviderError::Protocol(format!(
                "the response is neither an event stream nor JSON: {}",
                truncate_chars(head.trim(), 200)
            ))))
        } else {
            Err(Failure::retryable(ProviderError::Transport(format!(
                "provider {}: the stream ended before the response was complete",
                self.name
            ))))
        }
    }

    async fn read_json(
        &self,
        mut response: reqwest::Response,
        first: Bytes,
        deadline: Instant,
        on_delta: DeltaSink<'_>,
        emitted: &mut bool,
    ) -> Result<ModelTurn, Failure> {
        let mut body = first.to_vec();
        loop {
            if body.len() > MAX_JSON_BODY {
                return Err(Failure::fatal(ProviderError::Protocol(format!(
                    "the response exceeds {MAX_JSON_BODY} bytes"
                ))));
            }
            // A non-streamed answer must be complete within the first-byte timeout, but a body
            // that keeps flowing gets the idle timeout between its chunks.
            let wait_until = deadline.max(Instant::now() + self.idle_timeout);
            match tokio::time::timeout_at(wait_until, response.chunk()).await {
                Err(_) => {
                    return Err(Failure::fatal(ProviderError::Timeout(format!(
                        "provider {}: the response did not complete in time",
                        self.name
                    ))))
                }
                Ok(Err(err)) => return Err(self.body_error(&err)),
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
                Ok(Ok(None)) => break,
            }
        }
        let value: Value = serde_json::from_slice(&body).map_err(|err| {
            Failure::fatal(ProviderError::Protocol(format!(
                "the response is not JSON ({err}): {}",
                truncate_chars(&String::from_utf8_lossy(&body), 200)
            )))
        })?;
        if let Some(failure) = stream_error(&value, None) {
            return Err(failure);
        }
        let mut turn = TurnBuilder::default();
        turn.apply_message(&value, on_delta, emitted)
            .map_err(Failure::fatal)?;
        turn.finish().map_err(Failure::fatal)
    }

    fn body_error(&self, err: &reqwest::Error) -> Failure {
        Failure::retryable(ProviderError::Transport(format!(
            "provider {}: reading the response failed: {}",
            self.name,
            describe_reqwest_error(err)
        )))
    }

    fn first_byte_timeout_error(&self) -> ProviderError {
        ProviderError::Timeout(format!(
            "provider {}: no response within {} ms (first-byte timeout)",
            self.name,
            self.first_byte_timeout.as_millis()
        ))
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    async fn complete(
        &self,
        request: &ModelRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<ModelTurn, ProviderError> {
        let authorization = self.authorization()?;
        let body = request_body(request)
            .map(Bytes::from)
            .map_err(|err| ProviderError::Config(format!("cannot encode the request: {err}")))?;
        let mut emitted = false;
        let mut retries = 0u32;
        loop {
            let failure = match self
                .attempt(&body, authorization.as_ref(), on_delta, &mut emitted)
                .await
            {
                Ok(turn) => return Ok(turn),
                Err(failure) => failure,
            };
            if !failure.retryable || emitted || retries >= self.max_retries {
                return Err(failure.error);
            }
            let wait = failure
                .retry_after
                .unwrap_or_else(|| self.backoff(retries))
                .min(MAX_RETRY_WAIT);
            retries += 1;
            match failure.status {
                Some(status) => tracing::warn!(
                    provider = %self.name,
                    status,
                    retry = retries,
                    max_retries = self.max_retries,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "model provider answered with a retryable status; retrying"
                ),
                None => tracing::warn!(
                    provider = %self.name,
                    error = %failure.error,
                    retry = retries,
                    max_retries = self.max_retries,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "model provider request failed; retrying"
                ),
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Why an attempt failed, and whether another may be made.
#[derive(Debug)]
struct Failure {
    error: ProviderError,
    retryable: bool,
    retry_after: Option<Duration>,
    status: Option<u16>,
}

impl Failure {
    fn fatal(error: ProviderError) -> Self {
        Self {
            error,
            retryable: false,
            retry_after: None,
            status: None,
        }
    }

    fn retryable(error: ProviderError) -> Self {
        Self {
            error,
            retryable: true,
            retry_after: None,
            status: None,
        }
    }
}

fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// The request body in OpenAI's format, written straight from the request: no JSON tree is
/// built first, so the history's texts and the tools' schemas are serialised in place instead
/// of being copied into one (and dropped) on every model call.
pub(crate) fn request_body(request: &ModelRequest) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&RequestBody {
        model: &request.model,
        messages: request.messages.iter().map(MessageBody::new).collect(),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        tools: request
            .tools
            .iter()
            .map(|tool| ToolBody {
                kind: "function",
                function: ToolFunction {
                    name: &tool.name,
                    description: &tool.description,
                    parameters: &tool.parameters,
                },
            })
            .collect(),
        temperature: request.temperature,
        max_tokens: request.max_output_tokens,
    })
}

#[derive(serde::Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<MessageBody<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(serde::Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(serde::Serialize)]
struct ToolBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunction<'a>,
}

#[derive(serde::Serialize)]
struct ToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(serde::Serialize)]
struct MessageBody<'a> {
    role: &'static str,
    /// `None` (null): OpenAI's own form for a message that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> MessageBody<'a> {
    fn new(message: &'a ChatMessage) -> Self {
        let role = match message.role {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        };
        let only_calls = message.role == ChatRole::Assistant
            && !message.tool_calls.is_empty()
            && message.content.is_empty();
        Self {
            role,
            content: (!only_calls).then_some(message.content.as_str()),
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| CallBody {
                    id: &call.id,
                    kind: "function",
                    function: CallFunction {
                        name: &call.name,
                        // OpenAI takes the arguments as a JSON text.
                        arguments: call.arguments.to_string(),
                    },
                })
                .collect(),
            tool_call_id: message.tool_call_id.as_deref(),
        }
    }
}

#[derive(serde::Serialize)]
struct CallBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(serde::Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    arguments: String,
}

/// A tool call being assembled from stream fragments.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The turn being assembled from chunks.
#[derive(Debug, Default)]
struct TurnBuilder {
    text: String,
    /// Keyed by the provider's `index` (or an invented one when it sends none).
    calls: BTreeMap<u64, PartialCall>,
    /// The key the last index-less fragment went to.
    last_call: Option<u64>,
    usage: Option<Usage>,
    finish_reason: Option<FinishReason>,
    /// A non-empty `finish_reason` arrived (even an unknown one): the answer is complete.
    finish_reason_seen: bool,
}

impl TurnBuilder {
    /// One streamed chunk (`chat.completion.chunk`).
    fn apply_chunk(
        &mut self,
        chunk: &Value,
        on_delta: DeltaSink<'_>,
        emitted: &mut bool,
    ) -> Result<(), ProviderError> {
        self.apply_usage(chunk);
        let Some(choice) = first_choice(chunk) else {
            return Ok(());
        };
        // Some servers put `message` where `delta` belongs.
        let delta = choice
            .get("delta")
            .filter(|d| d.is_object())
            .or_else(|| choice.get("message"));
        if let Some(delta) = delta {
            if let Some(text) = delta.get("content").and_then(content_text) {
                if !text.is_empty() {
                    self.text.push_str(&text);
                    *emitted = true;
                    on_delta(&text);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for fragment in calls {
                    self.apply_call_fragment(fragment);
                }
            }
        }
        self.apply_finish_reason(choice.get("finish_reason"));
        Ok(())
    }

    /// A whole non-streamed answer (`chat.completion`).
    fn apply_message(
        &mut self,
        response: &Value,
        on_delta: DeltaSink<'_>,
        emitted: &mut bool,
    ) -> Result<(), ProviderError> {
        self.apply_usage(response);
        let choice = first_choice(response).ok_or_else(|| {
            ProviderError::Protocol("the response has no choices[0].message".to_owned())
        })?;
        let message = choice
            .get("message")
            .or_else(|| choice.get("delta"))
            .filter(|m| m.is_object())
            .ok_or_else(|| {
                ProviderError::Protocol("the response has no choices[0].message".to_owned())
            })?;
        if let Some(text) = message.get("content").and_then(content_text) {
            if !text.is_empty() {
                self.text.push_str(&text);
                *emitted = true;
                on_delta(&text);
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                // Whole calls: each is its own entry whatever `index` says.
                let key = position as u64;
                self.merge_fragment(key, call);
            }
        }
        self.apply_finish_reason(choice.get("finish_reason"));
        self.finish_reason_seen = true;
        Ok(())
    }

    fn apply_usage(&mut self, value: &Value) {
        let Some(usage) = value.get("usage").filter(|u| u.is_object()) else {
            return;
        };
        let count = |field: &str| {
            usage
                .get(field)
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
                .unwrap_or(0)
        };
        self.usage = Some(Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        });
    }

    fn apply_finish_reason(&mut self, reason: Option<&Value>) {
        let Some(reason) = reason.and_then(Value::as_str).map(str::trim) else {
            return;
        };
        if reason.is_empty() {
            return;
        }
        self.finish_reason_seen = true;
        self.finish_reason = match reason {
            "stop" | "end_turn" | "eos" => Some(FinishReason::Stop),
            "tool_calls" | "function_call" | "tool_use" => Some(FinishReason::ToolCalls),
            "length" | "max_tokens" => Some(FinishReason::Length),
            "content_filter" => Some(FinishReason::ContentFilter),
            _ => None,
        };
    }

    fn apply_call_fragment(&mut self, fragment: &Value) {
        let id = fragment
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        let key = match fragment.get("index").and_then(Value::as_u64) {
            Some(index) => index,
            // No index (some servers send whole calls this way): a new id starts a new call,
            // anything else continues the last one.
            None => match id {
                Some(id) => match self.calls.iter().find(|(_, call)| call.id == id) {
                    Some((key, _)) => *key,
                    None => self.next_free_key(),
                },
                None => self.last_call.unwrap_or_else(|| self.next_free_key()),
            },
        };
        self.merge_fragment(key, fragment);
    }

    fn next_free_key(&self) -> u64 {
        self.calls
            .last_key_value()
            .map_or(0, |(key, _)| key.saturating_add(1))
    }

    fn merge_fragment(&mut self, key: u64, fragment: &Value) {
        self.last_call = Some(key);
        let call = self.calls.entry(key).or_default();
        if let Some(id) = fragment
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        {
            if call.id.is_empty() {
                call.id = id.to_owned();
            }
        }
        let function = fragment.get("function").unwrap_or(&Value::Null);
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            // OpenAI sends the name once; a server repeating it whole must not double it.
            if call.name.is_empty() {
                call.name = name.to_owned();
            } else if call.name != name {
                call.name.push_str(name);
            }
        }
        match function.get("arguments") {
            Some(Value::String(piece)) => call.arguments.push_str(piece),
            Some(Value::Null) | None => {}
            // Non-standard: arguments already as a JSON value.
            Some(other) => call.arguments = other.to_string(),
        }
    }

    fn finish(self) -> Result<ModelTurn, ProviderError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (key, call) in self.calls {
            let name = call.name.trim();
            if name.is_empty() {
                return Err(ProviderError::Protocol(format!(
                    "tool call {key} has no function name"
                )));
            }
            let id = if call.id.is_empty() {
                format!("call_{:016x}", random_u64())
            } else {
                call.id
            };
            tool_calls.push(ToolCall {
                id,
                name: name.to_owned(),
                arguments: parse_arguments(&call.arguments),
            });
        }
        let finish_reason = match self.finish_reason {
            Some(reason @ (FinishReason::Length | FinishReason::ContentFilter)) => reason,
            // Some servers say `stop` with tool calls; the calls decide.
            Some(FinishReason::Stop | FinishReason::ToolCalls) | None => {
                if tool_calls.is_empty() {
                    FinishReason::Stop
                } else {
                    FinishReason::ToolCalls
                }
            }
        };
        Ok(ModelTurn {
            text: self.text,
            tool_calls,
            usage: self.usage.unwrap_or_default(),
            finish_reason,
        })
    }
}

/// `choices[0]`, or the choice whose `index` is 0 when the server orders them otherwise.
fn first_choice(value: &Value) -> Option<&Value> {
    let choices = value.get("choices")?.as_array()?;
    choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(0))
        .or_else(|| choices.first())
}

/// Text content: a string, or an array of `{"type":"text","text":…}` parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
                .collect(),
        ),
        _ => None,
    }
}

/// Arguments text → JSON: empty → `{}`, invalid → `{"_raw": text}`.
fn parse_arguments(text: &str) -> Value {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Null) => Value::Object(Map::new()),
        Ok(value) => value,
        Err(_) => json!({ "_raw": text }),
    }
}

/// An error object sent in place of a chunk (OpenRouter and others do this mid-stream), or an
/// `event: error`.
fn stream_error(value: &Value, event: Option<&str>) -> Option<Failure> {
    let error = match value.get("error") {
        Some(error) if !error.is_null() => error,
        _ if event == Some("error") => value,
        _ => return None,
    };
    let message = error_text(error).unwrap_or_else(|| "unspecified error".to_owned());
    let code = error
        .get("code")
        .or_else(|| error.get("status"))
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c));
    Some(match code {
        Some(status) => Failure {
            error: ProviderError::Status { status, message },
            retryable: is_retryable_status(status),
            retry_after: None,
            status: Some(status),
        },
        None => Failure::fatal(ProviderError::Protocol(format!(
            "the provider reported an error: {message}"
        ))),
    })
}

/// The message of an error body: `{"error":{"message"}}`, `{"error":"…"}`, `{"message"}`,
/// `{"detail"}`, or the body's text; truncated.
fn error_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let message = match serde_json::from_str::<Value>(text) {
        Ok(value) => value
            .get("error")
            .and_then(error_text)
            .or_else(|| error_text(&value))
            .unwrap_or_else(|| text.to_owned()),
        Err(_) => text.to_owned(),
    };
    Some(truncate_chars(&message, MAX_ERROR_MESSAGE_CHARS))
}

fn error_text(error: &Value) -> Option<String> {
    match error {
        Value::String(message) => Some(message.clone()),
        Value::Object(fields) => ["message", "detail", "error"]
            .iter()
            .find_map(|field| fields.get(*field).and_then(Value::as_str))
            .map(str::to_owned),
        _ => None,
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `Retry-After` as seconds (integer or decimal) or an HTTP date.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(Duration::from_secs_f64(
                seconds.min(MAX_RETRY_WAIT.as_secs_f64()),
            ));
        }
        return None;
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads at most `limit` bytes of a body, each chunk within `idle`; `None` when it fails.
async fn read_limited(
    response: &mut reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < limit {
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Some(body),
            Ok(Err(_)) | Err(_) => return (!body.is_empty()).then_some(body),
        }
    }
    body.truncate(limit);
    Some(body)
}

/// The error and its causes, without the URL (it may carry credentials in its query).
fn describe_reqwest_error(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else if err.is_body() || err.is_decode() {
        "the response body broke off".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A random number for jitter and invented ids, from the standard library's randomly seeded
/// hasher (no `rand` dependency for this).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::provider::{ProviderKind, ToolSpec};

    fn config(base_url: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: base_url.map(str::to_owned),
            api_key_env: None,
            first_byte_timeout_seconds: 60,
            idle_timeout_seconds: 60,
            max_retries: 3,
        }
    }

    #[test]
    fn new_requires_a_usable_base_url() {
        for bad in [
            None,
            Some(""),
            Some("   "),
            Some("not a url"),
            Some("ftp://x/v1"),
        ] {
            let err = OpenAiProvider::new("p", &config(bad)).unwrap_err();
            assert!(matches!(err, ProviderError::Config(_)), "{bad:?}: {err}");
        }
        let provider = OpenAiProvider::new("p", &config(Some("http://localhost:1/v1/"))).unwrap();
        assert_eq!(
            provider.endpoint.as_str(),
            "http://localhost:1/v1/chat/completions"
        );
        let mut zero = config(Some("http://localhost:1/v1"));
        zero.idle_timeout_seconds = 0;
        assert!(matches!(
            OpenAiProvider::new("p", &zero),
            Err(ProviderError::Config(_))
        ));
    }

    fn apply_all(chunks: &[Value]) -> (Result<ModelTurn, ProviderError>, Vec<String>) {
        let deltas = Mutex::new(Vec::new());
        let sink = |d: &str| deltas.lock().unwrap().push(d.to_owned());
        let mut turn = TurnBuilder::default();
        let mut emitted = false;
        for chunk in chunks {
            turn.apply_chunk(chunk, &sink, &mut emitted).unwrap();
        }
        (turn.finish(), deltas.into_inner().unwrap())
    }

    #[test]
    fn assembles_text_and_usage() {
        let (turn, deltas) = apply_all(&[
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null}],"x":1}),
            json!({"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}),
        ]);
        let turn = turn.unwrap();
        assert_eq!(deltas, ["Hel", "lo"]);
        assert_eq!(turn.text, "Hello");
        assert_eq!(turn.finish_reason, FinishReason::Stop);
        assert_eq!(
            turn.usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 2
            }
        );
    }

    #[test]
    fn assembles_parallel_tool_calls_from_fragments() {
        let (turn, _) = apply_all(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{\"tz\""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":":\"UTC\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":""}]}),
        ]);
        let turn = turn.unwrap();
        assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            turn.tool_calls,
            [
                ToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                    arguments: json!({"city":"Paris"})
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                    arguments: json!({"tz":"UTC"})
                },
            ]
        );
    }

    #[test]
    fn tolerates_index_less_calls_missing_ids_and_object_arguments() {
        let (turn, _) = apply_all(&[
            json!({"choices":[{"delta":{"tool_calls":[{"id":"x1","function":{"name":"a","arguments":{"k":1}}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"id":"x2","function":{"name":"b","arguments":"not json"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"function":{"name":"c"}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"stop"}]}),
        ]);
        let turn = turn.unwrap();
        // `stop` with tool calls still means the tools must run.
        assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
        assert_eq!(turn.tool_calls.len(), 2);
        assert_eq!(turn.tool_calls[0].arguments, json!({"k":1}));
        assert_eq!(turn.tool_calls[1].id, "x2");
        // The index-less, id-less fragment continued call x2 (a name fragment).
        assert_eq!(turn.tool_calls[1].name, "bc");
        assert_eq!(turn.tool_calls[1].arguments, json!({"_raw":"not json"}));

        let (turn, _) = apply_all(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"name":"f"}}]}}]}),
        ]);
        let turn = turn.unwrap();
        assert!(turn.tool_calls[0].id.starts_with("call_"));
        assert_eq!(turn.tool_calls[0].arguments, json!({}));
        assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    }

    #[test]
    fn a_tool_call_without_a_name_is_a_protocol_error() {
        let (turn, _) = apply_all(&[
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"arguments":"{}"}}]}}]}),
        ]);
        assert!(matches!(turn, Err(ProviderError::Protocol(_))));
    }

    #[test]
    fn finish_reasons_map_and_unknown_ones_fall_back() {
        for (reason, expected) in [
            ("length", FinishReason::Length),
            ("content_filter", FinishReason::ContentFilter),
            ("stop", FinishReason::Stop),
            ("weird", FinishReason::Stop),
        ] {
            let (turn, _) = apply_all(&[
                json!({"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":reason}]}),
            ]);
            assert_eq!(turn.unwrap().finish_reason, expected, "{reason}");
        }
    }

    #[test]
    fn arguments_parsing() {
        assert_eq!(parse_arguments(""), json!({}));
        assert_eq!(parse_arguments("  "), json!({}));
        assert_eq!(parse_arguments("null"), json!({}));
        assert_eq!(parse_arguments("{\"a\":[1]}"), json!({"a":[1]}));
        assert_eq!(parse_arguments("{\"a\":"), json!({"_raw":"{\"a\":"}));
    }

    #[test]
    fn error_messages_are_extracted_and_truncated() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Rate limit reached","type":"x"}}"#).unwrap(),
            "Rate limit reached"
        );
        assert_eq!(error_message(br#"{"error":"nope"}"#).unwrap(), "nope");
        assert_eq!(error_message(br#"{"detail":"bad"}"#).unwrap(), "bad");
        assert_eq!(error_message(b"plain text").unwrap(), "plain text");
        assert_eq!(error_message(b"  "), None);
        let long = "x".repeat(2000);
        let message = error_message(long.as_bytes()).unwrap();
        assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            headers
        };
        assert_eq!(
            parse_retry_after(&header("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&header(" 1.5 "), now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&header(&later), now),
            Some(Duration::from_secs(12))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&header(&earlier), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&header("soon"), now), None);
        assert_eq!(parse_retry_after(&header("-3"), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let provider = OpenAiProvider::new("p", &config(Some("http://localhost:1/v1"))).unwrap();
        for retry in 0..6 {
            let full = Duration::from_millis(250) * 2u32.pow(retry);
            let wait = provider.backoff(retry);
            assert!(wait >= full / 2 && wait <= full, "retry {retry}: {wait:?}");
        }
        assert!(provider.backoff(40) <= MAX_RETRY_WAIT);
    }

    #[test]
    fn request_body_has_the_openai_shape() {
        let request = ModelRequest {
            model: "gpt-test".into(),
            messages: vec![
                ChatMessage {
                    role: ChatRole::System,
                    content: "sys".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                ChatMessage {
                    role: ChatRole::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "f".into(),
                        arguments: json!({"a":1}),
                    }],
                    tool_call_id: None,
                },
                ChatMessage {
                    role: ChatRole::Tool,
                    content: "r".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("call_1".into()),
                },
            ],
            tools: vec![ToolSpec {
                name: "f".into(),
                description: "d".into(),
                parameters: json!({"type":"object"}),
            }]
            .into(),
            temperature: None,
            max_output_tokens: Some(64),
        };
        let expected = json!({
                "model": "gpt-test",
                "messages": [
                    {"role":"system","content":"sys"},
                    {"role":"assistant","content":null,"tool_calls":[
                        {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}
                    ]},
                    {"role":"tool","content":"r","tool_call_id":"call_1"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}],
                "max_tokens": 64,
        });
        let body = request_body(&request).unwrap();
        // The same text, keys in the same order, as the tree above serialised.
        assert_eq!(
            String::from_utf8(body).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
        let mut no_tools = request;
        no_tools.tools = Default::default();
        no_tools.temperature = Some(0.5);
        let body: Value = serde_json::from_slice(&request_body(&no_tools).unwrap()).unwrap();
        assert!(body.get("tools").is_none());
        assert_eq!(body["temperature"], json!(0.5));
    }

    #[test]
    fn stream_errors_become_status_or_protocol_errors() {
        let failure =
            stream_error(&json!({"error":{"message":"overloaded","code":503}}), None).unwrap();
        assert!(failure.retryable);
        assert!(matches!(
            failure.error,
            ProviderError::Status { status: 503, .. }
        ));
        let failure = stream_error(&json!({"message":"boom"}), Some("error")).unwrap();
        assert!(!failure.retryable);
        assert!(matches!(failure.error, ProviderError::Protocol(m) if m.contains("boom")));
        assert!(stream_error(&json!({"choices":[], "error": null}), None).is_none());
    }
}
