//! MCP client: connects to one MCP server with the official Rust SDK (`rmcp`) over streamable
//! HTTP (or stdio, when the operator allows it), discovers its tools (`tools/list`, every page),
//! caches them (TTL, and dropped on `notifications/tools/list_changed`), exposes them under
//! model-safe names (`mcp_{slug}_{tool}`, see [`exposed_name`]) and calls them with a timeout,
//! mapping the result's content to text for the model.
//!
//! Sessions: the HTTP client below tells `rmcp` a session expired when the server answers a
//! request carrying `Mcp-Session-Id` with 404 (the spec) or with a 400 whose body names the
//! session (what the TypeScript reference servers answer for an unknown id); `rmcp` then
//! re-initializes and retries the request once. If the connection itself is gone (a stdio
//! child that exited, a transport that closed), [`McpClient`] reconnects once and retries.
//!
//! Auth: none, a static bearer token, or OAuth 2 client credentials (token fetched from the
//! token URL with `client_secret_post`, cached until shortly before it expires, fetched again
//! when the MCP server answers 401).
//!
//! Addresses: unless `allow_private` is set, the MCP and token URLs may not reach loopback,
//! private, link-local (cloud metadata), CGNAT or unspecified addresses; the check runs in the
//! HTTP client's resolver, so it holds after DNS resolution and for every connection. Redirects
//! are not followed. (The Api tools' address guard will replace this flag; see ARCHITECTURE.)

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use http::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, JsonRpcMessage, PaginatedRequestParams,
    ServerJsonRpcMessage,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
    StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::{ClientHandler, ServiceError, ServiceExt as _};
use serde::{Deserialize, Serialize};
use sse_stream::{Error as SseError, Sse, SseStream};

/// Longest exposed tool name (the model APIs' limit for function names).
pub use tessera_domain::tool::MAX_TOOL_NAME;
/// Longest slug.
pub const MAX_SLUG: usize = 24;

const SESSION_HEADER: &str = "Mcp-Session-Id";
const LAST_EVENT_HEADER: &str = "Last-Event-Id";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// How to reach one MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP at this URL (`https://host/mcp`).
    StreamableHttp { url: String },
    /// A child process speaking MCP on stdin/stdout. Only with [`McpPolicy::allow_stdio`].
    /// The child gets no environment but `PATH` and `env`.
    Stdio {
        command: PathBuf,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
}

/// How the client authenticates to the MCP server (HTTP only).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpAuth {
    None,
    /// `Authorization: Bearer TOKEN` on every request.
    Bearer {
        token: String,
    },
    /// OAuth 2 client credentials grant: a token from `token_url` (credentials in the form
    /// body), sent as a bearer token.
    OauthClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        audience: Option<String>,
    },
}

impl std::fmt::Debug for McpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer { .. } => f.write_str("Bearer { token: <redacted> }"),
            Self::OauthClientCredentials {
                token_url,
                client_id,
                ..
            } => f
                .debug_struct("OauthClientCredentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

/// One MCP server as a tool source.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    /// Names the server in exposed tool names: `^[a-z0-9][a-z0-9_-]{0,23}$`.
    pub slug: String,
    pub transport: McpTransport,
    pub auth: McpAuth,
    /// Longest a `tools/call` (or connecting and listing) may take.
    pub call_timeout: Duration,
    /// How long a `tools/list` answer is reused.
    pub tools_ttl: Duration,
    /// Largest tool output returned to the model, in bytes (cut at a character boundary).
    pub max_output_bytes: usize,
}

impl McpServerConfig {
    pub fn new(slug: impl Into<String>, transport: McpTransport) -> Self {
        Self {
            slug: slug.into(),
            transport,
            auth: McpAuth::None,
            call_timeout: Duration::from_secs(60),
            tools_ttl: Duration::from_secs(300),
            max_output_bytes: 256 * 1024,
        }
    }
}

/// What the operator allows (`[mcp]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct McpPolicy {
    /// Whether MCP servers may be started as local processes (stdio transport).
    pub allow_stdio: bool,
    /// Whether MCP and token URLs may reach loopback, private and link-local addresses.
    pub allow_private: bool,
}

