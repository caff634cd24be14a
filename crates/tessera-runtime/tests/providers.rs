//! The model providers against a real local OpenAI-compatible server (`ScriptedModelServer`),
//! and the provider registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_runtime::provider::openai::OpenAiProvider;
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_runtime::provider::{
    ChatMessage, ChatRole, FinishReason, ModelProvider, ModelRequest, ModelTurn, ProviderConfig,
    ProviderError, ProviderKind, ProviderRegistry, ToolCall, ToolSpec, Usage,
};

fn message(role: ChatRole, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.to_owned(),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

fn request(user: &str) -> ModelRequest {
    ModelRequest {
        model: "gpt-scripted".to_owned(),
        messages: vec![
            message(ChatRole::System, "You are terse."),
            message(ChatRole::User, user),
        ],
        tools: Default::default(),
        temperature: None,
        max_output_tokens: None,
    }
}

/// A provider for the server with fast back-off so retry tests stay quick.
fn provider(server: &ScriptedModelServer) -> OpenAiProvider {
    OpenAiProvider::new("scripted", &server.provider_config())
        .unwrap()
        .with_retry_base_delay(Duration::from_millis(10))
}

async fn complete(
    provider: &dyn ModelProvider,
    request: &ModelRequest,
) -> (Result<ModelTurn, ProviderError>, Vec<String>) {
    let deltas = Mutex::new(Vec::new());
    let sink = |d: &str| deltas.lock().unwrap().push(d.to_owned());
    let result = provider.complete(request, &sink).await;
    (result, deltas.into_inner().unwrap())
}

#[tokio::test]
async fn streams_text_in_order_and_records_usage() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::text(["Hel", "lo", ", w\u{f6}rld"]));
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    let turn = turn.unwrap();
    assert_eq!(deltas, ["Hel", "lo", ", w\u{f6}rld"]);
    assert_eq!(turn.text, "Hello, w\u{f6}rld");
    assert_eq!(turn.finish_reason, FinishReason::Stop);
    assert!(turn.tool_calls.is_empty());
    // The server counts a token per 4 characters: 16 prompt characters, 12 output characters.
    assert_eq!(
        turn.usage,
        Usage {
            prompt_tokens: 4,
            completion_tokens: 3
        }
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_tool_call() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::tool_call(
        "get_weather",
        json!({"city": "Paris", "unit": "celsius"}),
    ));
    let (turn, deltas) = complete(&provider(&server), &request("weather?")).await;
    let turn = turn.unwrap();
    assert!(deltas.is_empty());
    assert_eq!(turn.text, "");
    assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        turn.tool_calls,
        [ToolCall {
            id: "call_1".to_owned(),
            name: "get_weather".to_owned(),
            arguments: json!({"city": "Paris", "unit": "celsius"}),
        }]
    );
    assert!(turn.usage.completion_tokens > 0);
}

#[tokio::test]
async fn parallel_tool_calls_with_fragmented_arguments() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::ToolCalls(vec![
        (
            "search".to_owned(),
            r#"{"query": "rust sse parser", "limit": 10}"#.to_owned(),
        ),
        ("list_files".to_owned(), String::new()),
        (
            "write_file".to_owned(),
            r#"{"path": "notes/\u00e9t\u00e9.md", "content": "line 1\nline 2"}"#.to_owned(),
        ),
        ("broken".to_owned(), r#"{"a": "#.to_owned()),
    ]));
    let (turn, _) = complete(&provider(&server), &request("go")).await;
    let turn = turn.unwrap();
    assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    let calls: Vec<(&str, &str, &Value)> = turn
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), &c.arguments))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "call_1",
                "search",
                &json!({"query": "rust sse parser", "limit": 10})
            ),
            ("call_2", "list_files", &json!({})),
            (
                "call_3",
                "write_file",
                &json!({"path": "notes/\u{e9}t\u{e9}.md", "content": "line 1\nline 2"})
            ),
            ("call_4", "broken", &json!({"_raw": "{\"a\": "})),
        ]
    );
}

