//! The harness: a real server on port 0 over a fresh database, an SDK client holding the
//! bootstrap key, a raw HTTP client for malformed input, and assertions on the error shape.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use tessera_client::models::{
    Actor, ActorProject, AddOrganizationMemberRequest, Agent, CreateActorProjectRequest,
    CreateActorRequest, CreateAgentRequest, CreateOrganizationRequest, CreateUserRequest,
    ModelConfig, Organization, OrganizationRole, User,
};
use tessera_client::{Client, Error as ClientError, ErrorCode};
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::{DeploymentName, Label};
use tessera_server::{Application, Config, Secret};
use tessera_store::testing::TestDatabase;
use tessera_store::{ConnectOptions, NewSecretKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and the clients that talk to it.
pub struct TestApp {
    pub address: SocketAddr,
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base_url: String,
    /// SDK client authenticated with the bootstrap key of deployment `default`.
    pub client: Client,
    /// The bootstrap secret key (`tsk_…`).
    pub key: String,
    /// Plain HTTP client for requests the SDK cannot express.
    pub http: reqwest::Client,
    pub db_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A second deployment of the same server.
pub struct Tenant {
    pub deployment_id: String,
    pub key: String,
    pub client: Client,
}

/// Starts the server on `db` with a fresh bootstrap key.
pub async fn spawn_app(db: &TestDatabase) -> TestApp {
    spawn_app_on(&db.url).await
}

/// Starts the server on the database at `database_url`.
pub async fn spawn_app_on(database_url: &str) -> TestApp {
    let key = fresh_key();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.to_owned(),
        bootstrap_secret_key: Some(Secret::new(key.clone())),
        // Configured so that no secrets key file is written into the working directory, and
        // shared so that servers on one database can read each other's signing keys.
        secrets_key: Some(Secret::new(test_secrets_key())),
        shutdown_timeout_seconds: 2,
        ..Config::default()
    };
    let app = Application::build(config)
        .await
        .expect("the server builds on a fresh database");
    let address = app.local_addr();
    assert_ne!(address.port(), 0, "port 0 was resolved to a real port");
    let base_url = format!("http://{address}");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        address,
        client: Client::new(base_url.clone(), key.clone()),
        base_url,
        key,
        http,
        db_url: database_url.to_owned(),
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A new random secret key in the format the server issues (`tsk_` + 52 base32 characters).
pub fn fresh_key() -> String {
    PlainSecret::generate(SECRET_KEY_PREFIX).expose().to_owned()
}

/// Asserts that `secret` has the form of an ordered secret (tickets, agent session tokens,
/// session cookies): `<prefix>_`, a creation-ordered id body, then 256 random bits in 52 base32
/// characters.
pub fn assert_ordered_secret(secret: &str, prefix: &str) {
    let body = secret
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{secret} does not start with {prefix}_"));
    assert_eq!(body.len(), 26 + 52, "{secret}");
    assert!(tessera_domain::id::is_valid_body(&body[..26]), "{secret}");
}

/// The secrets key of every test server of this process: servers sharing a database must share
/// it, as nodes do.
pub fn test_secrets_key() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| tessera_domain::token::SecretsKey::generate().to_hex())
        .clone()
}

/// A well-formed id of the given kind that no object has.
pub fn unknown_id(prefix: &str) -> String {
    match prefix {
        "actor" => tessera_domain::ActorId::generate().into_string(),
        "agent" => tessera_domain::AgentId::generate().into_string(),
        "proj" => tessera_domain::ProjectId::generate().into_string(),
        "key" => tessera_domain::SecretKeyId::generate().into_string(),
        "tool" => tessera_domain::ToolId::generate().into_string(),
        "act" => tessera_domain::ActionId::generate().into_string(),
        other => panic!("no id kind {other}"),
    }
}

impl TestApp {
    /// Creates deployment `name` directly in the database (as an operator would), with its first
    /// secret key, and returns an SDK client for it.
    pub async fn create_deployment(&self, name: &str) -> Tenant {
        self.create_deployment_at(name, &self.base_url).await
    }

    /// [`Self::create_deployment`] with `origin` as its backend and frontend host (requests
    /// naming that host in `Host` are the deployment's).
    pub async fn create_deployment_at(&self, name: &str, origin: &str) -> Tenant {
        let store = tessera_store::open(&self.db_url, &ConnectOptions::default())
            .await
            .expect("open the store");
        let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
        let first_key = NewSecretKey {
            name: Label::parse("name", "first").unwrap(),
            hash: secret.hash(),
            prefix: secret.display_prefix(),
        };
        let (deployment, _) = store
            .create_deployment(
                &NewDeployment {
                    name: DeploymentName::parse("name", name).unwrap(),
                    backend_host: origin.to_owned(),
                    frontend_host: origin.to_owned(),
                },
                &first_key,
            )
            .await
            .expect("create the deployment");
        store.close().await;
        let key = secret.expose().to_owned();
        Tenant {
            deployment_id: deployment.id.into_string(),
            client: Client::new(self.base_url.clone(), key.clone()),
            key,
        }
    }

