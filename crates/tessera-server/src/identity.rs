//! Identity at the HTTP edge: the secrets key, user tokens (minting, verification, JWKS),
//! browser session cookies, the origin check of browser writes, which deployment a browser
//! request belongs to, the signed-in user extractor, and audit records.
//!
//! How a browser request maps to a deployment: its `Host` header, taken as `http://HOST` and
//! `https://HOST`, is compared with every deployment's `backend_host` and `frontend_host`; the
//! oldest match wins. When nothing matches, deployment `default` serves the request. User
//! tokens carry their deployment in the signed `dep` claim instead. The lookup goes through the
//! node's short-lived deployment cache (`deployment_cache.rs`).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, COOKIE, ORIGIN, REFERER, USER_AGENT};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tessera_api::ErrorCode;
use tessera_domain::identity::{
    AuditActor, BrowserSession, NewAuditEvent, NewSession, SigningKeyRecord, User,
};
use tessera_domain::records::Deployment;
use tessera_domain::secret::{PlainSecret, SecretHash};
use tessera_domain::token::{
    public_jwk, token_kid, verify_user_token, SecretsKey, TokenSigner, UserClaims,
    USER_TOKEN_AUDIENCE,
};
use tessera_domain::{DeploymentId, Scope, SigningKeyId, Timestamp, UserId};
use tessera_store::Store;

use crate::config::{Config, IdentitySettings};
use crate::error::ApiError;
use crate::AppState;

/// The browser session cookie.
pub(crate) const SESSION_COOKIE: &str = "tessera_session";
/// Prefix of session cookie values (`tss_`, an id body and 256 random bits).
const SESSION_PREFIX: &str = tessera_domain::identity::SESSION_COOKIE_PREFIX;
/// Longest cookie value or token worth looking at.
const MAX_CREDENTIAL_LEN: usize = 4096;

/// Where the installation's secrets key comes from.
#[derive(Debug, Clone)]
enum SecretsSource {
    Configured(SecretsKey),
    File(PathBuf),
}

/// Identity settings and caches shared by handlers.
pub(crate) struct Identity {
    /// The issuer of tokens, and the origin cookies are set for.
    pub public_url: String,
    /// Cookies get `Secure` when the public URL is https.
    pub secure_cookies: bool,
    pub settings: IdentitySettings,
    /// Tickets, agent sessions, impersonation and console sessions.
    pub sessions: crate::config::SessionSettings,
    source: SecretsSource,
    secrets: tokio::sync::OnceCell<SecretsKey>,
    /// Verification keys by id with their retirement time, and when they were last read.
    public_keys: Mutex<KeyCache>,
    /// Password hashing and checking in progress: argon2id takes ~19 MiB and tens of
    /// milliseconds of CPU each, so without a bound a burst of sign-ins exhausts memory.
    password_work: Arc<tokio::sync::Semaphore>,
    /// Longest wait for a password-hashing slot before answering `503 busy`.
    password_wait: std::time::Duration,
}

/// Verification keys as last read from the database.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<SigningKeyId, ([u8; 32], Option<Timestamp>)>,
    /// When the table was last read: an unknown kid re-reads it at most once a second, so that
    /// made-up kids cannot turn every request into a query.
    read_at: Option<std::time::Instant>,
}

/// How often an unknown kid may trigger a re-read of the signing keys.
const KEY_REREAD: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the signing keys read are used before they are read again.
const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Lifetime of the actor token of an `actor_token` tool call, seconds.
const ACTOR_TOKEN_SECONDS: i64 = 300;
/// Clock skew tolerated between nodes, seconds.
const TOKEN_SKEW_SECS: i64 = 60;

/// A slot for argon2id work (see [`Identity::password_slot`]).
pub struct PasswordSlot(tokio::sync::OwnedSemaphorePermit);