/// Why an MCP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("invalid MCP configuration: {0}")]
    Config(String),
    #[error("the stdio transport is disabled by the operator (mcp.allow_stdio)")]
    StdioDisabled,
    #[error("cannot connect to the MCP server: {0}")]
    Connect(String),
    #[error("the MCP server failed: {0}")]
    Protocol(String),
    #[error("the MCP tool did not answer within {} seconds", .0.as_secs())]
    Timeout(Duration),
    #[error("the MCP server offers no tool `{0}`")]
    UnknownTool(String),
    #[error("cannot get an OAuth token: {0}")]
    Token(String),
}

/// A tool of the server, under its exposed name.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// `mcp_{slug}_{tool}`, ≤ 64 model-safe characters.
    pub exposed_name: String,
    /// The server's own name for it.
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

/// The exposed name of `tool` of server `slug`: `mcp_{slug}_{tool}`, made model-safe and at
/// most [`MAX_TOOL_NAME`] characters ([`tessera_domain::tool::namespaced_tool_name`]; a hash
/// collision between two names is reported as an error by [`McpClient`]).
pub fn exposed_name(slug: &str, tool: &str) -> String {
    tessera_domain::tool::namespaced_tool_name(&format!("mcp_{slug}"), tool)
}

/// Checks a slug: `^[a-z0-9][a-z0-9_-]{0,23}$`.
pub fn validate_slug(slug: &str) -> Result<(), McpError> {
    let ok = !slug.is_empty()
        && slug.len() <= MAX_SLUG
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(McpError::Config(format!(
            "slug {slug:?} must be 1-{MAX_SLUG} of a-z, 0-9, `_`, `-`, starting with a letter or digit"
        )))
    }
}

/// The tools cache.
struct Cached {
    at: Instant,
    tools: Vec<McpTool>,
}