#[tokio::test]
async fn retries_429_honouring_retry_after() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Status(429, Some(1)));
    server.push(Script::text(["ok"]));
    let started = Instant::now();
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "ok");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let server = ScriptedModelServer::start().await;
    server.push_all([
        Script::Status(500, None),
        Script::Status(503, None),
        Script::text(["fine"]),
    ]);
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "fine");
    assert_eq!(deltas, ["fine"]);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_the_providers_message() {
    let server = ScriptedModelServer::start().await;
    let mut config = server.provider_config();
    config.max_retries = 2;
    let provider = OpenAiProvider::new("scripted", &config)
        .unwrap()
        .with_retry_base_delay(Duration::from_millis(5));
    server.push_all([
        Script::Status(500, None),
        Script::Status(502, None),
        Script::Status(500, None),
        Script::text(["never reached"]),
    ]);
    let (turn, _) = complete(&provider, &request("hi")).await;
    match turn.unwrap_err() {
        ProviderError::Status { status, message } => {
            assert_eq!(status, 500);
            assert_eq!(message, "scripted status 500");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.request_count(), 3);
    assert_eq!(server.remaining(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = ScriptedModelServer::start().await;
    server.push_all([Script::Status(400, None), Script::text(["no"])]);
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    assert!(matches!(
        turn.unwrap_err(),
        ProviderError::Status { status: 400, .. }
    ));
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn an_exhausted_script_says_so() {
    let server = ScriptedModelServer::start().await;
    let mut config = server.provider_config();
    config.max_retries = 0;
    let provider = OpenAiProvider::new("scripted", &config).unwrap();
    let (turn, _) = complete(&provider, &request("hi")).await;
    let err = turn.unwrap_err().to_string();
    assert!(err.contains("script exhausted"), "{err}");
}

#[tokio::test]
async fn a_slow_first_byte_times_out() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Slow {
        first_byte_after: Duration::from_secs(3),
        chunks: vec!["late".to_owned()],
        gap: Duration::ZERO,
    });
    let provider =
        provider(&server).with_timeouts(Duration::from_millis(300), Duration::from_secs(5));
    let started = Instant::now();
    let (turn, _) = complete(&provider, &request("hi")).await;
    assert!(matches!(turn.unwrap_err(), ProviderError::Timeout(_)));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.request_count(), 1, "timeouts are not retried");
}

#[tokio::test]
async fn headers_without_a_body_time_out_too() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Hang);
    let provider =
        provider(&server).with_timeouts(Duration::from_millis(300), Duration::from_secs(5));
    let (turn, _) = complete(&provider, &request("hi")).await;
    let err = turn.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn a_gap_between_chunks_beyond_the_idle_timeout_times_out() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Slow {
        first_byte_after: Duration::ZERO,
        chunks: vec!["a".to_owned(), "b".to_owned()],
        gap: Duration::from_secs(3),
    });
    let provider =
        provider(&server).with_timeouts(Duration::from_secs(5), Duration::from_millis(300));
    let (turn, deltas) = complete(&provider, &request("hi")).await;
    assert!(matches!(turn.unwrap_err(), ProviderError::Timeout(_)));
    assert_eq!(deltas, ["a"]);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn slow_but_within_the_timeouts_succeeds() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Slow {
        first_byte_after: Duration::from_millis(100),
        chunks: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
        gap: Duration::from_millis(100),
    });
    let provider = provider(&server).with_timeouts(Duration::from_secs(2), Duration::from_secs(2));
    let (turn, deltas) = complete(&provider, &request("hi")).await;
    assert_eq!(turn.unwrap().text, "abc");
    assert_eq!(deltas, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_malformed_chunk_is_a_protocol_error() {
    let server = ScriptedModelServer::start().await;
    server.push_all([Script::Malformed, Script::text(["no"])]);
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    let err = turn.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Protocol(m) if m.contains("not JSON")),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn no_retry_once_a_delta_was_emitted() {
    let server = ScriptedModelServer::start().await;
    server.push_all([
        Script::Broken(vec!["Hel".to_owned()]),
        Script::text(["Hello"]),
    ]);
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    let err = turn.unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert_eq!(deltas, ["Hel"]);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_stream_breaking_before_any_delta_is_retried() {
    let server = ScriptedModelServer::start().await;
    server.push_all([Script::Broken(Vec::new()), Script::text(["Hello"])]);
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "Hello");
    assert_eq!(deltas, ["Hello"]);
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_connection_refused_is_retried_then_reported() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ProviderConfig {
        kind: ProviderKind::Openai,
        base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        api_key_env: None,
        first_byte_timeout_seconds: 5,
        idle_timeout_seconds: 5,
        max_retries: 1,
    };
    let provider = OpenAiProvider::new("down", &config)
        .unwrap()
        .with_retry_base_delay(Duration::from_millis(5));
    let (turn, _) = complete(&provider, &request("hi")).await;
    let err = turn.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transport(m) if m.contains("down")),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "no URL in errors: {err}"
    );
}