impl PasswordSlot {
    /// Runs `f` on a blocking thread. The blocking work holds the slot, not this future: a
    /// request dropped half-way (its client went away) frees the slot only when the work it
    /// started is done, so abandoned requests cannot pile up argon2 work beyond the limit.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let PasswordSlot(permit) = self;
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            f()
        })
        .await
        .map_err(ApiError::internal)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn new(config: &Config, public_url: &str) -> anyhow::Result<Self> {
        let source = match &config.secrets_key {
            Some(key) => SecretsSource::Configured(
                SecretsKey::parse(key.expose())
                    .map_err(|e| anyhow::anyhow!("TESSERA_SECRETS_KEY {e}"))?,
            ),
            None => SecretsSource::File(config.secrets_key_path()),
        };
        Ok(Self {
            public_url: public_url.to_owned(),
            secure_cookies: public_url.starts_with("https://"),
            settings: config.identity.clone(),
            sessions: config.sessions.clone(),
            source,
            secrets: tokio::sync::OnceCell::new(),
            public_keys: Mutex::new(KeyCache::default()),
            password_work: Arc::new(tokio::sync::Semaphore::new(
                match usize::try_from(config.identity.password_check_slots) {
                    Ok(0) | Err(_) => {
                        std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
                    }
                    Ok(slots) => slots,
                },
            )),
            password_wait: std::time::Duration::from_millis(config.identity.password_check_wait_ms),
        })
    }

    /// Runs argon2id work (`f`) on a blocking thread, at most a few at a time; `503 busy` with
    /// `Retry-After` when no slot frees up soon.
    pub async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.password_slot().await?.run(f).await
    }

    /// A slot for argon2id work, waited for at most the configured time (`503 busy` with
    /// `Retry-After` then).
    pub async fn password_slot(&self) -> Result<PasswordSlot, ApiError> {
        match tokio::time::timeout(
            self.password_wait,
            self.password_work.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(PasswordSlot(permit)),
            Ok(Err(_)) | Err(_) => {
                let mut err = ApiError::new(
                    tessera_api::ErrorCode::Busy,
                    "too many password checks in progress; retry shortly",
                );
                err.retry_after = Some(1);
                Err(err)
            }
        }
    }

    /// The secrets key, loaded (or, for a key file that does not exist yet, created) once.
    pub async fn secrets(&self) -> anyhow::Result<&SecretsKey> {
        self.secrets
            .get_or_try_init(|| async {
                match &self.source {
                    SecretsSource::Configured(key) => Ok(key.clone()),
                    SecretsSource::File(path) => load_or_create_key_file(path),
                }
            })
            .await
    }

    /// Start-up check: when signing keys exist, the current one must open with this node's
    /// secrets key; a node with another key would fail every token it mints.
    pub async fn check_signing_keys(&self, store: &dyn Store) -> anyhow::Result<()> {
        let keys = store.signing_keys().await?;
        let Some(current) = keys.iter().find(|k| k.retired_at.is_none()) else {
            return Ok(());
        };
        let secrets = self.secrets().await?;
        TokenSigner::unseal(current.id.clone(), &current.sealed_private_key, secrets)
            .map(|_| ())
            .with_context(|| {
                format!(
                    "the token signing key {} cannot be decrypted with this node's secrets key; \
                     every node of a database needs the same TESSERA_SECRETS_KEY",
                    current.id
                )
            })
    }

    /// Start-up check: when tool configurations hold sealed secrets, this node's secrets key
    /// must open them; with another (or a lost) key every call of such a tool would fail.
    pub async fn check_tool_secrets(&self, store: &dyn Store) -> anyhow::Result<()> {
        let Some((tool, sealed)) = store.any_sealed_tool_secret().await? else {
            return Ok(());
        };
        let secrets = self.secrets().await?;
        tessera_domain::tool::ToolSecret::open(secrets, &tool, &sealed)
            .map(|_| ())
            .with_context(|| {
                format!(
                    "the secret of tool {tool} cannot be decrypted with this node's secrets key; \
                     configure the key that encrypted it (TESSERA_SECRETS_KEY or the \
                     secrets_key_file it was created in)"
                )
            })
    }

    /// The current signing key, creating the first one when there is none.
    async fn signer(&self, store: &dyn Store) -> anyhow::Result<TokenSigner> {
        let secrets = self.secrets().await?;
        let keys = store.signing_keys().await?;
        let current = match keys.into_iter().find(|k| k.retired_at.is_none()) {
            Some(key) => key,
            None => {
                let fresh = TokenSigner::generate(Timestamp::now());
                store
                    .ensure_signing_key(&signing_record(&fresh, secrets))
                    .await?
            }
        };
        TokenSigner::unseal(current.id.clone(), &current.sealed_private_key, secrets).with_context(
            || {
                format!(
                    "cannot decrypt the token signing key {}: is TESSERA_SECRETS_KEY the one \
                     the other nodes use?",
                    current.id
                )
            },
        )
    }

    /// Mints a user token valid for `seconds`; returns it and its expiry (epoch seconds).
    pub async fn mint_user_token(
        &self,
        store: &dyn Store,
        deployment_id: &DeploymentId,
        user_id: &UserId,
        seconds: u32,
    ) -> Result<(String, i64), ApiError> {
        let signer = self.signer(store).await.map_err(ApiError::internal)?;
        let now = Timestamp::now().as_secs();
        let exp = now + i64::from(seconds);
        let token = signer.sign(&UserClaims {
            iss: self.public_url.clone(),
            aud: USER_TOKEN_AUDIENCE.to_owned(),
            sub: user_id.as_str().to_owned(),
            dep: deployment_id.as_str().to_owned(),
            iat: now,
            exp,
        });
        Ok((token, exp))
    }

    /// Mints the short-lived token of an `actor_token` tool call: signed with the current
    /// signing key (verifiable at `/.well-known/jwks.json`), naming the actor and the thread.
    pub async fn mint_actor_token(
        &self,
        store: &dyn Store,
        req: &tessera_runtime::tool_records::ActorTokenRequest,
    ) -> anyhow::Result<String> {
        let signer = self.signer(store).await?;
        let now = Timestamp::now().as_secs();
        Ok(signer.sign_claims(&serde_json::json!({
            "iss": self.public_url,
            "aud": req.audience,
            "sub": req.actor_id.as_str(),
            "dep": req.deployment_id.as_str(),
            "actor": {"subject_type": req.subject_type, "external_key": req.external_key},
            "thread_id": req.thread_id.as_str(),
            "run_id": req.run_id.as_str(),
            "tool_id": req.tool_id.as_str(),
            "iat": now,
            "exp": now + ACTOR_TOKEN_SECONDS,
        })))
    }

    /// The key to verify a token signed by `kid`, if it is still trusted: the current keys,
    /// and a retired key only as long as a token it signed can be valid (the longest token
    /// lifetime plus clock skew). A key that leaked stops working that long after rotation.
    async fn public_key(
        &self,
        store: &dyn Store,
        kid: &SigningKeyId,
        now: Timestamp,
    ) -> Result<Option<[u8; 32]>, ApiError> {
        // Entries are re-read after a while, so that a rotation on another node (which retires
        // the key this node cached as current) is seen here too.
        let entry = if self.read_within(KEY_CACHE_TTL) {
            self.cached_key(kid)
        } else {
            None
        };
        let entry = match entry {
            Some(entry) => Some(entry),
            None if self.read_within(KEY_REREAD) => None,
            None => {
                let keys = store.signing_keys().await?;
                let mut cache = self
                    .public_keys
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                cache.keys = keys
                    .iter()
                    .map(|k| (k.id.clone(), (k.public_key, k.retired_at)))
                    .collect();
                cache.read_at = Some(std::time::Instant::now());
                cache.keys.get(kid).copied()
            }
        };
        let trusted_for_ms =
            (i64::from(self.settings.user_token_max_seconds) + TOKEN_SKEW_SECS) * 1000;
        Ok(entry.and_then(|(key, retired_at)| match retired_at {
            Some(retired) if now.as_millis() > retired.as_millis() + trusted_for_ms => None,
            _ => Some(key),
        }))
    }

    fn cached_key(&self, kid: &SigningKeyId) -> Option<([u8; 32], Option<Timestamp>)> {
        self.public_keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys
            .get(kid)
            .copied()
    }

    fn read_within(&self, age: std::time::Duration) -> bool {
        self.public_keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .read_at
            .is_some_and(|at| at.elapsed() < age)
    }

    /// The keys published at `/.well-known/jwks.json`: the current ones and those retired less
    /// than the longest token lifetime ago (tokens they signed may still be valid).
    pub async fn published_keys(
        &self,
        store: &dyn Store,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let keys = store.signing_keys().await?;
        let horizon = Timestamp::now()
            .plus_secs(-i64::from(self.settings.user_token_max_seconds))
            .plus_secs(-60);
        Ok(keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|t| t > horizon))
            .map(|k| public_jwk(&k.id, &k.public_key))
            .collect())
    }

    fn session_lifetime_ms(&self) -> i64 {
        i64::try_from(self.settings.session_lifetime_seconds)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1000)
    }

    pub fn idle_ms(&self) -> i64 {
        i64::try_from(self.settings.session_idle_timeout_seconds)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1000)
    }

    /// A fresh session cookie value and the row for it. `expires_at` keeps an existing
    /// session's absolute limit (rotation); `None` starts a new lifetime (sign-in).
    pub fn new_session(
        &self,
        user_id: Option<UserId>,
        active_organization_id: Option<tessera_domain::OrganizationId>,
        expires_at: Option<Timestamp>,
    ) -> (PlainSecret, NewSession) {
        let now = Timestamp::now();
        let secret = PlainSecret::generate_ordered(SESSION_PREFIX, now);
        let expires_at = expires_at.unwrap_or_else(|| now.plus_millis(self.session_lifetime_ms()));
        let new = NewSession {
            hash: secret.hash(),
            user_id,
            active_organization_id,
            impersonation: None,
            now,
            idle_expires_at: now.plus_millis(self.idle_ms()).min(expires_at),
            expires_at,
        };
        (secret, new)
    }

    /// `Set-Cookie` for a session value living until `expires_at`.
    pub fn session_cookie(&self, secret: &PlainSecret, expires_at: Timestamp) -> String {
        let max_age = (expires_at.as_millis() - Timestamp::now().as_millis()).max(0) / 1000;
        format!(
            "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            secret.expose(),
            if self.secure_cookies { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
            if self.secure_cookies { "; Secure" } else { "" }
        )
    }
}