/// A client of one MCP server. Connects on first use; cheap to share.
pub struct McpClient {
    config: McpServerConfig,
    policy: McpPolicy,
    http: Option<McpHttp>,
    /// Set by `notifications/tools/list_changed`.
    stale: Arc<AtomicBool>,
    connection: tokio::sync::Mutex<Option<Arc<RunningService<RoleClient, Handler>>>>,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// Validates the configuration against the policy; connects later, on first use.
    pub fn new(config: McpServerConfig, policy: McpPolicy) -> Result<Self, McpError> {
        validate_slug(&config.slug)?;
        let http = match &config.transport {
            McpTransport::StreamableHttp { url } => {
                check_url(url)?;
                if let McpAuth::OauthClientCredentials { token_url, .. } = &config.auth {
                    check_url(token_url)?;
                }
                Some(McpHttp::new(&config.auth, policy.allow_private)?)
            }
            McpTransport::Stdio { .. } if !policy.allow_stdio => {
                return Err(McpError::StdioDisabled)
            }
            McpTransport::Stdio { command, .. } => {
                if !command.is_absolute() {
                    return Err(McpError::Config(
                        "the stdio command must be an absolute path".into(),
                    ));
                }
                None
            }
        };
        Ok(Self {
            config,
            policy,
            http,
            stale: Arc::new(AtomicBool::new(false)),
            connection: tokio::sync::Mutex::new(None),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &McpServerConfig {
        &self.config
    }

    /// The server's tools, from the cache while it is fresh.
    pub async fn tools(&self) -> Result<Vec<McpTool>, McpError> {
        let mut cache = self.cache.lock().await;
        let stale = self.stale.swap(false, Ordering::SeqCst);
        if let Some(cached) = cache.as_ref() {
            if !stale && cached.at.elapsed() < self.config.tools_ttl {
                return Ok(cached.tools.clone());
            }
        }
        let tools = self.list().await?;
        *cache = Some(Cached {
            at: Instant::now(),
            tools: tools.clone(),
        });
        Ok(tools)
    }

    /// Lists the tools again, whatever the cache holds.
    pub async fn refresh(&self) -> Result<Vec<McpTool>, McpError> {
        self.stale.store(true, Ordering::SeqCst);
        self.tools().await
    }

    /// Calls a tool by its exposed name (or the server's own name). `Ok(Err(text))` is a tool
    /// error the model should see (`isError`, or a JSON-RPC error of the call); `Err` is a
    /// failure to reach the server or a timeout.
    pub async fn call(
        &self,
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<Result<String, String>, McpError> {
        let mut tools = self.tools().await?;
        if !tools
            .iter()
            .any(|t| t.exposed_name == name || t.name == name)
        {
            tools = self.refresh().await?;
        }
        let tool = tools
            .iter()
            .find(|t| t.exposed_name == name)
            .or_else(|| tools.iter().find(|t| t.name == name))
            .ok_or_else(|| McpError::UnknownTool(name.to_owned()))?;
        let arguments = match arguments {
            serde_json::Value::Object(map) => Some(map),
            serde_json::Value::Null => None,
            _ => {
                return Ok(Err(format!(
                    "the arguments of {} must be a JSON object",
                    tool.exposed_name
                )))
            }
        };
        let mut params = CallToolRequestParams::new(tool.name.clone());
        params.arguments = arguments;
        let timeout = self.config.call_timeout;
        let attempt = |service: Arc<RunningService<RoleClient, Handler>>| {
            let params = params.clone();
            async move {
                match tokio::time::timeout(timeout, service.call_tool(params)).await {
                    Ok(result) => Ok(result),
                    Err(_) => Err(McpError::Timeout(timeout)),
                }
            }
        };
        let service = self.connection().await?;
        let result = match attempt(service).await? {
            Err(e) if connection_lost(&e) => {
                tracing::info!(slug = %self.config.slug, error = %e, "MCP connection lost; reconnecting once");
                self.drop_connection().await;
                attempt(self.connection().await?).await?
            }
            other => other,
        };
        match result {
            Ok(result) => {
                let text = render(&result, self.config.max_output_bytes);
                Ok(if result.is_error == Some(true) {
                    Err(text)
                } else {
                    Ok(text)
                })
            }
            Err(ServiceError::McpError(e)) => Ok(Err(format!(
                "the MCP server refused the call: {}",
                e.message
            ))),
            Err(e) => Err(McpError::Protocol(e.to_string())),
        }
    }

    /// Closes the session (if any).
    pub async fn close(&self) {
        self.drop_connection().await;
    }

    async fn drop_connection(&self) {
        if let Some(service) = self.connection.lock().await.take() {
            if let Ok(service) = Arc::try_unwrap(service) {
                let _ = service.cancel().await;
            }
        }
    }

    async fn list(&self) -> Result<Vec<McpTool>, McpError> {
        let listed = match self.list_once(self.connection().await?).await {
            Err(McpError::Protocol(e)) => {
                tracing::info!(slug = %self.config.slug, error = %e, "tools/list failed; reconnecting once");
                self.drop_connection().await;
                self.list_once(self.connection().await?).await?
            }
            other => other?,
        };
        let mut tools = Vec::with_capacity(listed.len());
        let mut seen = std::collections::HashSet::new();
        for tool in listed {
            let exposed = exposed_name(&self.config.slug, &tool.name);
            if !seen.insert(exposed.clone()) {
                return Err(McpError::Protocol(format!(
                    "two tools of the server are both exposed as {exposed}"
                )));
            }
            tools.push(McpTool {
                exposed_name: exposed,
                name: tool.name.into_owned(),
                description: tool.description.map(Cow::into_owned).unwrap_or_default(),
                input_schema: serde_json::Value::Object((*tool.input_schema).clone()),
            });
        }
        Ok(tools)
    }

    async fn list_once(
        &self,
        service: Arc<RunningService<RoleClient, Handler>>,
    ) -> Result<Vec<rmcp::model::Tool>, McpError> {
        let timeout = self.config.call_timeout;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that keeps returning cursors is cut off after this many pages.
        for _ in 0..100 {
            let params = cursor
                .take()
                .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
            let page = tokio::time::timeout(timeout, service.list_tools(params))
                .await
                .map_err(|_| McpError::Timeout(timeout))?
                .map_err(|e| McpError::Protocol(e.to_string()))?;
            tools.extend(page.tools);
            match page.next_cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => return Ok(tools),
            }
        }
        Err(McpError::Protocol(
            "tools/list returned more than 100 pages".into(),
        ))
    }

    /// The live connection, connecting (and initializing) first when there is none.
    async fn connection(&self) -> Result<Arc<RunningService<RoleClient, Handler>>, McpError> {
        let mut slot = self.connection.lock().await;
        if let Some(service) = slot.as_ref() {
            if !service.is_closed() {
                return Ok(service.clone());
            }
        }
        let handler = Handler {
            stale: self.stale.clone(),
        };
        let timeout = self.config.call_timeout;
        let service = match &self.config.transport {
            McpTransport::StreamableHttp { url } => {
                let Some(http) = self.http.clone() else {
                    return Err(McpError::Config("no HTTP client".into()));
                };
                let transport = StreamableHttpClientTransport::with_client(
                    http,
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()),
                );
                tokio::time::timeout(timeout, handler.serve(transport))
                    .await
                    .map_err(|_| McpError::Timeout(timeout))?
                    .map_err(|e| McpError::Connect(e.to_string()))?
            }
            McpTransport::Stdio { command, args, env } => {
                if !self.policy.allow_stdio {
                    return Err(McpError::StdioDisabled);
                }
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .envs(env)
                    .kill_on_drop(true);
                let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| McpError::Connect(format!("cannot start {command:?}: {e}")))?;
                tokio::time::timeout(timeout, handler.serve(transport))
                    .await
                    .map_err(|_| McpError::Timeout(timeout))?
                    .map_err(|e| McpError::Connect(e.to_string()))?
            }
        };
        let service = Arc::new(service);
        *slot = Some(service.clone());
        Ok(service)
    }
}

/// Whether a call failed because the connection is gone (worth one reconnect).
fn connection_lost(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::TransportClosed | ServiceError::TransportSend(_)
    )
}