fn chunk(delta: Value, finish_reason: Value) -> String {
    json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}).to_string()
}

#[tokio::test]
async fn tool_calls_without_a_finish_reason_end_in_tool_calls() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Sse(vec![
        chunk(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"x\""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            Value::Null,
        ),
        // No finish_reason at all, an unknown extra field, then the end.
        json!({"choices": [{"index": 0, "delta": {}}], "provider": "quirky"}).to_string(),
        "[DONE]".to_owned(),
    ]));
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    let turn = turn.unwrap();
    assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    assert_eq!(turn.tool_calls[0].arguments, json!({"x": 1}));
    assert_eq!(turn.usage, Usage::default());
}

#[tokio::test]
async fn a_stream_without_done_is_accepted_once_it_finished() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Sse(vec![
        chunk(json!({"content": "done"}), json!("")),
        chunk(json!({}), json!("stop")),
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).to_string(),
    ]));
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    let turn = turn.unwrap();
    assert_eq!(turn.text, "done");
    assert_eq!(
        turn.usage,
        Usage {
            prompt_tokens: 3,
            completion_tokens: 1
        }
    );
}

#[tokio::test]
async fn a_stream_ending_early_is_an_error() {
    let server = ScriptedModelServer::start().await;
    let mut config = server.provider_config();
    config.max_retries = 0;
    let provider = OpenAiProvider::new("scripted", &config).unwrap();
    server.push(Script::Sse(vec![chunk(
        json!({"content": "par"}),
        Value::Null,
    )]));
    let (turn, deltas) = complete(&provider, &request("hi")).await;
    assert!(matches!(turn.unwrap_err(), ProviderError::Transport(_)));
    assert_eq!(deltas, ["par"]);
}

#[tokio::test]
async fn an_error_event_mid_stream_is_retried_when_retryable() {
    let server = ScriptedModelServer::start().await;
    server.push_all([
        Script::Sse(vec![
            json!({"error": {"message": "Provider overloaded", "code": 503}}).to_string(),
        ]),
        Script::text(["recovered"]),
    ]);
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "recovered");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_non_streamed_json_answer_is_understood() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::Json(json!({
        "id": "x",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Looking it up.",
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"a\"}"}}]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    })));
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    let turn = turn.unwrap();
    assert_eq!(deltas, ["Looking it up."]);
    assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    assert_eq!(turn.tool_calls[0].name, "lookup");
    assert_eq!(turn.tool_calls[0].arguments, json!({"q": "a"}));
    assert_eq!(turn.usage.prompt_tokens, 9);
}

#[tokio::test]
async fn crlf_events_and_utf8_split_across_network_chunks() {
    let server = ScriptedModelServer::start().await;
    let body = format!(
        ": comment\r\n\r\ndata:{}\r\n\r\ndata: {}\r\n\r\ndata: [DONE]\r\n\r\n",
        chunk(json!({"content": "caf\u{e9} "}), Value::Null),
        chunk(json!({"content": "\u{1f600}"}), json!("stop")),
    )
    .into_bytes();
    // Cut inside the é.
    let cut = body.iter().position(|&b| b == 0xc3).unwrap() + 1;
    server.push(Script::Raw {
        content_type: "text/event-stream; charset=utf-8".to_owned(),
        chunks: vec![body[..cut].to_vec(), body[cut..].to_vec()],
    });
    let (turn, deltas) = complete(&provider(&server), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "caf\u{e9} \u{1f600}");
    assert_eq!(deltas, ["caf\u{e9} ", "\u{1f600}"]);
}