fn signing_record(signer: &TokenSigner, secrets: &SecretsKey) -> SigningKeyRecord {
    SigningKeyRecord {
        id: signer.kid().clone(),
        public_key: signer.public_key(),
        sealed_private_key: signer.seal(secrets),
        created_at: Timestamp::now(),
        retired_at: None,
    }
}

/// A new current signing key for `tessera keys rotate-signing`; the previous keys stay
/// published until the tokens they signed expired.
pub async fn rotate_signing_key(config: &Config, store: &dyn Store) -> anyhow::Result<String> {
    let identity = Identity::new(config, &config.public_url())?;
    // With keys in use, the new key must be sealed with the secrets key the nodes use: never
    // create a key file here (a command run from another directory would otherwise seal the
    // new key with a fresh secrets key no node has), and prove the current key opens with it.
    let keys = store.signing_keys().await?;
    if keys.iter().any(|k| k.retired_at.is_none()) {
        if let SecretsSource::File(path) = &identity.source {
            anyhow::ensure!(
                path.exists(),
                "no secrets key at {}: run this where the server keeps its data, or set \
                 TESSERA_SECRETS_KEY to the key the servers use",
                path.display()
            );
        }
        identity.check_signing_keys(store).await?;
    }
    let secrets = identity.secrets().await?;
    let signer = TokenSigner::generate(Timestamp::now());
    let record = store
        .rotate_signing_key(&signing_record(&signer, secrets))
        .await
        .context("cannot store the new signing key")?;
    Ok(record.id.into_string())
}

