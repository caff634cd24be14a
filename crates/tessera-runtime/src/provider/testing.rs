//! `ScriptedModelServer`: a real local HTTP server speaking the OpenAI-compatible
//! chat-completions protocol, replaying scripted answers, for tests (this crate's and others')
//! and load tests. Compiled with the `testing` feature.
//!
//! Each `POST /v1/chat/completions` takes the next [`Script`] from a queue. When the queue is
//! empty the server answers with its *fallback*: by default a `500` whose message says the script
//! is exhausted (so a test that makes more model calls than it scripted fails loudly, naming the
//! request); [`ScriptedModelServer::echo`] starts a server whose fallback is [`Script::Echo`],
//! which streams the last user message back in two chunks with no delay, for load tests.
//!
//! Streamed answers follow OpenAI's shape: a first chunk with the role, one chunk per piece of
//! content or tool-call fragment, a chunk with the `finish_reason`, a usage chunk with empty
//! `choices` when the request asked for it (`stream_options.include_usage`), then
//! `data: [DONE]`. A request with `"stream": false` (or none) gets one `chat.completion` JSON
//! document instead. Token counts are a token per four characters, rounded up, of the
//! conversation's contents (prompt) and of the output (completion).
//!
//! Every request body and `Authorization` header is recorded for assertions.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ProviderConfig, ProviderKind};

/// One scripted answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// Streams these content deltas, then `finish_reason: "stop"`, usage and `[DONE]`.
    Text(Vec<String>),
    /// One turn calling these tools: `(name, arguments as JSON text)`. Each call's id is
    /// `call_N` (N counts calls across the server's life); its name comes whole in its first
    /// fragment, its arguments in up to three fragments, interleaved between the calls. Ends with
    /// `finish_reason: "tool_calls"`, usage and `[DONE]`. Arguments need not be valid JSON.
    ToolCalls(Vec<(String, String)>),
    /// Answers this status with `{"error":{"message":"scripted status N",…}}` and, when given,
    /// `Retry-After: SECONDS`.
    Status(u16, Option<u64>),
    /// Waits `first_byte_after` before sending the response headers, then streams `chunks` as
    /// content deltas with `gap` between them, then finishes like [`Script::Text`].
    Slow {
        first_byte_after: Duration,
        chunks: Vec<String>,
        gap: Duration,
    },
    /// Sends the event `data: {not json`, then `[DONE]`.
    Malformed,
    /// Sends the headers of a stream, then nothing, until the client goes away.
    Hang,
    /// Streams these content deltas, then breaks the connection (no finish reason, no `[DONE]`).
    Broken(Vec<String>),
    /// Sends each string as the data of one event (`data: …\n\n`), verbatim, and nothing else
    /// (add `"[DONE]"` yourself if wanted). For provider quirks.
    Sse(Vec<String>),
    /// Answers `200 application/json` with this document (a server that ignores `stream`).
    Json(Value),
    /// Answers `200` with this content type and body, written as these separate chunks.
    Raw {
        content_type: String,
        chunks: Vec<Vec<u8>>,
    },
    /// Streams the content of the last user message back in two chunks.
    Echo,
}

impl Script {
    /// `Script::Text` from anything string-like: `Script::text(["Hel", "lo"])`.
    pub fn text<I, S>(chunks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Text(chunks.into_iter().map(Into::into).collect())
    }