/// The text the model sees: the text blocks joined by newlines; other blocks described; the
/// structured content as JSON when there is no text.
fn render(result: &rmcp::model::CallToolResult, max: usize) -> String {
    let mut parts = Vec::new();
    for block in &result.content {
        let Ok(value) = serde_json::to_value(block) else {
            continue;
        };
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        match field("type") {
            "text" => parts.push(field("text").to_owned()),
            "image" | "audio" => parts.push(format!(
                "[{} {}, {} bytes of base64]",
                field("type"),
                field("mimeType"),
                field("data").len()
            )),
            "resource" => {
                let resource = value.get("resource");
                let text = resource
                    .and_then(|r| r.get("text"))
                    .and_then(|t| t.as_str());
                let uri = resource
                    .and_then(|r| r.get("uri"))
                    .and_then(|u| u.as_str())
                    .unwrap_or_default();
                match text {
                    Some(text) => parts.push(format!("[resource {uri}]\n{text}")),
                    None => parts.push(format!("[resource {uri}]")),
                }
            }
            "resource_link" => parts.push(format!("[resource link {}]", field("uri"))),
            other => parts.push(format!("[{other} content]")),
        }
    }
    if let Some(structured) = &result.structured_content {
        if parts.is_empty() || result.content.is_empty() {
            parts.push(structured.to_string());
        }
    }
    let mut text = parts.join("\n");
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[output truncated]");
    }
    text
}