/// Reads the key file, or creates it (mode 0600, its directory too) when it does not exist.
fn load_or_create_key_file(path: &Path) -> anyhow::Result<SecretsKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return SecretsKey::parse(&text)
                .map_err(|e| anyhow::anyhow!("the secrets key file {} {e}", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", path.display()));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = SecretsKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{}\n", key.to_hex()).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "created a secrets key file for encrypting signing keys and tool secrets; back it \
                 up, and give every node of a shared database the same key (TESSERA_SECRETS_KEY)"
            );
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            SecretsKey::parse(&text)
                .map_err(|e| anyhow::anyhow!("the secrets key file {} {e}", path.display()))
        }
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The keys tools need, as the runtime asks for them: the secrets key (tool secrets) and the
/// signing key (actor tokens).
pub(crate) struct ToolKeys {
    pub identity: SharedIdentity,
    pub store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl tessera_runtime::tool_records::ToolCredentials for ToolKeys {
    async fn secrets_key(&self) -> Result<SecretsKey, String> {
        self.identity.secrets().await.cloned().map_err(|e| {
            tracing::error!(error = %e, "the secrets key is not available to tools");
            "the server's secrets key is not available".to_owned()
        })
    }

    async fn actor_token(
        &self,
        request: &tessera_runtime::tool_records::ActorTokenRequest,
    ) -> Result<String, String> {
        self.identity
            .mint_actor_token(self.store.as_ref(), request)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "minting an actor token failed");
                "the server could not sign an actor token".to_owned()
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Requests: client details, origins, deployments, cookies

/// Who is on the other end, for the audit log and per-address throttling: the peer address
/// of the TCP connection (proxies' `X-Forwarded-For` is not trusted) and the `User-Agent`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    pub fn of(parts: &Parts) -> Self {
        Self {
            ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip().to_string()),
            user_agent: parts
                .headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(512).collect()),
        }
    }

    /// The details an audit event the store records keeps.
    pub fn audit(&self) -> tessera_domain::identity::AuditClient {
        tessera_domain::identity::AuditClient {
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    /// Who acts, for the store's audit record: the caller's secret key, from this client.
    pub fn by_key(&self, caller: &crate::auth::Caller) -> tessera_domain::identity::AuditBy {
        tessera_domain::identity::AuditBy {
            actor: AuditActor::SecretKey(caller.key_id.clone()),
            client: self.audit(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts))
    }
}

/// `scheme://host[:port]` in lower case, without a default port or trailing slash; `None` for
/// anything that is not an http(s) origin (including the opaque `null`).
pub(crate) fn normalize_origin(raw: &str) -> Option<String> {
    let raw = raw.trim().to_ascii_lowercase();
    let (scheme, rest) = raw.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // `host[:port]` or `[v6][:port]`, the port all digits: `h:1:80` is no origin.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (_, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (&authority[..authority.len() - after.len()], port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty()
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let authority = match (scheme, authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host.to_owned(),
        _ => authority.to_owned(),
    };
    Some(format!("{scheme}://{authority}"))
}

/// Refuses a state-changing browser request unless its `Origin` (or, without one, its
/// `Referer`) is one of the deployment's hosts. A request naming neither is refused too.
pub(crate) fn check_origin(headers: &HeaderMap, deployment: &Deployment) -> Result<(), ApiError> {
    let presented = headers
        .get(ORIGIN)
        .or_else(|| headers.get(REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(presented) = presented else {
        return Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            "this request changes state and names no Origin (or Referer); browsers send one",
        ));
    };
    let allowed = [&deployment.backend_host, &deployment.frontend_host];
    match normalize_origin(presented) {
        Some(origin)
            if allowed
                .iter()
                .any(|host| normalize_origin(host).as_deref() == Some(origin.as_str())) =>
        {
            Ok(())
        }
        _ => Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            "this request comes from an origin that is not one of the deployment's hosts",
        )),
    }
}