    /// One tool call: `Script::tool_call("get_weather", json!({"city": "Paris"}))`.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Self::ToolCalls(vec![(name.into(), arguments.to_string())])
    }

    /// Several tool calls in one turn, with JSON arguments.
    pub fn tool_calls<I, N>(calls: I) -> Self
    where
        I: IntoIterator<Item = (N, Value)>,
        N: Into<String>,
    {
        Self::ToolCalls(
            calls
                .into_iter()
                .map(|(name, arguments)| (name.into(), arguments.to_string()))
                .collect(),
        )
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The JSON body (`Value::Null` when it was not JSON; such a request gets a 400 and uses no
    /// script).
    pub body: Value,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
}

struct Shared {
    queue: Mutex<VecDeque<Script>>,
    fallback: Mutex<Option<Script>>,
    /// Each request's raw body and `Authorization` header; the record is parsed only when
    /// asked for ([`ScriptedModelServer::requests`]), so that a load test does not pay for a
    /// copy of every body it never reads.
    requests: Mutex<Vec<(Bytes, Option<String>)>>,
    request_count: AtomicUsize,
    call_count: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not make every later request panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scripted server. It runs on the Tokio runtime that started it and stops when dropped.
pub struct ScriptedModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModelServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ScriptedModelServer {
    /// Starts a server on `127.0.0.1:0` with an empty queue; when the queue runs out it answers
    /// `500` "script exhausted".
    ///
    /// # Panics
    /// When no local port can be bound (a broken test machine).
    pub async fn start() -> Self {
        Self::start_with_fallback(None).await
    }

    /// Starts a server that answers every request not otherwise scripted with [`Script::Echo`]:
    /// zero latency, for load tests and demos.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn echo() -> Self {
        Self::start_with_fallback(Some(Script::Echo)).await
    }

    async fn start_with_fallback(fallback: Option<Script>) -> Self {
        let listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(listener) => listener,
            Err(err) => panic!("ScriptedModelServer: cannot bind 127.0.0.1:0: {err}"),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => panic!("ScriptedModelServer: no local address: {err}"),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            requests: Mutex::new(Vec::new()),
            request_count: AtomicUsize::new(0),
            call_count: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/chat/completions", post(chat_completions))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            // Like a real provider, stream chunks without Nagle delays (~40 ms each otherwise).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "ScriptedModelServer stopped");
            }
        });
        Self { addr, shared, task }
    }

    /// The base URL to put in `ProviderConfig.base_url`: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `openai` provider configuration pointing at this server: no API key, the default
    /// timeouts (60 s) and retries (3).
    pub fn provider_config(&self) -> ProviderConfig {
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: Some(self.url()),
            api_key_env: None,
            first_byte_timeout_seconds: 60,
            idle_timeout_seconds: 60,
            max_retries: 3,
        }
    }

    /// Queues the answer to a future request (first in, first out).
    pub fn push(&self, script: Script) {
        lock(&self.shared.queue).push_back(script);
    }

    /// Queues several answers in order.
    pub fn push_all(&self, scripts: impl IntoIterator<Item = Script>) {
        lock(&self.shared.queue).extend(scripts);
    }

    /// Scripts still queued.
    pub fn remaining(&self) -> usize {
        lock(&self.shared.queue).len()
    }

    /// Replaces the answer used when the queue is empty; `None` = `500` "script exhausted".
    pub fn set_fallback(&self, script: Option<Script>) {
        *lock(&self.shared.fallback) = script;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let recorded = lock(&self.shared.requests).clone();
        recorded
            .into_iter()
            .map(|(body, authorization)| RecordedRequest {
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                authorization,
            })
            .collect()
    }

    /// How many chat-completions requests arrived (also counts those forgotten by
    /// [`Self::clear_requests`]).
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests (long load tests).
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for ScriptedModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {"message": "ScriptedModelServer serves POST /v1/chat/completions only", "type": "not_found"}})),
    )
        .into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let number = shared.request_count.fetch_add(1, Ordering::SeqCst) + 1;
    let authorization = headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let seen = Seen::of(&body);
    lock(&shared.requests).push((body, authorization));
    let Some(request) = seen else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the request body is not JSON",
            None,
        );
    };

    let script = lock(&shared.queue)
        .pop_front()
        .or_else(|| lock(&shared.fallback).clone());
    let Some(script) = script else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "ScriptedModelServer: script exhausted (request {number} had no scripted response)"
            ),
            None,
        );
    };
    let ctx = Context {
        stream: request.stream,
        include_usage: request.include_usage,
        model: request.model,
        id: format!("chatcmpl-scripted-{number}"),
        prompt_chars: request.prompt_chars,
    };

    match script {
        Script::Text(chunks) => ctx.answer(&shared, chunks, Vec::new(), Duration::ZERO),
        Script::ToolCalls(calls) => ctx.answer(&shared, Vec::new(), calls, Duration::ZERO),
        Script::Echo => {
            let text = request.last_user_content;
            let chunks = split_in_two(&text);
            ctx.answer(&shared, chunks, Vec::new(), Duration::ZERO)
        }
        Script::Slow {
            first_byte_after,
            chunks,
            gap,
        } => {
            tokio::time::sleep(first_byte_after).await;
            ctx.answer(&shared, chunks, Vec::new(), gap)
        }
        Script::Status(status, retry_after) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error_response(
                status,
                &format!("scripted status {}", status.as_u16()),
                retry_after,
            )
        }
        Script::Malformed => stream_response(
            "text/event-stream",
            vec![Step::Send(event("{not json")), Step::Send(event("[DONE]"))],
        ),
        Script::Hang => stream_response("text/event-stream", vec![Step::Hang]),
        Script::Broken(chunks) => {
            let mut steps = vec![Step::Send(event(
                &ctx.chunk(json!({"role": "assistant", "content": ""}), None),
            ))];
            steps.extend(
                chunks
                    .iter()
                    .map(|c| Step::Send(event(&ctx.chunk(json!({"content": c}), None)))),
            );
            steps.push(Step::Break);
            stream_response("text/event-stream", steps)
        }
        Script::Sse(events) => stream_response(
            "text/event-stream",
            events.iter().map(|data| Step::Send(event(data))).collect(),
        ),
        Script::Json(document) => (StatusCode::OK, axum::Json(document)).into_response(),
        Script::Raw {
            content_type,
            chunks,
        } => stream_response(
            &content_type,
            chunks
                .into_iter()
                .map(|c| Step::Send(Bytes::from(c)))
                .collect(),
        ),
    }
}