/// Receives the server's notifications.
#[derive(Clone)]
struct Handler {
    stale: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.stale.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// Whether an address is one a tool may not reach unless the operator allows private targets:
/// loopback, private (RFC 1918, unique local), link-local (incl. 169.254.169.254), CGNAT,
/// unspecified, broadcast, multicast, documentation, and IPv4-mapped forms of those.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

fn check_url(raw: &str) -> Result<(), McpError> {
    let url = reqwest::Url::parse(raw).map_err(|e| McpError::Config(format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(McpError::Config(format!(
            "{raw:?} must be an http(s) URL with a host"
        )));
    }
    Ok(())
}

/// Refuses URLs whose host is a private IP literal (names are checked by [`GuardedResolver`]).
fn check_literal(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_private(ip) {
        return Err(format!(
            "{ip} is a private, loopback or link-local address (refused unless the operator allows private MCP targets)"
        ));
    }
    Ok(())
}

/// DNS resolution that drops private addresses (and fails when none is left).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves only to private, loopback or link-local addresses (refused unless the operator allows private MCP targets)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Auth

/// An OAuth token and when to stop using it.
struct Token {
    value: String,
    until: Instant,
}

/// Produces the `Authorization` header value of each request.
struct AuthState {
    auth: McpAuth,
    token: tokio::sync::Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl AuthState {
    async fn header(
        &self,
        client: &reqwest::Client,
        allow_private: bool,
    ) -> Result<Option<String>, String> {
        match &self.auth {
            McpAuth::None => Ok(None),
            McpAuth::Bearer { token } => Ok(Some(format!("Bearer {token}"))),
            McpAuth::OauthClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            } => {
                let mut slot = self.token.lock().await;
                if let Some(token) = slot.as_ref() {
                    if Instant::now() < token.until {
                        return Ok(Some(format!("Bearer {}", token.value)));
                    }
                }
                check_literal(token_url, allow_private)?;
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                ];
                if let Some(scope) = scope {
                    form.push(("scope", scope));
                }
                if let Some(audience) = audience {
                    form.push(("audience", audience));
                }
                let response = client
                    .post(token_url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| format!("token request failed: {e}"))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!("the token endpoint answered {status}"));
                }
                let body = read_limited(response, 64 * 1024)
                    .await
                    .map_err(|e| format!("token response: {e}"))?;
                let token: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| format!("token response is not a token: {e}"))?;
                // Refresh a little before the server's deadline; an hour when it names none.
                let life = token.expires_in.unwrap_or(3600).saturating_sub(30).max(1);
                let value = token.access_token;
                *slot = Some(Token {
                    value: value.clone(),
                    until: Instant::now() + Duration::from_secs(life),
                });
                Ok(Some(format!("Bearer {value}")))
            }
        }
    }

    /// Forgets the token after a 401; true when another attempt may help.
    async fn invalidate(&self) -> bool {
        match self.auth {
            McpAuth::OauthClientCredentials { .. } => {
                *self.token.lock().await = None;
                true
            }
            _ => false,
        }
    }
}