    /// An SDK client that authenticates with `key`.
    pub fn client_with(&self, key: &str) -> Client {
        Client::new(self.base_url.clone(), key.to_owned())
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base_url, path_and_query)
    }

    /// A raw request with the bootstrap key as `Authorization: Bearer`.
    pub fn request(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        self.anonymous(method, path_and_query)
            .bearer_auth(&self.key)
    }

    /// A raw request without credentials.
    pub fn anonymous(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path_and_query))
    }

    /// Sends `method path` with the bootstrap key and an optional JSON body.
    pub async fn call(&self, method: Method, path_and_query: &str, body: Option<Value>) -> Resp {
        let mut request = self.request(method, path_and_query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }

    pub async fn get(&self, path_and_query: &str) -> Resp {
        self.call(Method::GET, path_and_query, None).await
    }

    pub async fn post(&self, path_and_query: &str, body: Value) -> Resp {
        self.call(Method::POST, path_and_query, Some(body)).await
    }

    pub async fn patch(&self, path_and_query: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path_and_query, Some(body)).await
    }

    /// POSTs `body` as it is, with `Content-Type: application/json`.
    pub async fn post_text(&self, path_and_query: &str, body: &str) -> Resp {
        send(
            self.request(Method::POST, path_and_query)
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// Creates an actor `user`/`external_key` through the SDK.
    pub async fn actor(&self, external_key: &str) -> Actor {
        self.client
            .ai()
            .actors()
            .create_actor(actor_request("user", external_key))
            .send()
            .await
            .expect("create actor")
    }

    /// Creates organization `name` (no slug) through the SDK, with user `user_id` as a member.
    pub async fn organization_with_member(&self, name: &str, user_id: &str) -> Organization {
        let orgs = self.client.organizations();
        let org = orgs
            .create_organization(CreateOrganizationRequest {
                name: name.into(),
                slug: None,
            })
            .send()
            .await
            .expect("create organization");
        orgs.add_member(
            &org.id,
            AddOrganizationMemberRequest {
                user_id: user_id.to_owned(),
                role: OrganizationRole::Member,
            },
        )
        .send()
        .await
        .expect("add member");
        org
    }

    /// Creates an agent with the echo model through the SDK.
    pub async fn agent(&self, name: &str) -> Agent {
        self.client
            .ai()
            .agents()
            .create_agent(echo_agent(name))
            .send()
            .await
            .expect("create agent")
    }

    /// Creates a user through the SDK (no name, no metadata).
    pub async fn user(&self, email: &str, password: Option<&str>) -> User {
        self.client
            .users()
            .create_user(CreateUserRequest {
                email: email.to_owned(),
                password: password.map(str::to_owned),
                ..Default::default()
            })
            .send()
            .await
            .expect("create user")
    }

    /// Creates a project binding `actor_id` and `agent_id` through the SDK.
    pub async fn project(&self, actor_id: &str, agent_id: &str, name: &str) -> ActorProject {
        self.client
            .ai()
            .actor_projects()
            .create_actor_project(
                actor_id,
                CreateActorProjectRequest {
                    agent_id: agent_id.to_owned(),
                    name: name.to_owned(),
                },
            )
            .send()
            .await
            .expect("create project")
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task does not panic");
            result.expect("the server stops without error");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn actor_request(subject_type: &str, external_key: &str) -> CreateActorRequest {
    CreateActorRequest {
        subject_type: subject_type.to_owned(),
        external_key: external_key.to_owned(),
        display_name: None,
        metadata: None,
    }
}

pub fn echo_model() -> ModelConfig {
    ModelConfig {
        provider: "echo".into(),
        model: "echo".into(),
        temperature: None,
        max_output_tokens: None,
    }
}

pub fn echo_agent(name: &str) -> CreateAgentRequest {
    CreateAgentRequest {
        name: name.to_owned(),
        model: Some(echo_model()),
        ..Default::default()
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub body: Value,
}

pub async fn send(request: reqwest::RequestBuilder) -> Resp {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read the body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        body,
    }
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Request-Id` header, which every response must carry.
    pub fn request_id(&self) -> &str {
        self.header("x-request-id").unwrap_or_else(|| {
            panic!(
                "no X-Request-Id header on HTTP {}: {}",
                self.status, self.text
            )
        })
    }

    /// Asserts the status and returns the JSON body.
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {}: {}",
            self.status, self.text
        );
        &self.body
    }

    /// Asserts the error answer: status, `{"error": {code, message, field?, request_id}}`,
    /// JSON content type, and `error.request_id` equal to the `X-Request-Id` header. `field`
    /// is compared when given.
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) -> &Self {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "expected HTTP {status} {code}, got HTTP {}: {}",
            self.status,
            self.text
        );
        if let Some(known) = ErrorCode::from_code(code) {
            assert_eq!(
                known.status(),
                status,
                "the test expects the table's status"
            );
        }
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "error bodies are JSON, got content-type {content_type:?}"
        );
        let error = self.body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("no error object: {}", self.text));
        for key in error.keys() {
            assert!(
                ["code", "message", "field", "request_id"].contains(&key.as_str()),
                "unexpected key {key:?} in the error body: {}",
                self.text
            );
        }
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(1),
            "the body holds only `error`: {}",
            self.text
        );
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "error.message is a non-empty string: {}",
            self.text
        );
        assert_eq!(
            error.get("request_id").and_then(Value::as_str),
            Some(self.request_id()),
            "error.request_id equals the X-Request-Id header: {}",
            self.text
        );
        if let Some(present) = error.get("field") {
            assert!(
                present.as_str().is_some_and(|f| !f.is_empty()),
                "error.field, when present, names something: {}",
                self.text
            );
        }
        if let Some(field) = field {
            assert_eq!(
                error.get("field").and_then(Value::as_str),
                Some(field),
                "error.field for HTTP {status} {code}: {}",
                self.text
            );
        }
        self
    }
}

/// Asserts that an SDK call failed with this status, code and (when given) field; returns
/// the error.
#[track_caller]
pub fn assert_api_error<T: Debug>(
    result: Result<T, ClientError>,
    status: u16,
    code: ErrorCode,
    field: Option<&str>,
) -> ClientError {
    let err = match result {
        Ok(value) => panic!(
            "expected HTTP {status} {}, got success: {value:?}",
            code.as_str()
        ),
        Err(err) => err,
    };
    match &err {
        ClientError::Api {
            status: got_status,
            code: got_code,
            code_str,
            field: got_field,
            request_id,
            ..
        } => {
            assert_eq!(
                (*got_status, code_str.as_str()),
                (status, code.as_str()),
                "unexpected error: {err}"
            );
            assert_eq!(*got_code, Some(code));
            assert!(
                request_id.as_deref().is_some_and(|id| !id.is_empty()),
                "the error carries a request id: {err}"
            );
            if let Some(field) = field {
                assert_eq!(got_field.as_deref(), Some(field), "error field: {err}");
            }
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    err
}

/// Checks an RFC 3339 UTC timestamp such as `2026-11-23T14:43:20.123Z`.
#[track_caller]
pub fn assert_timestamp(value: &str) {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        range
            .clone()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    let ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (value.ends_with('Z') || value.ends_with("+00:00"));
    assert!(ok, "not an RFC 3339 UTC timestamp: {value:?}");
}

/// Checks a prefixed id such as `actor_01jd…`.
#[track_caller]
pub fn assert_id(value: &str, prefix: &str) {
    let body = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{value:?} does not start with {prefix}_"));
    assert!(
        body.len() == 26
            && body
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "malformed id {value:?}"
    );
}

/// A TCP forwarder that can be cut and restored, to make the database unreachable from a
/// running server.
pub struct TcpProxy {
    pub address: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpProxy {
            address: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target;
        let accepted = self.tasks.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(task);
            }
        });
        self.tasks.lock().unwrap().push(acceptor);
    }

    /// Stops accepting and drops every forwarded connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot listen on {} again: {err}", self.address),
            }
        };
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Sends a request over a plain TCP connection: the head first, then, unless the server has
/// already answered, the body (ignoring write errors: a server may refuse a body it will not
/// read). Returns the parsed response. For bodies a server rejects by their `Content-Length`.
pub async fn raw_http(address: SocketAddr, head: &str, body: &[u8]) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let read = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
        received
    });
    writer.write_all(head.as_bytes()).await.unwrap();
    // Give a server that judges by Content-Length the chance to answer before the body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !read.is_finished() {
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
        }
    }
    let received = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body_text) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
    }
    let body_text = body_text.to_owned();
    Resp {
        status,
        headers,
        body: serde_json::from_str(&body_text).unwrap_or(Value::Null),
        text: body_text,
    }
}

/// Starts the server on `db` after `customize` adjusted its configuration (model providers,
/// runtime settings…). Otherwise the same as [`spawn_app`].
pub async fn spawn_app_with(db: &TestDatabase, customize: impl FnOnce(&mut Config)) -> TestApp {
    let key = fresh_key();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        bootstrap_secret_key: Some(Secret::new(key.clone())),
        // Configured so that no secrets key file is written into the working directory, and
        // shared so that servers on one database can read each other's signing keys.
        secrets_key: Some(Secret::new(test_secrets_key())),
        shutdown_timeout_seconds: 2,
        ..Config::default()
    };
    customize(&mut config);
    let app = Application::build(config)
        .await
        .expect("the server builds with the customised configuration");
    let address = app.local_addr();
    let base_url = format!("http://{address}");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    TestApp {
        address,
        client: Client::new(base_url.clone(), key.clone()),
        base_url,
        key,
        http,
        db_url: db.url.clone(),
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// Polls `probe` every 25 ms until it returns `Ok`, for at most `within`; when the deadline
/// passes, panics naming `what` and the last `Err` (a description of what was seen instead).
pub async fn poll_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after {within:?} waiting for {what}; last seen: {last}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}