/// What the answer depends on in the request.
struct Context {
    stream: bool,
    include_usage: bool,
    model: String,
    id: String,
    prompt_chars: usize,
}

impl Context {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "system_fingerprint": "fp_scripted",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
        .to_string()
    }

    fn usage(&self, output_chars: usize) -> Value {
        let prompt = self.prompt_chars.div_ceil(4);
        let completion = output_chars.div_ceil(4);
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    /// A text or tool-call turn, streamed or as one document.
    fn answer(
        &self,
        shared: &Shared,
        chunks: Vec<String>,
        calls: Vec<(String, String)>,
        gap: Duration,
    ) -> Response {
        let calls: Vec<(String, String, String)> = calls
            .into_iter()
            .map(|(name, arguments)| {
                let n = shared.call_count.fetch_add(1, Ordering::SeqCst) + 1;
                (format!("call_{n}"), name, arguments)
            })
            .collect();
        let text: String = chunks.concat();
        let output_chars = text.chars().count()
            + calls
                .iter()
                .map(|(_, name, args)| name.chars().count() + args.chars().count())
                .sum::<usize>();
        let finish_reason = if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };

        if !self.stream {
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            let mut message = json!({"role": "assistant", "content": if calls.is_empty() { json!(text) } else { Value::Null }});
            if !tool_calls.is_empty() {
                message["tool_calls"] = Value::Array(tool_calls);
            }
            let document = json!({
                "id": self.id,
                "object": "chat.completion",
                "created": 0,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
                "usage": self.usage(output_chars),
            });
            return (StatusCode::OK, axum::Json(document)).into_response();
        }

        let mut steps = vec![Step::Send(event(&self.chunk(
            json!({"role": "assistant", "content": if calls.is_empty() { json!("") } else { Value::Null }}),
            None,
        )))];
        for (i, piece) in chunks.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                steps.push(Step::Sleep(gap));
            }
            steps.push(Step::Send(event(
                &self.chunk(json!({"content": piece}), None),
            )));
        }
        // Each call's header (id, name) first, then the argument fragments round-robin.
        for (index, (id, name, _)) in calls.iter().enumerate() {
            steps.push(Step::Send(event(&self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ))));
        }
        let fragments: Vec<Vec<String>> = calls
            .iter()
            .map(|(_, _, arguments)| split_in_pieces(arguments, 3))
            .collect();
        let rounds = fragments.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            for (index, pieces) in fragments.iter().enumerate() {
                if let Some(piece) = pieces.get(round) {
                    steps.push(Step::Send(event(&self.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        None,
                    ))));
                }
            }
        }
        steps.push(Step::Send(event(
            &self.chunk(json!({}), Some(finish_reason)),
        )));
        if self.include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": self.usage(output_chars),
            });
            steps.push(Step::Send(event(&usage.to_string())));
        }
        steps.push(Step::Send(event("[DONE]")));
        stream_response("text/event-stream", steps)
    }
}

/// What the body writer does, in order.
enum Step {
    Send(Bytes),
    Sleep(Duration),
    /// Fail the body: the connection is cut mid-response.
    Break,
    /// Send nothing more, keeping the response open until the client leaves.
    Hang,
}

fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn stream_response(content_type: &str, steps: Vec<Step>) -> Response {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Send(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::Break => {
                    // Let the chunks before this one reach the client first.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx
                        .send(Err(std::io::Error::other("scripted connection break")))
                        .await;
                    return;
                }
                Step::Hang => {
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

fn error_response(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    let body = json!({"error": {"message": message, "type": "scripted", "param": null, "code": status.as_u16()}});
    (status, headers, axum::Json(body)).into_response()
}

/// What the server reads of a request.
struct Seen {
    stream: bool,
    include_usage: bool,
    model: String,
    /// Characters of all the messages' text contents.
    prompt_chars: usize,
    last_user_content: String,
}

impl Seen {
    /// `None` when the body is not JSON. A JSON object in the shape OpenAI's clients send is
    /// read without building a JSON tree (the tools and their schemas are skipped, not copied);
    /// any other JSON is read from its tree, leniently. (Skipped values are only scanned, so a
    /// number too large for an `f64` in them no longer makes the body "not JSON"; and serde
    /// reads a nested JSON array in place of a message object. OpenAI's clients send neither.)
    fn of(body: &[u8]) -> Option<Self> {
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if let Some(request) = object
            .then(|| serde_json::from_slice::<Incoming<'_>>(body).ok())
            .flatten()
        {
            let text =
                |m: &IncomingMessage<'_>| m.content.as_deref().unwrap_or_default().to_owned();
            return Some(Seen {
                stream: request.stream == Some(true),
                include_usage: request.stream_options.and_then(|o| o.include_usage) == Some(true),
                model: request.model.as_deref().unwrap_or("scripted").to_owned(),
                prompt_chars: request
                    .messages
                    .iter()
                    .filter_map(|m| m.content.as_deref())
                    .map(|c| c.chars().count())
                    .sum(),
                last_user_content: request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role.as_deref() == Some("user"))
                    .map(text)
                    .unwrap_or_default(),
            });
        }
        let request = serde_json::from_slice::<Value>(body).ok()?;
        Some(Seen {
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("scripted")
                .to_owned(),
            prompt_chars: prompt_chars(&request),
            last_user_content: last_user_content(&request),
        })
    }
}

/// The parts of an OpenAI-shaped request [`Seen`] reads; serde skips the rest.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    stream: Option<bool>,
    stream_options: Option<IncomingStreamOptions>,
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    messages: Vec<IncomingMessage<'a>>,
}

#[derive(serde::Deserialize)]
struct IncomingStreamOptions {
    include_usage: Option<bool>,
}

#[derive(serde::Deserialize)]
struct IncomingMessage<'a> {
    #[serde(borrow)]
    role: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

fn prompt_chars(request: &Value) -> usize {
    request
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(|c| c.chars().count())
                .sum()
        })
        .unwrap_or(0)
}

fn last_user_content(request: &Value) -> String {
    request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned()
}

/// Splits on a character boundary near the middle; empty text gives no pieces.
fn split_in_two(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let half = text.chars().count() / 2;
    let cut = text.char_indices().nth(half).map_or(text.len(), |(i, _)| i);
    let (a, b) = text.split_at(cut);
    [a, b]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits into at most `n` non-empty pieces on character boundaries.
fn split_in_pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let size = chars.len().div_ceil(n.max(1));
    chars
        .chunks(size)
        .map(|piece| piece.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(body: &Value) -> (bool, bool, String, usize, String) {
        let s = Seen::of(&serde_json::to_vec(body).expect("json")).expect("read");
        (
            s.stream,
            s.include_usage,
            s.model,
            s.prompt_chars,
            s.last_user_content,
        )
    }

    /// An OpenAI-shaped body is read without a tree; anything else JSON is read from its tree
    /// as before; a body that is not JSON is refused.
    #[test]
    fn requests_are_read_in_either_shape() {
        let openai = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "héllo"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]},
                {"role": "tool", "content": "r", "tool_call_id": "c"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        });
        let bytes = serde_json::to_vec(&openai).unwrap();
        assert!(serde_json::from_slice::<Incoming<'_>>(&bytes).is_ok());
        assert_eq!(
            seen(&openai),
            (true, true, "m".to_owned(), 9, "héllo".to_owned())
        );
        // Content as parts and a stream flag that is no boolean: not the shape read directly.
        let odd = json!({
            "stream": "yes",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "user", "content": [{"type": "text", "text": "x"}]},
            ],
        });
        assert!(
            serde_json::from_slice::<Incoming<'_>>(&serde_json::to_vec(&odd).unwrap()).is_err()
        );
        assert_eq!(
            seen(&odd),
            (false, false, "scripted".to_owned(), 5, String::new())
        );
        assert_eq!(
            seen(&json!([])),
            (false, false, "scripted".to_owned(), 0, String::new())
        );
        // An array is no request object, whatever serde would make of it.
        let array =
            json!([true, {"include_usage": true}, "m", [{"role": "user", "content": "hi"}]]);
        assert_eq!(
            seen(&array),
            (false, false, "scripted".to_owned(), 0, String::new())
        );
        assert!(Seen::of(b"not json").is_none());
    }
}