/// The bearer credential of `Authorization: Bearer <credential>`; `Ok(None)` without the
/// header, an error for a malformed one.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= MAX_CREDENTIAL_LEN)
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))
}

/// The deployment a browser request is for (see the module documentation), through the
/// node's deployment cache.
pub(crate) async fn deployment_for_request(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Deployment, ApiError> {
    state
        .deployments
        .for_request(state.store.as_ref(), headers)
        .await
}

/// The session cookie's value, when the request carries a plausible one.
pub(crate) fn session_cookie_value(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of cookie `name`, when the request carries a plausible one.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL_LEN)
}

/// The browser's live session for `deployment`, with its cookie's hash.
pub(crate) async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
    scope: &Scope,
) -> Result<Option<(BrowserSession, SecretHash)>, ApiError> {
    let Some(value) = session_cookie_value(headers) else {
        return Ok(None);
    };
    let hash = SecretHash::of(&value);
    let found = state
        .store
        .find_session(scope, &hash, Timestamp::now(), state.identity.idle_ms())
        .await?;
    Ok(found.map(|session| (session, hash)))
}

/// How a signed-in caller authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Via {
    /// A browser session; the hash is its cookie's, for rotation.
    Session(Box<BrowserSession>, SecretHash),
    /// A user token expiring at this epoch second.
    Token { expires_at: i64 },
}

/// A signed-in user: `Authorization: Bearer <user token>`, or else the browser session
/// cookie. Taking it as a handler argument is what makes a route user-authenticated.
#[derive(Debug, Clone)]
pub(crate) struct UserCaller {
    pub scope: Scope,
    pub deployment: Deployment,
    pub user: User,
    pub via: Via,
}

impl FromRequestParts<AppState> for UserCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .filter(|t| !t.is_empty() && t.len() <= MAX_CREDENTIAL_LEN)
                .ok_or_else(|| {
                    ApiError::unauthorized("expected `Authorization: Bearer <user token>`")
                })?;
            return user_from_token(state, token).await;
        }
        let deployment = deployment_for_request(state, &parts.headers).await?;
        let scope = Scope::deployment(deployment.id.clone());
        let Some((session, hash)) = current_session(state, &parts.headers, &scope).await? else {
            return Err(ApiError::unauthorized(
                "not signed in: sign in at /sign-in or send a user token",
            ));
        };
        let Some(user_id) = session.user_id.clone() else {
            return Err(ApiError::unauthorized(
                "not signed in: sign in at /sign-in or send a user token",
            ));
        };
        let user = match state.store.get_user(&scope, &user_id).await {
            Ok(user) if !user.disabled => user,
            Ok(_) | Err(tessera_store::StoreError::NotFound { .. }) => {
                return Err(ApiError::unauthorized("not signed in"))
            }
            Err(err) => return Err(err.into()),
        };
        Ok(UserCaller {
            scope,
            deployment,
            user,
            via: Via::Session(Box::new(session), hash),
        })
    }
}

