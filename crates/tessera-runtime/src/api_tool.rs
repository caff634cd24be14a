//! Execution of `Api` tools: the URL template filled from the validated arguments
//! (percent-encoded), the remaining arguments as query or JSON body, static headers and auth,
//! and every hop — the first request and each redirect — resolved and checked by the SSRF
//! guard ([`crate::tool_net`]) and pinned to the checked addresses. The response body is read
//! as it streams in and refused past its size cap.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use tessera_domain::tool::{scalar_text, ApiAuth, ApiConfig, HttpMethod, Tool};

use crate::tool_records::{ActorTokenRequest, RecordTools, ToolRecordsConfig};
use crate::tools::{ToolContext, ToolOutput};

/// How long connecting to a tool's server may take (the call as a whole has the tool's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response goes back to the model.
const ERROR_BODY_CHARS: usize = 2000;

pub(crate) async fn call(
    records: &RecordTools,
    config: &ToolRecordsConfig,
    ctx: &ToolContext<'_>,
    tool: &Tool,
    api: &ApiConfig,
    args: &Value,
) -> ToolOutput {
    match run(records, config, ctx, tool, api, args).await {
        Ok(text) => ToolOutput {
            result: Ok(text),
            events: Vec::new(),
        },
        Err(text) => ToolOutput::error(text),
    }
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
    }
}

/// A query value: scalars as text, arrays as repeated keys, objects as JSON.
fn push_query(pairs: &mut Vec<(String, String)>, name: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for item in items {
                push_query(pairs, name, item)?;
            }
            Ok(())
        }
        Value::Object(_) => {
            pairs.push((name.to_owned(), value.to_string()));
            Ok(())
        }
        other => {
            pairs.push((name.to_owned(), scalar_text(name, other)?));
            Ok(())
        }
    }
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The `Authorization` (or custom) header of the tool's auth.
async fn auth_header(
    records: &RecordTools,
    config: &ToolRecordsConfig,
    ctx: &ToolContext<'_>,
    tool: &Tool,
    api: &ApiConfig,
    first: &Url,
) -> Result<Option<(HeaderName, HeaderValue)>, String> {
    let bad = |_| "the configured credential is not a valid header value".to_owned();
    Ok(match &api.auth {
        ApiAuth::None => None,
        ApiAuth::Bearer => {
            let secret = records.secret(tool).await?;
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(bad)?;
            v.set_sensitive(true);
            Some((AUTHORIZATION, v))
        }
        ApiAuth::Basic { username } => {
            let secret = records.secret(tool).await?;
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", secret.expose()));
            let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(bad)?;
            v.set_sensitive(true);
            Some((AUTHORIZATION, v))
        }
        ApiAuth::Header { name } => {
            let secret = records.secret(tool).await?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| "the configured header name is invalid".to_owned())?;
            let mut v = HeaderValue::from_str(secret.expose()).map_err(bad)?;
            v.set_sensitive(true);
            Some((name, v))
        }
        ApiAuth::ActorToken { audience } => {
            let thread = ctx
                .store
                .get_thread(ctx.scope, ctx.thread_id)
                .await
                .map_err(|e| format!("cannot read the thread: {e}"))?;
            let project = ctx
                .store
                .get_project(ctx.scope, &thread.project_id)
                .await
                .map_err(|e| format!("cannot read the project: {e}"))?;
            let actor = ctx
                .store
                .get_actor(ctx.scope, &project.actor_id)
                .await
                .map_err(|e| format!("cannot read the actor: {e}"))?;
            let token = config
                .credentials
                .actor_token(&ActorTokenRequest {
                    deployment_id: ctx.scope.deployment_id().clone(),
                    actor_id: actor.id,
                    subject_type: actor.subject_type,
                    external_key: actor.external_key,
                    thread_id: ctx.thread_id.clone(),
                    run_id: ctx.run_id.clone(),
                    tool_id: tool.id.clone(),
                    audience: audience.clone().unwrap_or_else(|| origin(first)),
                })
                .await?;
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(bad)?;
            v.set_sensitive(true);
            Some((AUTHORIZATION, v))
        }
    })
}

