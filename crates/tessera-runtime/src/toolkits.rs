//! Third-party toolkits (the `Virtual` tools): the [`ToolkitProvider`] interface, its HTTP
//! implementation (the JSON protocol of docs/toolkits.md, configured by `[toolkits]`), the
//! node's [`Toolkits`] (provider + tool list cache) shared by the API and the runs, and
//! [`ToolkitTools`], which offers a run's model the tools of every toolkit its actor connected.
//!
//! A toolkit surfaces nothing until the run's actor has a `connected` connection to it: the
//! tools are listed when a run starts, from the connections stored then (pending ones are
//! asked about first, so an authorization that finished meanwhile counts).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tessera_domain::thread::ToolCall;
use tessera_domain::tool::InputSchema;
use tessera_domain::toolkit::{
    exposed_name, ConnectionStatus, Toolkit, ToolkitConnection, ToolkitSlug,
};
use tessera_domain::{ActorId, Scope};
use tessera_store::{Store, StoreError};

use crate::provider::ToolSpec;
use crate::tools::{ToolContext, ToolExecutor, ToolOutput};

/// `[toolkits]`: the operator's toolkit provider. Without `base_url` toolkits are off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolkitConfig {
    /// The provider's API root, e.g. `https://toolkits.example.com/v1`.
    pub base_url: Option<String>,
    /// The environment variable holding the provider's API key, sent as
    /// `Authorization: Bearer`; read on every request, never logged.
    pub api_key_env: Option<String>,
    /// Longest a management request (listing, connecting, status) may take.
    pub timeout_seconds: u64,
    /// How long a toolkit's tool list is reused before it is asked for again.
    pub tools_cache_seconds: u64,
}

impl Default for ToolkitConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key_env: None,
            timeout_seconds: 30,
            tools_cache_seconds: 300,
        }
    }
}

impl ToolkitConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.base_url {
            let parsed =
                url::Url::parse(url).map_err(|e| format!("toolkits.base_url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
                return Err(format!(
                    "toolkits.base_url {url:?} must be an http:// or https:// URL"
                ));
            }
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err("toolkits.timeout_seconds must be between 1 and 600".to_owned());
        }
        Ok(())
    }
}

/// A toolkit as the provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ToolkitInfo {
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A tool of a toolkit as the provider describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ToolkitTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
}

/// A connected account at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedAccount {
    pub id: String,
    pub status: ConnectionStatus,
    /// Where the end user authorizes it (while pending).
    pub redirect_url: Option<String>,
}

/// Why a provider request failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolkitError {
    #[error("the toolkit provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the toolkit provider answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the toolkit provider's answer is not valid: {0}")]
    Invalid(String),
    #[error("the toolkit provider's API key is not available: {0}")]
    Key(String),
}

/// An external toolkit provider (docs/toolkits.md describes the HTTP protocol of
/// [`HttpToolkitProvider`]; another implementation can adapt any Composio-like service).
#[async_trait]
pub trait ToolkitProvider: Send + Sync {
    /// The toolkit named `slug`; `None` when the provider has none.
    async fn toolkit(&self, slug: &ToolkitSlug) -> Result<Option<ToolkitInfo>, ToolkitError>;

    /// The toolkit's tools.
    async fn tools(&self, slug: &ToolkitSlug) -> Result<Vec<ToolkitTool>, ToolkitError>;

    /// Starts a connected account of `user_id` (the actor id) for the toolkit; the provider
    /// sends the end user back to `redirect_url` once they authorized it.
    async fn create_account(
        &self,
        slug: &ToolkitSlug,
        user_id: &str,
        redirect_url: Option<&str>,
    ) -> Result<ConnectedAccount, ToolkitError>;

    /// A connected account's current state; `None` when the provider no longer has it.
    async fn account(&self, id: &str) -> Result<Option<ConnectedAccount>, ToolkitError>;

    /// Revokes a connected account (one the provider no longer has counts as revoked).
    async fn delete_account(&self, id: &str) -> Result<(), ToolkitError>;