async fn read_limited(response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if body.len() + chunk.len() > max {
            return Err(format!("more than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// The streamable-HTTP client backend of rmcp, over the workspace's reqwest

/// `rmcp`'s HTTP backend on our reqwest client: auth headers, the address guard, no redirects,
/// bounded JSON bodies, and session expiry detection.
#[derive(Clone)]
struct McpHttp {
    client: reqwest::Client,
    auth: Arc<AuthState>,
    allow_private: bool,
}

/// Errors of the HTTP backend (reqwest's, or ours as text).
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("{}", error_chain(.0))]
    Reqwest(#[from] reqwest::Error),
    #[error("{0}")]
    Refused(String),
}

/// An error with its causes (reqwest hides the resolver's refusal in a source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type HttpResult<T> = Result<T, StreamableHttpError<HttpError>>;

impl McpHttp {
    fn new(auth: &McpAuth, allow_private: bool) -> Result<Self, McpError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        let client = builder
            .build()
            .map_err(|e| McpError::Config(e.to_string()))?;
        Ok(Self {
            client,
            auth: Arc::new(AuthState {
                auth: auth.clone(),
                token: tokio::sync::Mutex::new(None),
            }),
            allow_private,
        })
    }

    /// Sends `build()` with auth; on a 401 with OAuth, fetches a new token and sends again.
    async fn send(
        &self,
        uri: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> HttpResult<reqwest::Response> {
        check_literal(uri, self.allow_private)
            .map_err(|e| StreamableHttpError::Client(HttpError::Refused(e)))?;
        for attempt in 0..2 {
            let mut request = build(&self.client);
            let header = self
                .auth
                .header(&self.client, self.allow_private)
                .await
                .map_err(|e| StreamableHttpError::Client(HttpError::Refused(e)))?;
            if let Some(header) = header {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            let response = request
                .send()
                .await
                .map_err(|e| StreamableHttpError::Client(HttpError::Reqwest(e)))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                && attempt == 0
                && self.auth.invalidate().await
            {
                continue;
            }
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(StreamableHttpError::UnexpectedServerResponse(Cow::from(
                    "HTTP 401 Unauthorized: the MCP server refused the credentials",
                )));
            }
            return Ok(response);
        }
        Err(StreamableHttpError::UnexpectedServerResponse(Cow::from(
            "HTTP 401 Unauthorized",
        )))
    }
}

fn with_headers(
    mut request: reqwest::RequestBuilder,
    custom: &HashMap<HeaderName, HeaderValue>,
) -> reqwest::RequestBuilder {
    for (name, value) in custom {
        if name.as_str().eq_ignore_ascii_case("authorization") {
            continue;
        }
        request = request.header(name, value);
    }
    request
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn sse(response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    SseStream::from_bytes_stream(response.bytes_stream()).boxed()
}

impl StreamableHttpClient for McpHttp {
    type Error = HttpError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let body = serde_json::to_vec(&message)?;
        let response = self
            .send(&uri, |client| {
                let mut request = client
                    .post(uri.as_ref())
                    .header(reqwest::header::ACCEPT, ACCEPT_BOTH)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(session) = &session_id {
                    request = request.header(SESSION_HEADER, session.as_ref());
                }
                with_headers(request, &custom_headers)
            })
            .await?;
        let status = response.status();
        if matches!(
            status,
            reqwest::StatusCode::ACCEPTED | reqwest::StatusCode::NO_CONTENT
        ) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let new_session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let kind = content_type(&response);
        if status.is_success() && kind.starts_with("text/event-stream") {
            return Ok(StreamableHttpPostResponse::Sse(sse(response), new_session));
        }
        let max = if status.is_success() {
            limits.max_json_response_size
        } else {
            limits.max_error_response_size.max(4096)
        };
        let content_length = response.content_length();
        let body = read_limited(response, max).await.map_err(|e| {
            if status.is_success() {
                StreamableHttpError::ResponseBodyTooLarge { max_size: max }
            } else {
                StreamableHttpError::UnexpectedServerResponse(Cow::from(format!(
                    "HTTP {status}: {e}"
                )))
            }
        })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            if status == reqwest::StatusCode::BAD_REQUEST
                && session_id.is_some()
                && text.to_ascii_lowercase().contains("session")
            {
                return Err(StreamableHttpError::SessionExpired);
            }
            if let Ok(message @ JsonRpcMessage::Error(_)) =
                serde_json::from_slice::<ServerJsonRpcMessage>(&body)
            {
                return Ok(StreamableHttpPostResponse::Json(message, new_session));
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::from(
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
            )));
        }
        if body.is_empty() || content_length == Some(0) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if !kind.starts_with("application/json") {
            return Err(StreamableHttpError::UnexpectedContentType(Some(kind)));
        }
        let message: ServerJsonRpcMessage = serde_json::from_slice(&body)?;
        Ok(StreamableHttpPostResponse::Json(message, new_session))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        let response = self
            .send(&uri, |client| {
                with_headers(
                    client
                        .delete(uri.as_ref())
                        .header(SESSION_HEADER, session_id.as_ref()),
                    &custom_headers,
                )
            })
            .await?;
        if response.status().is_success()
            || response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED
        {
            return Ok(());
        }
        Err(StreamableHttpError::UnexpectedServerResponse(Cow::from(
            format!("HTTP {} closing the session", response.status()),
        )))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxStream<'static, Result<Sse, SseError>>> {
        let response = self
            .send(&uri, |client| {
                let mut request = client
                    .get(uri.as_ref())
                    .header(reqwest::header::ACCEPT, "text/event-stream");
                if let Some(session) = &session_id {
                    request = request.header(SESSION_HEADER, session.as_ref());
                }
                if let Some(id) = &last_event_id {
                    request = request.header(LAST_EVENT_HEADER, id.as_str());
                }
                with_headers(request, &custom_headers)
            })
            .await?;
        let status = response.status();
        if status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        if !status.is_success() {
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::from(
                format!("HTTP {status} opening the event stream"),
            )));
        }
        if !content_type(&response).starts_with("text/event-stream") {
            return Err(StreamableHttpError::UnexpectedContentType(Some(
                content_type(&response),
            )));
        }
        Ok(sse(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_model_safe_deterministic_and_distinct() {
        assert_eq!(exposed_name("ev", "echo"), "mcp_ev_echo");
        assert_eq!(exposed_name("ev", "get-sum"), "mcp_ev_get-sum");
        let dotted = exposed_name("ev", "files.read");
        // The example of docs/mcp.md.
        assert_eq!(
            exposed_name("docs", "files.read"),
            "mcp_docs_files_read_601e4eb6"
        );
        assert_ne!(dotted, exposed_name("ev", "files_read"));
        assert_ne!(dotted, exposed_name("ev", "files/read"));
        let long = "x".repeat(100);
        let a = exposed_name("some-server", &long);
        let b = exposed_name("some-server", &format!("{long}y"));
        assert_eq!(a.len(), MAX_TOOL_NAME);
        assert_ne!(a, b);
        assert_eq!(a, exposed_name("some-server", &long), "deterministic");
        for name in [a, b, dotted, exposed_name("ev", "ünïcode tool")] {
            assert!(name.len() <= MAX_TOOL_NAME);
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }
    }

    #[test]
    fn slugs_are_checked() {
        assert!(validate_slug("everything").is_ok());
        assert!(validate_slug("a-1_b").is_ok());
        for bad in ["", "-a", "A", "a.b", &"a".repeat(25)] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_private(ip.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{ip}"
            );
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(
                !is_private(ip.parse().unwrap_or_else(|e| panic!("{e}"))),
                "{ip}"
            );
        }
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let auth = McpAuth::OauthClientCredentials {
            token_url: "https://id.example/token".into(),
            client_id: "cid".into(),
            client_secret: "very-secret".into(),
            scope: None,
            audience: None,
        };
        assert!(!format!("{auth:?}").contains("very-secret"));
        let bearer = McpAuth::Bearer {
            token: "tok-secret".into(),
        };
        assert!(!format!("{bearer:?}").contains("tok-secret"));
    }
}

/// For test suites: the reference server `@modelcontextprotocol/server-everything` in
/// streamable HTTP mode, from `TESSERA_TEST_MCP_EVERYTHING`.
#[cfg(feature = "testing")]
#[allow(clippy::expect_used)] // Test support fails loudly by design.
pub mod testing {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::process::{Child, Command};

    /// The server-everything executable, or `None` (skip) unless `TESSERA_REQUIRE_MCP=1`
    /// makes its absence a panic.
    pub fn everything_bin() -> Option<PathBuf> {
        match std::env::var_os("TESSERA_TEST_MCP_EVERYTHING") {
            Some(path) if PathBuf::from(&path).exists() => Some(path.into()),
            _ if std::env::var("TESSERA_REQUIRE_MCP").as_deref() == Ok("1") => panic!(
                "TESSERA_REQUIRE_MCP=1 but TESSERA_TEST_MCP_EVERYTHING does not name the \
                 server-everything executable"
            ),
            _ => {
                eprintln!("skipped: TESSERA_TEST_MCP_EVERYTHING is not set");
                None
            }
        }
    }

    /// server-everything in streamable HTTP mode on a local port.
    pub struct Everything {
        bin: PathBuf,
        pub port: u16,
        child: Child,
    }

    impl Everything {
        pub async fn start(bin: &PathBuf, port: u16) -> Self {
            let child = Command::new(bin)
                .arg("streamableHttp")
                .env("PORT", port.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("server-everything starts");
            // Readiness: wait until the port accepts connections.
            for _ in 0..400 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Self {
                        bin: bin.clone(),
                        port,
                        child,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("server-everything did not listen on port {port}");
        }

        pub async fn on_free_port(bin: &PathBuf) -> Self {
            let port = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port")
                .local_addr()
                .expect("its address")
                .port();
            Self::start(bin, port).await
        }

        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}/mcp", self.port)
        }

        /// Stops the server and starts a new one on the same port: every session is gone.
        pub async fn restart(mut self) -> Self {
            let _ = self.child.kill().await;
            let (bin, port) = (self.bin.clone(), self.port);
            drop(self);
            Self::start(&bin, port).await
        }
    }
}