async fn run(
    records: &RecordTools,
    config: &ToolRecordsConfig,
    ctx: &ToolContext<'_>,
    tool: &Tool,
    api: &ApiConfig,
    args: &Value,
) -> Result<String, String> {
    let empty = Map::new();
    let args = args.as_object().unwrap_or(&empty);
    let placeholders = api.url.placeholders()?;
    let mut url = Url::parse(&api.url.fill(args)?).map_err(|e| format!("bad URL: {e}"))?;
    let mut query = Vec::new();
    let mut body = Map::new();
    for (name, value) in args {
        if placeholders.contains(&name.as_str()) {
            continue;
        }
        if api.query_params.contains(name) || !api.method.has_body() {
            push_query(&mut query, name, value)?;
        } else {
            body.insert(name.clone(), value.clone());
        }
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(&query);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &api.headers {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("bad header name {name}"))?,
            HeaderValue::from_str(value).map_err(|_| format!("bad value of header {name}"))?,
        );
    }
    let auth = auth_header(records, config, ctx, tool, api, &url).await?;
    let first_origin = origin(&url);
    let cap = api.max_response_bytes.unwrap_or(config.max_response_bytes);
    let mut method = method(api.method);
    let mut json_body = api.method.has_body().then(|| Value::Object(body));

    for _hop in 0..=config.max_redirects {
        let host = url
            .host_str()
            .ok_or_else(|| "the URL has no host".to_owned())?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "the URL has no port".to_owned())?;
        let addrs = config.net.resolve(&host, port).await?;
        // Pinned to the checked addresses: the connection cannot go where the check did not.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(host.trim_matches(['[', ']']), &addrs)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        // Credentials only go to the origin they were configured for.
        if let Some((name, value)) = &auth {
            if origin(&url) == first_origin {
                request = request.header(name.clone(), value.clone());
            }
        }
        if let Some(body) = &json_body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("the request to {host} failed: {}", without_url(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            let Some(location) = response.headers().get(LOCATION) else {
                return read(response, cap).await.and_then(|b| answer(status, b));
            };
            let location = location
                .to_str()
                .map_err(|_| "a redirect with an unreadable Location".to_owned())?;
            let next = url
                .join(location)
                .map_err(|_| format!("a redirect to an invalid URL ({location})"))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(format!("refused: a redirect to a {} URL", next.scheme()));
            }
            if matches!(status, StatusCode::SEE_OTHER)
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method != Method::GET)
            {
                method = Method::GET;
                json_body = None;
            }
            url = next;
            continue;
        }
        let bytes = read(response, cap).await?;
        return answer(status, bytes);
    }
    Err(format!(
        "too many redirects (more than {})",
        config.max_redirects
    ))
}

/// A transport error as its innermost cause (reqwest's own text repeats the URL).
fn without_url(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    let text = last.unwrap_or_else(|| "error sending the request".to_owned());
    if err.is_connect() {
        format!("could not connect ({text})")
    } else {
        text
    }
}

/// Reads the body as it streams in; refuses it past `cap` bytes.
async fn read(mut response: reqwest::Response, cap: u64) -> Result<Vec<u8>, String> {
    let too_big = || format!("the response is larger than {cap} bytes, the most this tool reads");
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {}", without_url(&e)))?
    {
        if bytes.len() as u64 + chunk.len() as u64 > cap {
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn answer(status: StatusCode, bytes: Vec<u8>) -> Result<String, String> {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => format!("(a binary response of {} bytes)", e.as_bytes().len()),
    };
    if status.is_success() {
        Ok(text)
    } else {
        let short: String = text.chars().take(ERROR_BODY_CHARS).collect();
        Err(format!("HTTP {}: {short}", status.as_u16()))
    }
}