async fn user_from_token(state: &AppState, token: &str) -> Result<UserCaller, ApiError> {
    let refused = |why: &dyn std::fmt::Display| {
        tracing::debug!(reason = %why, "user token refused");
        ApiError::unauthorized(
            "invalid user token (malformed, unknown key, bad signature, expired or revoked)",
        )
    };
    let kid = token_kid(token).map_err(|e| refused(&e))?;
    let now = Timestamp::now();
    let public = state
        .identity
        .public_key(state.store.as_ref(), &kid, now)
        .await?
        .ok_or_else(|| refused(&"unknown or expired kid"))?;
    let verified = verify_user_token(token, &public, &state.identity.public_url, now.as_secs())
        .map_err(|e| refused(&e))?;
    // No token this server mints lives longer than the configured maximum: a longer one was
    // not minted here (or by a key that leaked).
    let max = i64::from(state.identity.settings.user_token_max_seconds);
    if verified.expires_at - verified.issued_at > max
        || verified.issued_at > now.as_secs() + TOKEN_SKEW_SECS
        || verified.expires_at > now.as_secs() + max + TOKEN_SKEW_SECS
    {
        return Err(refused(&"lifetime beyond the maximum"));
    }
    let scope = Scope::deployment(verified.deployment_id);
    let deployment = match state.store.get_deployment(&scope).await {
        Ok(d) => d,
        Err(tessera_store::StoreError::NotFound { .. }) => return Err(refused(&"no deployment")),
        Err(err) => return Err(err.into()),
    };
    let user = match state.store.get_user(&scope, &verified.user_id).await {
        Ok(user) if !user.disabled => user,
        Ok(_) => return Err(refused(&"user disabled")),
        Err(tessera_store::StoreError::NotFound { .. }) => return Err(refused(&"no such user")),
        Err(err) => return Err(err.into()),
    };
    Ok(UserCaller {
        scope,
        deployment,
        user,
        via: Via::Token {
            expires_at: verified.expires_at,
        },
    })
}

/// Records an audit event that accompanies no write of its own (a refused sign-in). A failure is
/// logged and does not fail the request. Events of writes are recorded by the store inside the
/// write's transaction instead.
pub(crate) async fn audit(state: &AppState, scope: &Scope, event: NewAuditEvent) {
    if let Err(err) = state.store.record_audit(scope, &event).await {
        tracing::error!(error = %err, kind = event.kind.as_str(), "cannot record an audit event");
    }
}

/// An audit event about `subject` with the client's details.
pub(crate) fn event(
    kind: tessera_domain::identity::AuditKind,
    actor: AuditActor,
    subject: Option<String>,
    client: &ClientInfo,
    data: serde_json::Value,
) -> NewAuditEvent {
    NewAuditEvent::new(kind, actor, subject, client.audit(), data)
}

/// The throttle buckets of a sign-in: its account's (`account`, first) and, when the client's
/// address is known, that address's (`address`).
pub(crate) fn sign_in_buckets(
    settings: &IdentitySettings,
    account: String,
    address: Option<String>,
) -> Vec<tessera_store::ThrottleBucket> {
    let mut buckets = vec![tessera_store::ThrottleBucket {
        key: account,
        max_failures: settings.sign_in_max_failures_per_account,
    }];
    if let Some(key) = address {
        buckets.push(tessera_store::ThrottleBucket {
            key,
            max_failures: settings.sign_in_max_failures_per_ip,
        });
    }
    buckets
}

