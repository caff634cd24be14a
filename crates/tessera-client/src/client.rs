//! The [`Client`]: base URL, credentials and the shared HTTP connection pool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tessera_api::types::Health;
use tessera_api::Operation;

use crate::ai::Ai;
use crate::deployments::Deployments;
use crate::error::Error;
use crate::me::Me;
use crate::request::Request;
use crate::secret_keys::SecretKeys;
use crate::sessions::Sessions;
use crate::users::{AuditEvents, Organizations, Users};

/// How long to wait for a TCP/TLS connection. There is deliberately no overall request timeout:
/// streaming responses may legitimately stay open for a long time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT: &str = concat!("tessera-client/", env!("CARGO_PKG_VERSION"));

/// A client of one Tessera server.
///
/// Cloning is cheap (reference-counted): clones share the connection pool. The secret key is sent
/// as `Authorization: Bearer <key>` and never appears in `Debug` output.
///
/// ```no_run
/// # async fn demo() -> Result<(), tessera_client::Error> {
/// use tessera_client::{models::CreateAgentRequest, Client};
///
/// let client = Client::new("http://127.0.0.1:8080", "tsk_…");
/// let deployment = client.deployments().current().send().await?;
/// let agent = client
///     .ai()
///     .agents()
///     .create_agent(CreateAgentRequest {
///         name: "Support bot".into(),
///         ..Default::default()
///     })
///     .send()
///     .await?;
/// println!("{} in {}", agent.id, deployment.name);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    /// Origin (and optional path prefix) without a trailing slash.
    base_url: Arc<str>,
    api_key: Option<Arc<str>>,
}

impl Client {
    /// A client that authenticates with the secret key `api_key` (`tsk_…`).
    ///
    /// `base_url` is the server's origin, such as `http://127.0.0.1:8080`; a trailing slash is
    /// ignored.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Client {
        Client::with_http_client(default_http_client(), base_url, Some(api_key.into()))
    }

    /// A client without credentials, for public endpoints such as [`Client::health`].
    /// Authenticated operations answer `401 unauthorized`.
    pub fn unauthenticated(base_url: impl Into<String>) -> Client {
        Client::with_http_client(default_http_client(), base_url, None)
    }

    /// A client that sends its requests through `http`, e.g. one configured with a proxy,
    /// custom root certificates or timeouts. `api_key: None` sends no credentials.
    pub fn with_http_client(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: Option<String>,
    ) -> Client {
        let base_url: String = base_url.into();
        Client {
            http,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            api_key: api_key.map(Arc::from),
        }
    }

    /// The base URL requests are sent to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether this client sends a secret key.
    pub fn is_authenticated(&self) -> bool {
        self.api_key.is_some()
    }

    /// The caller's deployment.
    pub fn deployments(&self) -> Deployments<'_> {
        Deployments::new(self)
    }

    /// The deployment's secret keys.
    pub fn secret_keys(&self) -> SecretKeys<'_> {
        SecretKeys::new(self)
    }

    /// Runtime objects under `/ai`: actors, agents and actor projects.
    pub fn ai(&self) -> Ai<'_> {
        Ai::new(self)
    }

    /// Session management under `/api/v1`: the agent pool endpoint, closing sessions, context
    /// variables, pending actions and usage (secret key).
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self)
    }

    /// The deployment's users (secret key).
    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    /// The deployment's organizations and their members (secret key).
    pub fn organizations(&self) -> Organizations<'_> {
        Organizations::new(self)
    }

    /// The deployment's audit log (secret key).
    pub fn audit_events(&self) -> AuditEvents<'_> {
        AuditEvents::new(self)
    }

    /// The signed-in user's endpoints: sign-in and sign-out (browser session), `/me` (session
    /// cookie or user token) and the token keys. See [`Me`] for how to authenticate.
    pub fn me(&self) -> Me<'_> {
        Me::new(self)
    }

    /// Session tickets: minting (secret key) and exchanging them.
    pub fn session_tickets(&self) -> crate::tickets::SessionTickets<'_> {
        crate::tickets::SessionTickets::new(self)
    }

    /// The console API (console token from [`crate::Console::sign_in`]).
    pub fn console(&self) -> crate::tickets::Console<'_> {
        crate::tickets::Console::new(self)
    }

    /// The agent session's browser API (build the client with the exchange's
    /// `session_token`, or with a cookie-storing HTTP client).
    pub fn agent(&self) -> crate::tickets::AgentSessions<'_> {
        crate::tickets::AgentSessions::new(self)
    }

    /// The scheme, host and port of the base URL (`Origin` of first-party browser writes).
    pub(crate) fn origin(&self) -> String {
        match self.base_url.split_once("://") {
            Some((scheme, rest)) => {
                let authority = rest.split('/').next().unwrap_or_default();
                format!("{scheme}://{authority}")
            }
            None => self.base_url.to_string(),
        }
    }

    /// Liveness: `GET /healthz` (public). `status` is `ok` whenever the process serves HTTP.
    pub fn health(&self) -> Request<'_, Health> {
        Request::raw(self, reqwest::Method::GET, "/healthz")
    }

    /// Readiness: `GET /readyz` (public). When the database is unreachable the server answers
    /// `503` with `{"status": "unavailable"}`; that is returned as `Ok` with that status rather
    /// than as an error, so callers can poll it. Any other non-2xx answer is an [`Error::Api`].
    pub fn ready(&self) -> Request<'_, Health> {
        Request::raw(self, reqwest::Method::GET, "/readyz")
            .decode_also_on(reqwest::StatusCode::SERVICE_UNAVAILABLE.as_u16())
    }

    /// A typed request for any operation of the table, for operations this SDK has no method
    /// for yet. `path_params` fills the `{placeholders}` of `op.path` (percent-encoded); add a
    /// query with [`Request::query`] and a body with [`Request::json`].
    pub fn operation<T>(&self, op: Operation, path_params: &[(&str, &str)]) -> Request<'_, T> {
        Request::operation(self, op, path_params)
    }

    /// Sends `method path_and_query` with an optional JSON body and returns the HTTP status and
    /// the response body, **without** turning a non-2xx status into an error.
    ///
    /// The body is the parsed JSON, `Value::Null` when empty, or a JSON string holding the text
    /// when it is not JSON. `path_and_query` must start with `/` (e.g. `/ai/agents?limit=5`).
    /// Errors are only transport failures and an invalid method or path.
    ///
    /// Requests other than `GET`/`HEAD` carry `Origin: <this server's origin>`, as a first-party
    /// client, so that the browser operations (`signIn`, …) that check it can be called too.
    pub async fn call_raw(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Error> {
        self.call_raw_with_headers(method, path_and_query, body, &[])
            .await
    }

    /// Like [`Client::call_raw`], with extra request headers (`(name, value)` pairs), e.g.
    /// `Idempotency-Key`.
    pub async fn call_raw_with_headers(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
        headers: &[(String, String)],
    ) -> Result<(u16, Value), Error> {
        let mut request = self.raw_request(method, path_and_query, headers, false)?;
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.execute().await?;
        Ok((response.status, raw_body_value(&response.body)))
    }

    /// Like [`Client::call_raw`], with a raw (non-JSON) body of the given media type, e.g. a
    /// file for `uploadProjectTaskBoardItemFilesystemFile`.
    pub async fn call_raw_bytes(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(u16, Value), Error> {
        self.call_raw_bytes_with_headers(method, path_and_query, body, content_type, &[])
            .await
    }

    /// Like [`Client::call_raw_bytes`], with extra request headers.
    pub async fn call_raw_bytes_with_headers(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<(u16, Value), Error> {
        let request = self.raw_request(method, path_and_query, headers, true)?;
        let response = request.bytes(body, content_type).execute().await?;
        Ok((response.status, raw_body_value(&response.body)))
    }

    /// The request of the `call_raw*` methods: the method and path checked, `Origin` sent on
    /// unsafe methods (or always, with `always_origin`), then `headers`.
    fn raw_request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        always_origin: bool,
    ) -> Result<Request<'_, Value>, Error> {
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::InvalidRequest(format!("invalid HTTP method {method:?}")))?;
        if !path_and_query.starts_with('/') {
            return Err(Error::InvalidPath(format!(
                "{path_and_query:?} does not start with '/'"
            )));
        }
        let safe = method == reqwest::Method::GET || method == reqwest::Method::HEAD;
        let mut request = Request::<Value>::raw(self, method, path_and_query);
        if always_origin || !safe {
            request = request.header("Origin", &self.origin());
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        Ok(request)
    }

    /// The full URL of `path_and_query`, which starts with `/`.
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base_url, path_and_query)
    }

    /// Adds the credentials, if any.
    pub(crate) fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

