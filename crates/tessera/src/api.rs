//! API client commands: `api list|describe|call` and `deployments current`.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;
use tessera_api::ops::encode_path_segment;
use tessera_client::Client;

use crate::cli::RemoteArgs;
use crate::openapi::{schema_type, Document, Operation};

/// A client for the server named by `--url`/`TESSERA_URL`, with the secret key required.
fn client(remote: &RemoteArgs) -> anyhow::Result<Client> {
    let key = remote
        .api_key
        .as_deref()
        .filter(|key| !key.is_empty())
        .context("no API key: set TESSERA_API_KEY or pass --api-key tsk_…")?;
    Ok(Client::new(remote.url.clone(), key))
}

pub async fn current_deployment(remote: &RemoteArgs) -> anyhow::Result<ExitCode> {
    let client = client(remote)?;
    let deployment = client
        .deployments()
        .current()
        .send()
        .await
        .with_context(|| format!("getCurrentDeployment on {} failed", client.base_url()))?;
    println!("{}", serde_json::to_string_pretty(&deployment)?);
    Ok(ExitCode::SUCCESS)
}

pub fn list() -> anyhow::Result<ExitCode> {
    let doc = Document::embedded()?;
    let operations = doc.operations();
    let id_width = operations.iter().map(|op| op.id.len()).max().unwrap_or(0);
    let path_width = operations.iter().map(|op| op.path.len()).max().unwrap_or(0);
    for op in &operations {
        let line = format!(
            "{:<id_width$}  {:<6}  {:<path_width$}  {}",
            op.id,
            op.method,
            op.path,
            op.summary().unwrap_or_default()
        );
        println!("{}", line.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn describe(operation_id: &str) -> anyhow::Result<ExitCode> {
    let doc = Document::embedded()?;
    let op = doc.find(operation_id)?;
    println!("{}: {} {}", op.id, op.method, op.path);
    if let Some(summary) = op.summary() {
        println!("{summary}");
    }
    if let Some(description) = op.description().filter(|d| Some(*d) != op.summary()) {
        println!("\n{description}");
    }

    let parameters = doc.parameters(&op);
    println!("\nParameters:");
    if parameters.is_empty() {
        println!("  (none)");
    }
    for parameter in &parameters {
        let required = if parameter.required {
            "required"
        } else {
            "optional"
        };
        let mut line = format!(
            "  {}  ({}, {required})  {}",
            parameter.name,
            parameter.location,
            schema_type(&parameter.schema)
        );
        if let Some(description) = &parameter.description {
            line.push_str(&format!("  {}", description.replace('\n', " ")));
        }
        println!("{line}");
    }

    match doc.request_body(&op) {
        Some((required, schema)) => {
            let required = if required { "required" } else { "optional" };
            println!("\nRequest body (application/json, {required}):");
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
        None => println!("\nRequest body: none"),
    }

    match doc.success_response(&op) {
        Some((status, Some(schema))) => {
            println!("\nResponse {status} (application/json):");
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
        Some((status, None)) => println!("\nResponse {status}: no body"),
        None => println!("\nResponse: not documented"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The request body of `tessera api call`.
pub enum Body {
    None,
    /// `--body`: inline JSON, `@file` or `@-`.
    Json(String),
    /// `--data-file` (`-` for standard input) with its `--content-type`.
    Raw(std::path::PathBuf, String),
}

pub async fn call(
    remote: &RemoteArgs,
    operation_id: &str,
    body: Body,
    params: &[String],
    headers: &[String],
) -> anyhow::Result<ExitCode> {
    let doc = Document::embedded()?;
    let op = doc.find(operation_id)?;
    let params = parse_params(params)?;
    let headers = parse_headers(headers)?;
    let path_and_query = fill_path(&doc, &op, &params)?;
    let client = client(remote)?;

    let sent = match body {
        Body::None => {
            client
                .call_raw_with_headers(&op.method, &path_and_query, None, &headers)
                .await
        }
        Body::Json(raw) => {
            let json = read_body(&raw)?;
            client
                .call_raw_with_headers(&op.method, &path_and_query, Some(json), &headers)
                .await
        }
        Body::Raw(file, content_type) => {
            let bytes = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .context("cannot read the body from standard input")?;
                bytes
            } else {
                std::fs::read(&file)
                    .with_context(|| format!("cannot read the data file {}", file.display()))?
            };
            client
                .call_raw_bytes_with_headers(
                    &op.method,
                    &path_and_query,
                    bytes,
                    &content_type,
                    &headers,
                )
                .await
        }
    };
    let (status, answer) = sent
        .with_context(|| format!("{} {}{path_and_query} failed", op.method, client.base_url()))?;
    let text = match &answer {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other)?,
    };
    if (200..300).contains(&status) {
        if !text.is_empty() {
            println!("{text}");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        if text.is_empty() {
            eprintln!("HTTP {status} with no body");
        } else {
            eprintln!("{text}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `KEY=VALUE` pairs, in the order given.
fn parse_params(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|param| {
            let (key, value) = param
                .split_once('=')
                .with_context(|| format!("--param {param:?} is not KEY=VALUE"))?;
            anyhow::ensure!(!key.is_empty(), "--param {param:?} has an empty name");
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `--header "Name: value"` arguments as pairs. The credentials come from `--api-key` /
/// `TESSERA_API_KEY`, not from a header.
fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|header| {
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("--header {header:?} is not \"Name: value\""))?;
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
                "--header {header:?} has an invalid name"
            );
            anyhow::ensure!(
                !name.eq_ignore_ascii_case("authorization"),
                "--header cannot set Authorization: pass the key with --api-key or TESSERA_API_KEY"
            );
            Ok((name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// The operation's path with its placeholders filled (percent-encoded) and the other
/// parameters appended as the query.
fn fill_path(
    doc: &Document,
    op: &Operation<'_>,
    params: &[(String, String)],
) -> anyhow::Result<String> {
    let placeholders = op.path_placeholders();
    let mut path = op.path.to_owned();
    for name in &placeholders {
        let mut values = params.iter().filter(|(key, _)| key == name);
        let (_, value) = values.next().with_context(|| {
            format!(
                "{} needs the path parameter {name:?}: pass --param {name}=VALUE",
                op.id
            )
        })?;
        anyhow::ensure!(
            values.next().is_none(),
            "path parameter {name:?} is given more than once"
        );
        path = path.replace(&format!("{{{name}}}"), &encode_path_segment(value));
    }

    let query_names: Vec<String> = doc
        .parameters(op)
        .into_iter()
        .filter(|p| p.location == "query")
        .map(|p| p.name)
        .collect();
    let mut query = Vec::new();
    for (key, value) in params {
        if placeholders.contains(&key.as_str()) {
            continue;
        }
        if !query_names.contains(key) {
            eprintln!(
                "warning: {} documents no query parameter {key:?}; sending it anyway",
                op.id
            );
        }
        query.push(format!(
            "{}={}",
            encode_path_segment(key),
            encode_path_segment(value)
        ));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    Ok(path)
}

/// The `--body` value as JSON: inline, `@file`, or `@-` for standard input.
fn read_body(raw: &str) -> anyhow::Result<Value> {
    let (text, source) = match raw.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the body from standard input")?;
            (text, "standard input".to_owned())
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the body file {path}"))?;
            (text, path.to_owned())
        }
        None => (raw.to_owned(), "--body".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Document {
        Document::from_value(json!({
            "paths": {
                "/things/{thing_id}/parts": {
                    "get": {
                        "operationId": "listParts",
                        "parameters": [
                            {"name": "thing_id", "in": "path", "required": true, "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer"}}
                        ],
                        "responses": {}
                    }
                }
            }
        }))
    }

    fn params(raw: &[&str]) -> Vec<(String, String)> {
        parse_params(&raw.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn fills_path_and_query() {
        let doc = doc();
        let op = doc.find("listParts").unwrap();
        let path = fill_path(&doc, &op, &params(&["limit=5", "thing_id=a/b c", "q=x&y"])).unwrap();
        assert_eq!(path, "/things/a%2Fb%20c/parts?limit=5&q=x%26y");
        let err = fill_path(&doc, &op, &params(&["limit=5"])).unwrap_err();
        assert!(err.to_string().contains("\"thing_id\""), "{err}");
    }

    #[test]
    fn params_need_an_equals_sign() {
        assert_eq!(
            params(&["a=b=c", "e="]),
            [("a".into(), "b=c".into()), ("e".into(), String::new())]
        );
        assert!(parse_params(&["nokey".to_owned()]).is_err());
        assert!(parse_params(&["=v".to_owned()]).is_err());
    }

    #[test]
    fn headers_need_a_name_and_a_colon_and_never_carry_the_key() {
        assert_eq!(
            parse_headers(&["Idempotency-Key: a:b ".to_owned()]).unwrap(),
            [("Idempotency-Key".to_owned(), "a:b".to_owned())]
        );
        assert!(parse_headers(&["no colon".to_owned()]).is_err());
        assert!(parse_headers(&[": v".to_owned()]).is_err());
        assert!(parse_headers(&["bad name: v".to_owned()]).is_err());
        assert!(parse_headers(&["authorization: Bearer x".to_owned()]).is_err());
    }

    #[test]
    fn bodies_are_parsed_before_sending() {
        assert_eq!(read_body(r#"{"a": 1}"#).unwrap(), json!({"a": 1}));
        let err = read_body("{nope").unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body.json");
        std::fs::write(&file, "[1, 2]").unwrap();
        assert_eq!(
            read_body(&format!("@{}", file.display())).unwrap(),
            json!([1, 2])
        );
        assert!(read_body("@/does/not/exist.json").is_err());
    }
}