/// Counts a sign-in attempt in `buckets` before its password is checked: attempts made at the
/// same time cannot all pass a check made before any of them was counted. When a bucket is
/// full the attempt is taken back (it was never checked) and the answer is `429
/// too_many_attempts` with `Retry-After`. Answers the window each bucket counted the attempt
/// in: taking it back later ([`check_counted_password`], [`sign_in_succeeded`]) names it.
pub(crate) async fn count_sign_in(
    state: &AppState,
    throttle: tessera_store::Throttle<'_>,
    buckets: &[tessera_store::ThrottleBucket],
) -> Result<Vec<i64>, ApiError> {
    let window_ms = i64::try_from(state.identity.settings.sign_in_window_seconds)
        .unwrap_or(i64::MAX / 2_000)
        .saturating_mul(1000);
    let counted = state
        .store
        .count_sign_in_attempt(throttle, buckets, Timestamp::now(), window_ms)
        .await?;
    let Some(wait_ms) = counted.wait_ms else {
        return Ok(counted.windows);
    };
    take_back_sign_in(&*state.store, throttle, buckets, &counted.windows).await?;
    let seconds = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
    let mut err = ApiError::new(
        ErrorCode::TooManyAttempts,
        format!("too many failed sign-ins; retry in {seconds} seconds"),
    );
    err.retry_after = Some(seconds);
    Err(err)
}

/// Takes back an attempt counted by [`count_sign_in`] in `windows` (one per bucket).
async fn take_back_sign_in(
    store: &dyn Store,
    throttle: tessera_store::Throttle<'_>,
    buckets: &[tessera_store::ThrottleBucket],
    windows: &[i64],
) -> Result<(), tessera_store::StoreError> {
    for (bucket, window) in buckets.iter().zip(windows) {
        store
            .uncount_sign_in_attempt(throttle, &bucket.key, *window)
            .await?;
    }
    Ok(())
}

/// The password check of an attempt counted by [`count_sign_in`]: reads the `credentials`,
/// takes a password slot, then checks `password` against the hash `stored` finds in them.
/// When either step before the check fails (`503 busy` with no slot free, the credentials
/// unreadable) the password was never checked, and the attempt is taken back: otherwise a
/// few busy answers would lock the account out as if its password had been guessed at. The
/// same when the request is abandoned before it has a slot. Once it has one the attempt
/// stays counted whatever happens, since the password is checked then even if nobody waits
/// for the answer (otherwise requests abandoned at once would get password checks without
/// ever reaching the limit).
pub(crate) async fn check_counted_password<C>(
    state: &AppState,
    throttle: tessera_store::Throttle<'_>,
    (buckets, windows): (&[tessera_store::ThrottleBucket], &[i64]),
    credentials: impl std::future::Future<Output = Result<C, ApiError>>,
    (password, stored): (
        tessera_domain::identity::Password,
        impl FnOnce(&C) -> Option<tessera_domain::password::PasswordHash>,
    ),
) -> Result<(C, bool), ApiError> {
    let unchecked = Unchecked {
        windows: windows.to_vec(),
        store: state.store.clone(),
        scope: match throttle {
            tessera_store::Throttle::Deployment(scope) => Some(scope.clone()),
            tessera_store::Throttle::Console => None,
        },
        buckets: buckets.to_vec(),
    };
    let ready = async {
        let credentials = credentials.await?;
        let slot = state.identity.password_slot().await?;
        Ok::<_, ApiError>((credentials, slot))
    }
    .await;
    unchecked.finished();
    let (credentials, slot) = match ready {
        Ok(ready) => ready,
        Err(err) => {
            if let Err(back) = take_back_sign_in(&*state.store, throttle, buckets, windows).await {
                tracing::warn!(error = %back, "a sign-in attempt that was never checked stays counted");
            }
            return Err(err);
        }
    };
    // Verified off the async threads, and always: an unknown account or one without a
    // password is checked against a dummy hash, in the same time as a wrong password.
    let stored = stored(&credentials);
    let matches = slot
        .run(move || tessera_domain::password::verify_password(stored.as_ref(), &password))
        .await?;
    Ok((credentials, matches))
}

/// An attempt counted by [`count_sign_in`] that has no password slot yet. Dropped before
/// [`Self::finished`] (the request was abandoned: its client went away while it waited for a
/// slot, and the server dropped the handler), it takes the attempt back in the background, as
/// a busy answer does.
struct Unchecked {
    store: Arc<dyn Store>,
    /// The deployment of a user's sign-in; `None` for a console admin's.
    scope: Option<Scope>,
    buckets: Vec<tessera_store::ThrottleBucket>,
    /// The window each bucket counted the attempt in.
    windows: Vec<i64>,
}

impl Unchecked {
    /// The wait is over: whatever its outcome, the caller deals with the attempt.
    fn finished(mut self) {
        self.buckets.clear();
    }
}