fn default_http_client() -> reqwest::Client {
    // Building only fails when the TLS backend or resolver cannot initialise; `Client::new`
    // would then fail the same way, so there is no better fallback than the default.
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The body as JSON for [`Client::call_raw`]: parsed, `Null` when empty, else a string.
fn raw_body_value(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly.
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let client = Client::new("http://localhost:1/", "tsk_supersecret123");
        let debug = format!("{client:?}");
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(debug.contains("http://localhost:1"), "{debug}");
        let pretty = format!("{client:#?}");
        assert!(!pretty.contains("supersecret"), "{pretty}");

        let anonymous = format!("{:?}", Client::unauthenticated("http://localhost:1"));
        assert!(anonymous.contains("api_key: None"), "{anonymous}");
    }

    #[test]
    fn base_url_loses_trailing_slashes() {
        let client = Client::new("http://localhost:1//", "k");
        assert_eq!(client.base_url(), "http://localhost:1");
        assert_eq!(client.url("/healthz"), "http://localhost:1/healthz");
        assert!(client.is_authenticated());
        assert!(!Client::unauthenticated("http://x").is_authenticated());
    }

    #[test]
    fn origin_is_scheme_host_and_port() {
        assert_eq!(
            Client::new("http://h:1/prefix/", "k").origin(),
            "http://h:1"
        );
        assert_eq!(
            Client::new("https://agents.example.com", "k").origin(),
            "https://agents.example.com"
        );
    }

    #[test]
    fn raw_bodies() {
        assert_eq!(raw_body_value(b""), Value::Null);
        assert_eq!(raw_body_value(b" \n"), Value::Null);
        assert_eq!(raw_body_value(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(
            raw_body_value(b"Bad Gateway"),
            Value::String("Bad Gateway".into())
        );
    }
}