#[tokio::test]
async fn a_body_that_is_neither_sse_nor_json_is_a_protocol_error() {
    let server = ScriptedModelServer::start().await;
    server.push_all([
        Script::Raw {
            content_type: "text/html".to_owned(),
            chunks: vec![b"<html><body>Bad gateway login</body></html>".to_vec()],
        },
        Script::text(["no"]),
    ]);
    let (turn, _) = complete(&provider(&server), &request("hi")).await;
    let err = turn.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Protocol(m) if m.contains("<html>")),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn the_request_body_has_the_openai_shape() {
    let server = ScriptedModelServer::start().await;
    server.push(Script::text(["ok"]));
    let request = ModelRequest {
        model: "gpt-4o-mini".to_owned(),
        messages: vec![
            message(ChatRole::System, "sys"),
            message(ChatRole::User, "/tool f {\"a\":1}"),
            ChatMessage {
                role: ChatRole::Assistant,
                content: String::new(),
                tool_calls: vec![
                    ToolCall {
                        id: "call_1".to_owned(),
                        name: "f".to_owned(),
                        arguments: json!({"a": 1}),
                    },
                    ToolCall {
                        id: "call_2".to_owned(),
                        name: "g".to_owned(),
                        arguments: json!({}),
                    },
                ],
                tool_call_id: None,
            },
            ChatMessage {
                role: ChatRole::Tool,
                content: "result f".to_owned(),
                tool_calls: Vec::new(),
                tool_call_id: Some("call_1".to_owned()),
            },
            ChatMessage {
                role: ChatRole::Tool,
                content: "result g".to_owned(),
                tool_calls: Vec::new(),
                tool_call_id: Some("call_2".to_owned()),
            },
        ],
        tools: vec![ToolSpec {
            name: "f".to_owned(),
            description: "Does f.".to_owned(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        }]
        .into(),
        temperature: Some(0.25),
        max_output_tokens: Some(100),
    };
    complete(&provider(&server), &request).await.0.unwrap();
    let recorded = server.requests();
    assert_eq!(
        recorded[0].body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "/tool f {\"a\":1}"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ]},
                {"role": "tool", "content": "result f", "tool_call_id": "call_1"},
                {"role": "tool", "content": "result g", "tool_call_id": "call_2"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {
                "name": "f",
                "description": "Does f.",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
            }}],
            "temperature": 0.25,
            "max_tokens": 100,
        })
    );
}

#[tokio::test]
async fn the_api_key_is_sent_only_when_configured() {
    const VAR: &str = "TESSERA_TEST_PROVIDERS_API_KEY";
    std::env::set_var(VAR, "sk-test-123");
    let server = ScriptedModelServer::start().await;
    server.push_all([Script::text(["a"]), Script::text(["b"])]);

    let mut config = server.provider_config();
    config.api_key_env = Some(VAR.to_owned());
    let with_key = OpenAiProvider::new("keyed", &config).unwrap();
    complete(&with_key, &request("hi")).await.0.unwrap();
    assert!(!format!("{with_key:?}").contains("sk-test-123"));

    complete(&provider(&server), &request("hi"))
        .await
        .0
        .unwrap();

    let recorded = server.requests();
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some("Bearer sk-test-123")
    );
    assert_eq!(recorded[1].authorization, None);
}