impl Drop for Unchecked {
    fn drop(&mut self) {
        if self.buckets.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, scope) = (self.store.clone(), self.scope.take());
        let windows = std::mem::take(&mut self.windows);
        let buckets = std::mem::take(&mut self.buckets);
        runtime.spawn(async move {
            let throttle = scope
                .as_ref()
                .map_or(tessera_store::Throttle::Console, |scope| {
                    tessera_store::Throttle::Deployment(scope)
                });
            if let Err(err) = take_back_sign_in(&*store, throttle, &buckets, &windows).await {
                tracing::warn!(error = %err, "an abandoned sign-in attempt stays counted");
            }
        });
    }
}

/// After a successful sign-in: the account's failures are cleared and the attempt is taken
/// back from the other buckets (`buckets` as given to [`count_sign_in`], with the windows it
/// answered).
pub(crate) async fn sign_in_succeeded(
    state: &AppState,
    throttle: tessera_store::Throttle<'_>,
    (buckets, windows): (&[tessera_store::ThrottleBucket], &[i64]),
) -> Result<(), ApiError> {
    let Some((account, others)) = buckets.split_first() else {
        return Ok(());
    };
    state
        .store
        .clear_sign_in_failures(throttle, &account.key)
        .await?;
    take_back_sign_in(
        &*state.store,
        throttle,
        others,
        windows.get(1..).unwrap_or_default(),
    )
    .await?;
    Ok(())
}

/// Who acts through a browser session of `user`: the impersonator for an impersonation
/// session (the user is the event's subject), else the user.
pub(crate) fn session_actor(session: &BrowserSession, user: &UserId) -> AuditActor {
    match &session.impersonator {
        Some(tessera_domain::ticket::Issuer::SecretKey(id)) => AuditActor::SecretKey(id.clone()),
        Some(tessera_domain::ticket::Issuer::ConsoleAdmin(id)) => {
            AuditActor::ConsoleAdmin(id.clone())
        }
        None => AuditActor::User(user.clone()),
    }
}

/// Shares the identity state (built in `Application::build`).
pub(crate) type SharedIdentity = Arc<Identity>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn deployment() -> Deployment {
        Deployment {
            id: DeploymentId::generate(),
            name: "d".into(),
            backend_host: "https://agents.example.com".into(),
            frontend_host: "http://app.example.com:8080/".into(),
            settings: Default::default(),
            created_at: Timestamp::now(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn origins_normalize() {
        assert_eq!(
            normalize_origin("HTTPS://Agents.Example.com:443/path").as_deref(),
            Some("https://agents.example.com")
        );
        assert_eq!(
            normalize_origin("http://x:8080").as_deref(),
            Some("http://x:8080")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("ftp://x"), None);
        assert_eq!(normalize_origin("http://user@x"), None);
        // One port, all digits.
        for bad in [
            "http://x:8080:80",
            "http://x:",
            "http://x:80a",
            "http://:80",
            "http://[::1]x",
            "http://[::1",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
        assert_eq!(
            normalize_origin("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
    }

    #[test]
    fn browser_writes_need_a_same_origin_origin_or_referer() {
        let d = deployment();
        assert!(check_origin(&headers(&[("origin", "https://agents.example.com")]), &d).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://app.example.com:8080")]), &d).is_ok());
        assert!(check_origin(
            &headers(&[("referer", "https://agents.example.com/sign-in?x=1")]),
            &d
        )
        .is_ok());
        for bad in [
            headers(&[("origin", "https://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "http://agents.example.com")]),
            // Origin wins over a matching Referer.
            headers(&[
                ("origin", "https://evil.example"),
                ("referer", "https://agents.example.com/"),
            ]),
            headers(&[("referer", "https://agents.example.com.evil.example/")]),
            HeaderMap::new(),
        ] {
            let err = check_origin(&bad, &d).unwrap_err();
            assert_eq!(err.code, ErrorCode::OriginNotAllowed, "{bad:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; tessera_session=tss_abc; b=2")]);
        assert_eq!(session_cookie_value(&h).as_deref(), Some("tss_abc"));
        assert_eq!(session_cookie_value(&headers(&[("cookie", "x=1")])), None);
        assert_eq!(
            session_cookie_value(&headers(&[("cookie", "tessera_session=")])),
            None
        );
    }

    #[test]
    fn key_files_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secrets.key");
        let first = load_or_create_key_file(&path).unwrap();
        let again = load_or_create_key_file(&path).unwrap();
        assert_eq!(first.to_hex(), again.to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(load_or_create_key_file(&path).is_err());
    }
}