    /// Runs `tool` with the account: `Ok(Ok(result))`, or `Ok(Err(message))` when the tool
    /// itself failed.
    async fn execute(
        &self,
        tool: &str,
        account_id: &str,
        user_id: &str,
        arguments: &Value,
    ) -> Result<Result<Value, String>, ToolkitError>;
}

/// Largest provider answer read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The JSON-over-HTTP provider of docs/toolkits.md.
pub struct HttpToolkitProvider {
    base: url::Url,
    api_key_env: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpToolkitProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpToolkitProvider")
            // Without any user:password the operator may have put in the URL.
            .field(
                "base",
                &format!(
                    "{}{}",
                    self.base.origin().ascii_serialization(),
                    self.base.path()
                ),
            )
            .field("api_key_env", &self.api_key_env)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct AccountAnswer {
    id: String,
    status: String,
    #[serde(default)]
    redirect_url: Option<String>,
}

#[derive(Deserialize)]
struct ToolsAnswer {
    tools: Vec<ToolkitTool>,
}

impl HttpToolkitProvider {
    /// `None` when `config` names no `base_url` (toolkits are off).
    pub fn from_config(config: &ToolkitConfig) -> Result<Option<Self>, String> {
        config.validate()?;
        let Some(base) = &config.base_url else {
            return Ok(None);
        };
        let base = url::Url::parse(base).map_err(|e| format!("toolkits.base_url: {e}"))?;
        if let Some(var) = &config.api_key_env {
            if std::env::var_os(var).is_none() {
                tracing::warn!(variable = %var,
                    "toolkits.api_key_env names an unset variable; provider requests will fail until it is set");
            }
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the toolkit provider's HTTP client: {e}"))?;
        Ok(Some(Self {
            base,
            api_key_env: config.api_key_env.clone(),
            timeout: Duration::from_secs(config.timeout_seconds),
            client,
        }))
    }

    fn url(&self, segments: &[&str]) -> Result<url::Url, ToolkitError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ToolkitError::Invalid("toolkits.base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn key(&self) -> Result<Option<String>, ToolkitError> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(key) => Ok(Some(key)),
            Err(std::env::VarError::NotPresent) => Err(ToolkitError::Key(format!(
                "the environment variable {var} (toolkits.api_key_env) is not set"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(ToolkitError::Key(format!(
                "the environment variable {var} (toolkits.api_key_env) is not valid UTF-8"
            ))),
        }
    }

    /// Sends a request; `Ok(None)` on 404, the parsed JSON on success.
    async fn send(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Option<Value>, ToolkitError> {
        let mut request = self
            .client
            .request(method, self.url(segments)?)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(key) = self.key()? {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| ToolkitError::Unreachable(without_url(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ToolkitError::Unreachable(without_url(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ToolkitError::Invalid(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(ToolkitError::Status {
                status: status.as_u16(),
                message,
            });
        }
        if body.is_empty() {
            return Ok(Some(Value::Null));
        }
        parsed
            .map(Some)
            .ok_or_else(|| ToolkitError::Invalid("the answer is not JSON".into()))
    }

    fn account_from(value: Value) -> Result<ConnectedAccount, ToolkitError> {
        let answer: AccountAnswer = serde_json::from_value(value)
            .map_err(|e| ToolkitError::Invalid(format!("connected account: {e}")))?;
        let status = ConnectionStatus::parse(&answer.status).ok_or_else(|| {
            ToolkitError::Invalid(format!(
                "connected account status {:?} is not pending, connected, failed or expired",
                answer.status
            ))
        })?;
        Ok(ConnectedAccount {
            id: answer.id,
            status,
            redirect_url: answer.redirect_url,
        })
    }
}

/// A reqwest error's text without the URL (which could carry a query the operator set).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(err);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[async_trait]
impl ToolkitProvider for HttpToolkitProvider {
    async fn toolkit(&self, slug: &ToolkitSlug) -> Result<Option<ToolkitInfo>, ToolkitError> {
        let Some(value) = self
            .send(
                reqwest::Method::GET,
                &["toolkits", slug.as_str()],
                None,
                self.timeout,
            )
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ToolkitError::Invalid(format!("toolkit: {e}")))
    }

    async fn tools(&self, slug: &ToolkitSlug) -> Result<Vec<ToolkitTool>, ToolkitError> {
        let value = self
            .send(
                reqwest::Method::GET,
                &["toolkits", slug.as_str(), "tools"],
                None,
                self.timeout,
            )
            .await?
            .ok_or_else(|| no_toolkit(slug))?;
        let answer: ToolsAnswer = serde_json::from_value(value)
            .map_err(|e| ToolkitError::Invalid(format!("tool list: {e}")))?;
        Ok(answer.tools)
    }

    async fn create_account(
        &self,
        slug: &ToolkitSlug,
        user_id: &str,
        redirect_url: Option<&str>,
    ) -> Result<ConnectedAccount, ToolkitError> {
        let body =
            json!({"toolkit": slug.as_str(), "user_id": user_id, "redirect_url": redirect_url});
        let value = self
            .send(
                reqwest::Method::POST,
                &["connected_accounts"],
                Some(body),
                self.timeout,
            )
            .await?
            .ok_or_else(|| no_toolkit(slug))?;
        Self::account_from(value)
    }

    async fn account(&self, id: &str) -> Result<Option<ConnectedAccount>, ToolkitError> {
        self.send(
            reqwest::Method::GET,
            &["connected_accounts", id],
            None,
            self.timeout,
        )
        .await?
        .map(Self::account_from)
        .transpose()
    }

    async fn delete_account(&self, id: &str) -> Result<(), ToolkitError> {
        self.send(
            reqwest::Method::DELETE,
            &["connected_accounts", id],
            None,
            self.timeout,
        )
        .await
        .map(|_| ())
    }

    async fn execute(
        &self,
        tool: &str,
        account_id: &str,
        user_id: &str,
        arguments: &Value,
    ) -> Result<Result<Value, String>, ToolkitError> {
        let body =
            json!({"connected_account_id": account_id, "user_id": user_id, "arguments": arguments});
        // The run's per-tool timeout bounds the call; this only stops a request nobody waits for.
        let limit = Duration::from_secs(u64::from(
            tessera_domain::tool::ToolSpec::MAX_TIMEOUT_SECONDS,
        ));
        let value = self
            .send(
                reqwest::Method::POST,
                &["tools", tool, "execute"],
                Some(body),
                limit,
            )
            .await?
            .ok_or_else(|| ToolkitError::Status {
                status: 404,
                message: format!("the provider has no tool `{tool}`"),
            })?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| error.to_string());
            return Ok(Err(message));
        }
        match value.get("result") {
            Some(result) => Ok(Ok(result.clone())),
            None => Err(ToolkitError::Invalid(
                "the execution answer has neither `result` nor `error`".into(),
            )),
        }
    }
}

/// A toolkit's tool as offered to models: its exposed name and checked schema.
#[derive(Debug, Clone)]
pub struct OfferedTool {
    /// `tk_{toolkit}_{tool}`.
    pub exposed_name: String,
    /// The provider's name.
    pub name: String,
    pub description: String,
    pub input_schema: InputSchema,
}

/// A toolkit's tools and when they were listed.
type ListedTools = (Instant, Arc<Vec<OfferedTool>>);

/// The node's toolkit provider with a cache of tool lists, shared by the API and the runs.
pub struct Toolkits {
    provider: Arc<dyn ToolkitProvider>,
    cache_for: Duration,
    cache: tokio::sync::Mutex<HashMap<ToolkitSlug, ListedTools>>,
}

impl Toolkits {
    pub fn new(provider: Arc<dyn ToolkitProvider>, cache_for: Duration) -> Self {
        Self {
            provider,
            cache_for,
            cache: Default::default(),
        }
    }

    pub fn provider(&self) -> &dyn ToolkitProvider {
        self.provider.as_ref()
    }

    /// The toolkit's tools, from the cache while it is fresh. A tool whose input schema is not
    /// a JSON Schema of an object is left out (logged), as is a second tool with one name.
    pub async fn tools(&self, slug: &ToolkitSlug) -> Result<Arc<Vec<OfferedTool>>, ToolkitError> {
        if let Some((at, tools)) = self.cache.lock().await.get(slug) {
            if at.elapsed() < self.cache_for {
                return Ok(tools.clone());
            }
        }
        let listed = self.provider.tools(slug).await?;
        let mut seen = HashSet::new();
        let mut offered = Vec::with_capacity(listed.len());
        for tool in listed {
            let exposed = exposed_name(slug, &tool.name);
            let schema = match InputSchema::parse("input_schema", tool.input_schema) {
                Ok(schema) => schema,
                Err(err) => {
                    tracing::warn!(toolkit = %slug, tool = %tool.name, problem = %err.message,
                        "a toolkit tool's input schema is not usable; the tool is not offered");
                    continue;
                }
            };
            if seen.insert(exposed.clone()) {
                offered.push(OfferedTool {
                    exposed_name: exposed,
                    name: tool.name,
                    description: tool.description,
                    input_schema: schema,
                });
            }
        }
        let offered = Arc::new(offered);
        self.cache
            .lock()
            .await
            .insert(slug.clone(), (Instant::now(), offered.clone()));
        Ok(offered)
    }

    /// Asks the provider about a pending connection and records a change. A provider that
    /// cannot answer leaves the stored state (logged); one that lost the account makes it
    /// `expired`.
    pub async fn refresh(
        &self,
        store: &dyn Store,
        scope: &Scope,
        connection: ToolkitConnection,
    ) -> Result<ToolkitConnection, StoreError> {
        let status = match self.provider.account(&connection.account_id).await {
            Ok(Some(account)) => account.status,
            Ok(None) => ConnectionStatus::Expired,
            Err(err) => {
                tracing::warn!(connection_id = %connection.id, error = %err,
                    "the toolkit provider could not report a connection's status");
                return Ok(connection);
            }
        };
        if status == connection.status {
            return Ok(connection);
        }
        match store
            .set_toolkit_connection_status(scope, &connection.id, status)
            .await
        {
            Ok(updated) => Ok(updated),
            // Replaced or disconnected meanwhile: what was read still describes this request.
            Err(StoreError::NotFound { .. }) => Ok(connection),
            Err(err) => Err(err),
        }
    }
}

/// One offered tool with what calling it needs.
struct Offer {
    tool: OfferedTool,
    account_id: String,
    toolkit: Toolkit,
}

/// The toolkit tools of one run: those of every enabled toolkit the run's actor connected.
pub struct ToolkitTools {
    toolkits: Arc<Toolkits>,
    actor: ActorId,
    offers: Vec<Offer>,
}

impl ToolkitTools {
    /// Lists the actor's connected toolkits (asking the provider about pending connections
    /// first) and their tools. A toolkit whose tools cannot be listed contributes none to
    /// this run (logged).
    pub async fn load(
        toolkits: Arc<Toolkits>,
        store: &dyn Store,
        scope: &Scope,
        actor: &ActorId,
    ) -> Result<Self, StoreError> {
        let mut offers = Vec::new();
        let mut seen = HashSet::new();
        for (toolkit, connection) in store.actor_toolkits(scope, actor).await? {
            let Some(mut connection) = connection else {
                continue;
            };
            if connection.status == ConnectionStatus::Pending {
                connection = toolkits.refresh(store, scope, connection).await?;
            }
            if connection.status != ConnectionStatus::Connected {
                continue;
            }
            match toolkits.tools(&toolkit.slug).await {
                Ok(tools) => {
                    for tool in tools.iter() {
                        if seen.insert(tool.exposed_name.clone()) {
                            offers.push(Offer {
                                tool: tool.clone(),
                                account_id: connection.account_id.clone(),
                                toolkit: toolkit.clone(),
                            });
                        }
                    }
                }
                Err(err) => tracing::warn!(toolkit = %toolkit.slug, error = %err,
                    "a toolkit's tools could not be listed; they are not offered to this run"),
            }
        }
        Ok(Self {
            toolkits,
            actor: actor.clone(),
            offers,
        })
    }

    fn offer(&self, name: &str) -> Option<&Offer> {
        self.offers.iter().find(|o| o.tool.exposed_name == name)
    }
}

#[async_trait]
impl ToolExecutor for ToolkitTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.offers
            .iter()
            .map(|o| ToolSpec {
                name: o.tool.exposed_name.clone(),
                description: o.tool.description.clone(),
                parameters: o.tool.input_schema.as_value().clone(),
            })
            .collect()
    }

    fn requiring_confirmation(&self) -> Vec<String> {
        self.offers
            .iter()
            .filter(|o| o.toolkit.settings.requires_confirmation)
            .map(|o| o.tool.exposed_name.clone())
            .collect()
    }

    fn timeout(&self, tool: &str) -> Option<Duration> {
        self.offer(tool)
            .and_then(|o| o.toolkit.settings.timeout_seconds)
            .map(|s| Duration::from_secs(u64::from(s)))
    }

    fn confirmation_expiry(&self, tool: &str) -> Option<u32> {
        self.offer(tool)
            .and_then(|o| o.toolkit.settings.confirmation_expires_in_seconds)
    }

    async fn execute(&self, _ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        let Some(offer) = self.offer(&call.name) else {
            return ToolOutput::error(format!("unknown tool `{}`", call.name));
        };
        if let Err(problem) = offer.tool.input_schema.validate(&call.arguments) {
            return ToolOutput::error(format!(
                "invalid arguments for `{}` (the tool did not run): {problem}",
                call.name
            ));
        }
        match self
            .toolkits
            .provider
            .execute(
                &offer.tool.name,
                &offer.account_id,
                self.actor.as_str(),
                &call.arguments,
            )
            .await
        {
            Ok(Ok(Value::String(text))) => ToolOutput {
                result: Ok(text),
                events: Vec::new(),
            },
            Ok(Ok(value)) => ToolOutput {
                result: Ok(value.to_string()),
                events: Vec::new(),
            },
            Ok(Err(message)) => ToolOutput::error(message),
            Err(err) => ToolOutput::error(err.to_string()),
        }
    }
}

/// The provider's answer when it does not know `slug` (an empty 404).
fn no_toolkit(slug: &ToolkitSlug) -> ToolkitError {
    ToolkitError::Status {
        status: 404,
        message: format!("the provider has no toolkit `{slug}`"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configuration_is_checked_and_off_without_a_base_url() {
        assert!(HttpToolkitProvider::from_config(&ToolkitConfig::default())
            .unwrap()
            .is_none());
        for bad in ["ftp://x", "not a url", "mailto:a@b"] {
            let config = ToolkitConfig {
                base_url: Some(bad.into()),
                ..ToolkitConfig::default()
            };
            assert!(config.validate().is_err(), "{bad}");
        }
        let config = ToolkitConfig {
            base_url: Some("https://p.example/v1".into()),
            timeout_seconds: 0,
            ..ToolkitConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("timeout_seconds"));
    }

    #[test]
    fn urls_are_built_from_percent_encoded_segments() {
        let provider = HttpToolkitProvider::from_config(&ToolkitConfig {
            base_url: Some("https://user:pw@p.example/v1/".into()),
            ..ToolkitConfig::default()
        })
        .unwrap()
        .unwrap();
        let url = provider
            .url(&["tools", "issues/create x", "execute"])
            .unwrap();
        assert_eq!(url.path(), "/v1/tools/issues%2Fcreate%20x/execute");
        let shown = format!("{provider:?}");
        assert!(!shown.contains("pw"), "no credentials in logs: {shown}");
    }

    #[tokio::test]
    async fn a_missing_key_is_a_clear_error_before_any_request() {
        let provider = HttpToolkitProvider::from_config(&ToolkitConfig {
            // Nothing listens here: the key is checked first.
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key_env: Some("TESSERA_TEST_TOOLKIT_KEY_NEVER_SET".into()),
            ..ToolkitConfig::default()
        })
        .unwrap()
        .unwrap();
        let slug = ToolkitSlug::parse("toolkit", "github").unwrap();
        let err = provider.toolkit(&slug).await.unwrap_err();
        assert!(
            matches!(&err, ToolkitError::Key(m) if m.contains("TESSERA_TEST_TOOLKIT_KEY_NEVER_SET")),
            "{err}"
        );
    }
}
