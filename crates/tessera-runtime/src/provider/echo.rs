//! The offline `echo` provider, for demos and tests: no network, no model, no latency.
//!
//! Configure it as `{"provider":"echo","model":"echo"}` (the model name is ignored). On each
//! turn it looks at the end of the conversation:
//!
//! - After tool results (one or several trailing `tool` messages, e.g. from parallel calls) it
//!   answers `tool NAME returned: CONTENT`, one line per result, and stops.
//! - Otherwise it reads the last user message:
//!   - `/tool NAME {json}` calls the tool `NAME` (letters, digits, `_`, `-`) with that JSON
//!     object as arguments (`{}` when omitted), with no text; the finish reason is `tool_calls`.
//!   - `/tools NAME {json} ; NAME2 {json} ; …` calls several tools in one turn (parallel calls).
//!   - A malformed command gets a short text explaining the expected form.
//!   - Anything else is streamed back verbatim, word by word (the deltas concatenate to exactly
//!     the message).
//!
//! Tool call ids are `call_N`, numbered after the tool calls already in the conversation, so they
//! are unique within it. Usage is an estimate: a token per four characters, rounded up, of the
//! whole conversation (prompt) and of the output (completion).

use async_trait::async_trait;
use serde_json::Value;

use super::{
    ChatMessage, ChatRole, DeltaSink, FinishReason, ModelProvider, ModelRequest, ModelTurn,
    ProviderError, ToolCall, Usage,
};

/// The offline echo provider. See the module documentation for its behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoProvider {
    // Construct with `EchoProvider::default()`; room for options without breaking callers.
    _private: (),
}

const TOOL_USAGE: &str = "The echo provider expects `/tool NAME {json object}` (the JSON is optional), or `/tools NAME {json} ; NAME2 {json}` for several calls; NAME is made of letters, digits, `_` and `-`.";

#[async_trait]
impl ModelProvider for EchoProvider {
    async fn complete(
        &self,
        request: &ModelRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<ModelTurn, ProviderError> {
        let prompt_tokens = estimate_tokens(prompt_chars(&request.messages));
        match plan(&request.messages) {
            Reply::Text(text) => {
                for piece in words(&text) {
                    on_delta(piece);
                }
                Ok(ModelTurn {
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens: estimate_tokens(text.chars().count()),
                    },
                    text,
                    tool_calls: Vec::new(),
                    finish_reason: FinishReason::Stop,
                })
            }
            Reply::Calls(calls) => {
                let first_id = next_call_number(&request.messages);
                let taken: Vec<&str> = request
                    .messages
                    .iter()
                    .flat_map(|m| m.tool_calls.iter().map(|c| c.id.as_str()))
                    .collect();
                let mut n = first_id;
                let mut tool_calls = Vec::with_capacity(calls.len());
                for (name, arguments) in calls {
                    let mut id = format!("call_{n}");
                    while taken.contains(&id.as_str()) {
                        n += 1;
                        id = format!("call_{n}");
                    }
                    n += 1;
                    tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                let output_chars: usize = tool_calls
                    .iter()
                    .map(|c| c.name.chars().count() + c.arguments.to_string().chars().count())
                    .sum();
                Ok(ModelTurn {
                    text: String::new(),
                    tool_calls,
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens: estimate_tokens(output_chars),
                    },
                    finish_reason: FinishReason::ToolCalls,
                })
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Reply {
    Text(String),
    Calls(Vec<(String, Value)>),
}

fn plan(messages: &[ChatMessage]) -> Reply {
    let trailing_results: Vec<&ChatMessage> = {
        let mut results: Vec<&ChatMessage> = messages
            .iter()
            .rev()
            .take_while(|m| m.role == ChatRole::Tool)
            .collect();
        results.reverse();
        results
    };
    if !trailing_results.is_empty() {
        let lines: Vec<String> = trailing_results
            .iter()
            .map(|result| {
                let name = result
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| tool_name_for(messages, id))
                    .unwrap_or("unknown");
                format!("tool {name} returned: {}", result.content)
            })
            .collect();
        return Reply::Text(lines.join("\n"));
    }
    let Some(last_user) = messages.iter().rev().find(|m| m.role == ChatRole::User) else {
        return Reply::Text(String::new());
    };
    let content = last_user.content.as_str();
    let trimmed = content.trim();
    if let Some(rest) = command_rest(trimmed, "/tools") {
        return match parse_calls(rest, true) {
            Some(calls) => Reply::Calls(calls),
            None => Reply::Text(TOOL_USAGE.to_owned()),
        };
    }
    if let Some(rest) = command_rest(trimmed, "/tool") {
        return match parse_calls(rest, false) {
            Some(calls) => Reply::Calls(calls),
            None => Reply::Text(TOOL_USAGE.to_owned()),
        };
    }
    Reply::Text(content.to_owned())
}

/// `"/tool x"` → `Some("x")`; `"/toolbox"` → `None`.
fn command_rest<'a>(text: &'a str, command: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(command)?;
    if rest.is_empty() || rest.starts_with(char::is_whitespace) {
        Some(rest.trim_start())
    } else {
        None
    }
}

/// Parses `NAME [json]` (and, when `several`, more of them separated by `;`). `None` when the
/// text does not have that form.
fn parse_calls(mut rest: &str, several: bool) -> Option<Vec<(String, Value)>> {
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return None;
        }
        let (name, after) = rest.split_at(name_len);
        rest = after.trim_start();
        let arguments = if rest.starts_with('{') {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let value = values.next()?.ok()?;
            rest = rest.get(values.byte_offset()..)?.trim_start();
            value
        } else {
            Value::Object(serde_json::Map::new())
        };
        calls.push((name.to_owned(), arguments));
        if rest.is_empty() {
            return Some(calls);
        }
        if !several {
            return None;
        }
        rest = rest.strip_prefix(';')?;
        if rest.trim().is_empty() {
            // A trailing `;` is harmless.
            return Some(calls);
        }
    }
}