#[tokio::test]
async fn a_missing_key_variable_is_a_config_error_naming_it() {
    const VAR: &str = "TESSERA_TEST_PROVIDERS_UNSET_KEY";
    std::env::remove_var(VAR);
    let server = ScriptedModelServer::start().await;
    let mut config = server.provider_config();
    config.api_key_env = Some(VAR.to_owned());
    let provider = OpenAiProvider::new("keyed", &config).unwrap();
    let (turn, _) = complete(&provider, &request("hi")).await;
    match turn.unwrap_err() {
        ProviderError::Config(message) => assert!(message.contains(VAR), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn the_echo_server_answers_many_concurrent_requests() {
    let server = ScriptedModelServer::echo().await;
    let provider = Arc::new(provider(&server));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let provider = provider.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("message number {i}");
            let (turn, deltas) = complete(provider.as_ref(), &request(&text)).await;
            let turn = turn.unwrap();
            assert_eq!(turn.text, text);
            assert_eq!(deltas.len(), 2);
            assert_eq!(turn.finish_reason, FinishReason::Stop);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.request_count(), 50);
    // Scripts still take precedence over the echo fallback.
    server.push(Script::text(["scripted"]));
    let (turn, _) = complete(provider.as_ref(), &request("x")).await;
    assert_eq!(turn.unwrap().text, "scripted");
}

#[tokio::test]
async fn the_registry_always_has_echo_and_builds_openai_providers() {
    let registry = ProviderRegistry::from_config(&BTreeMap::new()).unwrap();
    assert!(registry.contains("echo"));
    assert_eq!(registry.names().collect::<Vec<_>>(), ["echo"]);

    let server = ScriptedModelServer::start().await;
    server.push(Script::text(["from openai"]));
    let mut configs = BTreeMap::new();
    configs.insert("local".to_owned(), server.provider_config());
    let registry = ProviderRegistry::from_config(&configs).unwrap();
    assert_eq!(registry.names().collect::<Vec<_>>(), ["echo", "local"]);

    let (turn, _) = complete(registry.get("local").unwrap().as_ref(), &request("hi")).await;
    assert_eq!(turn.unwrap().text, "from openai");
    let (turn, _) = complete(registry.get("echo").unwrap().as_ref(), &request("hi there")).await;
    assert_eq!(turn.unwrap().text, "hi there");
    assert!(registry.get("missing").is_none());
}

#[test]
fn the_registry_refuses_an_openai_provider_without_base_url() {
    let mut configs = BTreeMap::new();
    configs.insert(
        "broken".to_owned(),
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: None,
            api_key_env: None,
            first_byte_timeout_seconds: 60,
            idle_timeout_seconds: 60,
            max_retries: 3,
        },
    );
    match ProviderRegistry::from_config(&configs) {
        Err(ProviderError::Config(message)) => assert!(message.contains("base_url"), "{message}"),
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("an openai provider without base_url was accepted"),
    }
}

#[test]
fn provider_config_parses_with_defaults() {
    let config: ProviderConfig =
        serde_json::from_value(json!({"kind": "openai", "base_url": "http://x/v1"})).unwrap();
    assert_eq!(config.max_retries, 3);
    assert_eq!(config.first_byte_timeout(), Duration::from_secs(60));
    let config: ProviderConfig = serde_json::from_value(json!({"kind": "echo"})).unwrap();
    assert_eq!(config.kind, ProviderKind::Echo);
}

#[tokio::test]
async fn the_echo_provider_walks_a_tool_round_trip() {
    let registry = ProviderRegistry::from_config(&BTreeMap::new()).unwrap();
    let echo = registry.get("echo").unwrap();
    let mut conversation = vec![message(ChatRole::User, "/tool get_time {\"tz\": \"UTC\"}")];
    let req = |messages: Vec<ChatMessage>| ModelRequest {
        model: "echo".to_owned(),
        messages,
        tools: Default::default(),
        temperature: None,
        max_output_tokens: None,
    };
    let (turn, _) = complete(echo.as_ref(), &req(conversation.clone())).await;
    let turn = turn.unwrap();
    assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
    let call = turn.tool_calls[0].clone();
    assert_eq!(call.arguments, json!({"tz": "UTC"}));
    conversation.push(ChatMessage {
        role: ChatRole::Assistant,
        content: String::new(),
        tool_calls: vec![call.clone()],
        tool_call_id: None,
    });
    conversation.push(ChatMessage {
        role: ChatRole::Tool,
        content: "12:00".to_owned(),
        tool_calls: Vec::new(),
        tool_call_id: Some(call.id),
    });
    let (turn, deltas) = complete(echo.as_ref(), &req(conversation)).await;
    let turn = turn.unwrap();
    assert_eq!(turn.text, "tool get_time returned: 12:00");
    assert_eq!(deltas.concat(), turn.text);
    assert_eq!(turn.finish_reason, FinishReason::Stop);
}