fn tool_name_for<'a>(messages: &'a [ChatMessage], call_id: &str) -> Option<&'a str> {
    messages
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter())
        .find(|c| c.id == call_id)
        .map(|c| c.name.as_str())
}

fn next_call_number(messages: &[ChatMessage]) -> usize {
    messages.iter().map(|m| m.tool_calls.len()).sum::<usize>() + 1
}

fn prompt_chars(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| {
            m.content.chars().count()
                + m.tool_calls
                    .iter()
                    .map(|c| c.name.chars().count() + c.arguments.to_string().chars().count())
                    .sum::<usize>()
        })
        .sum()
}

/// A token per four characters, rounded up (so any non-empty text is at least one token).
fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Splits text into words, each keeping the whitespace that follows it (leading whitespace goes
/// with the first piece), so the pieces concatenate to exactly the text.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut seen_word = false;
        let mut in_space_after_word = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c.is_whitespace() {
                if seen_word {
                    in_space_after_word = true;
                }
            } else if in_space_after_word {
                end = i;
                break;
            } else {
                seen_word = true;
            }
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    fn msg(role: ChatRole, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.to_owned(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    fn request(messages: Vec<ChatMessage>) -> ModelRequest {
        ModelRequest {
            model: "echo".to_owned(),
            messages,
            tools: Default::default(),
            temperature: None,
            max_output_tokens: None,
        }
    }

    async fn run(messages: Vec<ChatMessage>) -> (ModelTurn, Vec<String>) {
        let deltas = Mutex::new(Vec::new());
        let sink = |d: &str| deltas.lock().unwrap().push(d.to_owned());
        let turn = EchoProvider::default()
            .complete(&request(messages), &sink)
            .await
            .unwrap();
        (turn, deltas.into_inner().unwrap())
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_word_by_word() {
        let text = "  Hello   wonderful\tworld \u{e9}t\u{e9}\n";
        let (turn, deltas) = run(vec![
            msg(ChatRole::System, "You are a test."),
            msg(ChatRole::User, "earlier"),
            msg(ChatRole::Assistant, "earlier"),
            msg(ChatRole::User, text),
        ])
        .await;
        assert_eq!(turn.text, text);
        assert_eq!(turn.finish_reason, FinishReason::Stop);
        assert!(turn.tool_calls.is_empty());
        assert_eq!(deltas.concat(), text);
        assert_eq!(
            deltas,
            ["  Hello   ", "wonderful\t", "world ", "\u{e9}t\u{e9}\n"]
        );
        // 15 + 7 + 7 + 29 characters in the conversation; 29 in the output.
        let prompt_chars = 15 + 7 + 7 + text.chars().count();
        assert_eq!(turn.usage.prompt_tokens, prompt_chars.div_ceil(4) as u64);
        assert_eq!(
            turn.usage.completion_tokens,
            text.chars().count().div_ceil(4) as u64
        );
    }

    #[test]
    fn words_concatenate_to_the_input() {
        for text in ["", " ", "a", "a b", " a  b ", "\n\nx\ny\n", "one"] {
            assert_eq!(words(text).collect::<String>(), text, "{text:?}");
        }
        assert_eq!(words("a b").collect::<Vec<_>>(), ["a ", "b"]);
    }

    #[tokio::test]
    async fn an_empty_message_gives_an_empty_answer() {
        let (turn, deltas) = run(vec![msg(ChatRole::User, "")]).await;
        assert_eq!(turn.text, "");
        assert_eq!(turn.usage.completion_tokens, 0);
        assert!(deltas.is_empty());
        let (turn, _) = run(vec![msg(ChatRole::System, "only system")]).await;
        assert_eq!(turn.text, "");
        assert_eq!(turn.finish_reason, FinishReason::Stop);
    }

    #[tokio::test]
    async fn slash_tool_calls_the_tool_with_its_arguments() {
        let (turn, deltas) = run(vec![msg(
            ChatRole::User,
            r#"/tool get_weather {"city": "Paris", "days": 2}"#,
        )])
        .await;
        assert!(deltas.is_empty());
        assert_eq!(turn.text, "");
        assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            turn.tool_calls,
            [ToolCall {
                id: "call_1".to_owned(),
                name: "get_weather".to_owned(),
                arguments: json!({"city": "Paris", "days": 2}),
            }]
        );
        assert!(turn.usage.completion_tokens >= 1);
    }

    #[tokio::test]
    async fn slash_tool_without_json_uses_an_empty_object() {
        for text in ["/tool list-files", "  /tool   list-files  "] {
            let (turn, _) = run(vec![msg(ChatRole::User, text)]).await;
            assert_eq!(turn.tool_calls.len(), 1);
            assert_eq!(turn.tool_calls[0].name, "list-files");
            assert_eq!(turn.tool_calls[0].arguments, json!({}));
        }
    }

    #[tokio::test]
    async fn malformed_tool_commands_get_an_explanation() {
        for text in [
            "/tool",
            "/tool {\"a\":1}",
            "/tool name {not json",
            "/tool name {\"a\":1} trailing",
            "/tool name [1, 2]",
            "/tool na.me",
            "/tool a {} ; b {}",
        ] {
            let (turn, deltas) = run(vec![msg(ChatRole::User, text)]).await;
            assert_eq!(turn.finish_reason, FinishReason::Stop, "{text:?}");
            assert!(turn.tool_calls.is_empty(), "{text:?}");
            assert_eq!(turn.text, TOOL_USAGE, "{text:?}");
            assert_eq!(deltas.concat(), TOOL_USAGE);
        }
        // Not a command at all: echoed.
        let (turn, _) = run(vec![msg(ChatRole::User, "/toolbox here")]).await;
        assert_eq!(turn.text, "/toolbox here");
    }

    #[tokio::test]
    async fn slash_tools_makes_parallel_calls() {
        let (turn, _) = run(vec![msg(
            ChatRole::User,
            r#"/tools a {"x": "semi;colon"} ; b ; c {"y": [1]};"#,
        )])
        .await;
        assert_eq!(turn.finish_reason, FinishReason::ToolCalls);
        let calls: Vec<(&str, &str, &Value)> = turn
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), &c.arguments))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_1", "a", &json!({"x": "semi;colon"})),
                ("call_2", "b", &json!({})),
                ("call_3", "c", &json!({"y": [1]})),
            ]
        );
    }

    fn assistant_calls(calls: &[(&str, &str)]) -> ChatMessage {
        ChatMessage {
            role: ChatRole::Assistant,
            content: String::new(),
            tool_calls: calls
                .iter()
                .map(|(id, name)| ToolCall {
                    id: (*id).to_owned(),
                    name: (*name).to_owned(),
                    arguments: json!({}),
                })
                .collect(),
            tool_call_id: None,
        }
    }

    fn tool_result(id: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: ChatRole::Tool,
            content: content.to_owned(),
            tool_calls: Vec::new(),
            tool_call_id: Some(id.to_owned()),
        }
    }

    #[tokio::test]
    async fn echoes_tool_results() {
        let (turn, deltas) = run(vec![
            msg(ChatRole::User, "/tool get_weather {\"city\":\"Paris\"}"),
            assistant_calls(&[("call_1", "get_weather")]),
            tool_result("call_1", "{\"temp\": 21}"),
        ])
        .await;
        assert_eq!(turn.text, "tool get_weather returned: {\"temp\": 21}");
        assert_eq!(turn.finish_reason, FinishReason::Stop);
        assert_eq!(deltas.concat(), turn.text);
    }

    #[tokio::test]
    async fn echoes_parallel_tool_results_one_per_line() {
        let (turn, _) = run(vec![
            msg(ChatRole::User, "/tools a ; b"),
            assistant_calls(&[("call_1", "a"), ("call_2", "b")]),
            tool_result("call_1", "one"),
            tool_result("call_2", "two"),
        ])
        .await;
        assert_eq!(turn.text, "tool a returned: one\ntool b returned: two");
    }

    #[tokio::test]
    async fn call_ids_stay_unique_within_the_conversation() {
        let (turn, _) = run(vec![
            msg(ChatRole::User, "/tools a ; b"),
            assistant_calls(&[("call_1", "a"), ("call_3", "b")]),
            tool_result("call_1", "one"),
            tool_result("call_3", "two"),
            msg(ChatRole::Assistant, "done"),
            msg(ChatRole::User, "/tools c ; d"),
        ])
        .await;
        let ids: Vec<&str> = turn.tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["call_4", "call_5"]);
        let (turn, _) = run(vec![
            assistant_calls(&[("call_2", "x")]),
            msg(ChatRole::User, "/tools c ; d"),
        ])
        .await;
        let ids: Vec<&str> = turn.tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["call_3", "call_4"]);
    }

    #[tokio::test]
    async fn a_result_for_an_unknown_call_still_echoes() {
        let (turn, _) = run(vec![tool_result("nope", "x")]).await;
        assert_eq!(turn.text, "tool unknown returned: x");
    }
}
