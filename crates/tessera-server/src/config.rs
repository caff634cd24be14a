//! Server configuration, layered: defaults → `tessera.toml` → `TESSERA_*` environment → flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The default database: an embedded SQLite file next to where the server starts.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./tessera-data/tessera.db";
/// The configuration file read when present (or the one `--config` names).
pub const DEFAULT_CONFIG_FILE: &str = "tessera.toml";

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Every commit survives power loss (default).
    Full,
    /// Commits survive a process crash; the last ones may be lost on power loss. Faster.
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Connections per pool.
    pub max_connections: u32,
    /// How long a statement waits for a lock before failing, in milliseconds.
    pub busy_timeout_ms: u64,
    pub sqlite_synchronous: SqliteSynchronous,
    /// SQLite: keep the writer thread and the writer connection's thread on one CPU (faster
    /// commits; see ARCHITECTURE.md). `false` leaves their placement to the system.
    pub sqlite_pin_writer: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            busy_timeout_ms: 5_000,
            sqlite_synchronous: SqliteSynchronous::Full,
            sqlite_pin_writer: true,
        }
    }
}

/// `[runtime]`: the workers that execute runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSettings {
    /// Runs this node executes concurrently.
    pub workers: usize,
    /// A worker's claim on a run lasts this long without a heartbeat; a run whose node died is
    /// resumed by another node after it expires.
    pub lease_seconds: u64,
    /// Safety-net poll for work (wake-ups are otherwise immediate), in milliseconds.
    pub poll_interval_ms: u64,
    /// Longest a single tool call may take.
    pub tool_timeout_seconds: u64,
    /// Provider used by agents that name no model.
    pub default_provider: String,
    /// Model used by agents that name no model.
    pub default_model: String,
    /// Board slot records (which slot fired when, with which run) are kept this many days;
    /// older ones are pruned hourly, except each item's latest (a pruned slot never fires
    /// again).
    pub board_slot_retention_days: u32,
    /// Chunks of a workspace upload that never committed (its node died mid-upload) are
    /// deleted this long after the last one was written.
    pub orphan_upload_grace_seconds: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            workers: 64,
            lease_seconds: 30,
            poll_interval_ms: 2_000,
            tool_timeout_seconds: 60,
            default_provider: "echo".to_owned(),
            default_model: "echo".to_owned(),
            board_slot_retention_days: 7,
            orphan_upload_grace_seconds: 3600,
        }
    }
}

/// `[identity]`: browser sessions, sign-in throttling and user tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentitySettings {
    /// A browser session unused for this long ends.
    pub session_idle_timeout_seconds: u64,
    /// A browser session ends this long after sign-in, however active.
    pub session_lifetime_seconds: u64,
    /// Failed sign-ins are counted in windows of this length.
    pub sign_in_window_seconds: u64,
    /// Failed sign-ins for one account per window before further attempts get 429.
    pub sign_in_max_failures_per_account: u32,
    /// Failed sign-ins from one client address per window before further attempts get 429.
    pub sign_in_max_failures_per_ip: u32,
    /// Lifetime of a user token when the request names none.
    pub user_token_default_seconds: u32,
    /// Longest lifetime a user token may be given.
    pub user_token_max_seconds: u32,
    /// Password hashes computed or checked at once (argon2id takes ~19 MiB and tens of
    /// milliseconds of CPU each); 0: two per CPU.
    pub password_check_slots: u32,
    /// How long a sign-in waits for a free slot before the answer is `503 busy`.
    pub password_check_wait_ms: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            session_idle_timeout_seconds: 8 * 3600,
            session_lifetime_seconds: 7 * 24 * 3600,
            sign_in_window_seconds: 15 * 60,
            sign_in_max_failures_per_account: 5,
            sign_in_max_failures_per_ip: 50,
            user_token_default_seconds: 15 * 60,
            user_token_max_seconds: 3600,
            password_check_slots: 0,
            password_check_wait_ms: 5_000,
        }
    }
}

/// `[sessions]`: session management (`/api/v1`: the pool endpoint and pending actions) and
/// session tickets (agent sessions, impersonation and the console).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    /// How long `askAgentPool` waits for the turn to finish or pause before answering 202.
    pub ask_wait_seconds: u64,
    /// How long a tool call awaiting confirmation stays open, unless its approval rule says.
    pub action_expiry_seconds: u32,
    /// `expires_in` of a ticket that names none.
    pub ticket_default_expires_in_seconds: u32,
    /// Largest `expires_in` a ticket may ask for.
    pub ticket_max_expires_in_seconds: u32,
    /// How long an agent session lasts after its ticket is exchanged (not the ticket's time).
    pub agent_session_lifetime_seconds: u64,
    /// How long an impersonation ticket signs the browser in (at most 1800).
    pub impersonation_seconds: u64,
    /// How long a console admin stays signed in.
    pub console_session_seconds: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            ask_wait_seconds: 30,
            action_expiry_seconds: 600,
            ticket_default_expires_in_seconds: 900,
            ticket_max_expires_in_seconds: 86_400,
            agent_session_lifetime_seconds: 12 * 3600,
            impersonation_seconds: 30 * 60,
            console_session_seconds: 8 * 3600,
        }
    }
}

/// `[tools]`: how tool records execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolSettings {
    /// Targets `Api` tools may reach although they are loopback, private, link-local or
    /// otherwise internal: host names (`localhost`, `billing.internal`), addresses
    /// (`127.0.0.1`, `[::1]`) or ranges (`10.0.0.0/8`, `fd00::/8`). Empty by default.
    pub allow_hosts: Vec<String>,
    /// Largest response body an `Api` tool reads, unless the tool sets a smaller or larger
    /// `max_response_bytes` (at most 10 MiB).
    pub max_response_bytes: u64,
    /// Redirects an `Api` call follows; each hop is checked like the first.
    pub max_redirects: usize,
}

impl Default for ToolSettings {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            max_response_bytes: 1024 * 1024,
            max_redirects: 5,
        }
    }
}

/// Everything `tessera serve` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Public origin clients reach the server at; defaults to `http://{listen}`. Used as the
    /// default deployment's backend and frontend host, and in printed URLs.
    pub public_url: Option<String>,
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub database_url: String,
    pub database: DatabaseConfig,
    pub log_format: LogFormat,
    /// Log filter: a level (`info`) or per-target levels (`warn,tessera_server=debug`).
    pub log_level: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest workspace file accepted by an upload, in bytes (checked while streaming).
    pub max_upload_bytes: u64,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_timeout_seconds: u64,
    /// The first secret key of deployment `default`, instead of a generated one (automation).
    /// Read from `TESSERA_BOOTSTRAP_SECRET_KEY`.
    pub bootstrap_secret_key: Option<Secret>,
    /// The password of console admin `admin`, created on the first start that finds no admin,
    /// instead of a generated (and printed) one. Read from `TESSERA_BOOTSTRAP_ADMIN_PASSWORD`.
    pub bootstrap_admin_password: Option<Secret>,
    /// The key that encrypts secrets at rest (token signing keys): 32 bytes as 64 hex or 43
    /// base64url characters. Read from `TESSERA_SECRETS_KEY`. Every node of one database needs
    /// the same key.
    pub secrets_key: Option<Secret>,
    /// Where the secrets key is kept when `secrets_key` is not set; created (mode 0600) on first
    /// need. Default: `secrets.key` next to the SQLite database file, or
    /// `./tessera-data/secrets.key` with PostgreSQL.
    pub secrets_key_file: Option<std::path::PathBuf>,
    pub identity: IdentitySettings,
    pub sessions: SessionSettings,
    pub runtime: RuntimeSettings,
    /// `[sandbox]`: how code tools run (bubblewrap, interpreters, limits); see docs/sandbox.md.
    pub sandbox: tessera_runtime::sandbox::SandboxConfig,
    /// `[mcp]`: what MCP tools may reach (`allow_stdio`, `allow_private`); see docs/mcp.md.
    pub mcp: tessera_runtime::mcp::McpPolicy,
    pub tools: ToolSettings,
    /// `[toolkits]`: the third-party toolkit provider (`base_url`, `api_key_env`); see
    /// docs/toolkits.md. Without `base_url` toolkits are off.
    pub toolkits: tessera_runtime::toolkits::ToolkitConfig,
    /// `[providers.NAME]`: model providers agents can name (`echo` is built in).
    pub providers: std::collections::BTreeMap<String, tessera_runtime::provider::ProviderConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database: DatabaseConfig::default(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 25 * 1024 * 1024,
            shutdown_timeout_seconds: 30,
            bootstrap_secret_key: None,
            bootstrap_admin_password: None,
            secrets_key: None,
            secrets_key_file: None,
            identity: IdentitySettings::default(),
            sessions: SessionSettings::default(),
            runtime: RuntimeSettings::default(),
            sandbox: tessera_runtime::sandbox::SandboxConfig::default(),
            mcp: tessera_runtime::mcp::McpPolicy::default(),
            tools: ToolSettings::default(),
            toolkits: tessera_runtime::toolkits::ToolkitConfig::default(),
            providers: std::collections::BTreeMap::new(),
        }
    }
}

/// Values given as command-line flags; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Environment variables that belong to tools around the server, not to its configuration.
const NOT_CONFIG: &[&str] = &[
    "URL",
    "API_KEY",
    "TEST_POSTGRES_URL",
    "REQUIRE_BROWSER",
    "REQUIRE_SANDBOX",
    "REQUIRE_MCP",
    "TEST_MCP_EVERYTHING",
    "TEST_FAULT",
];

impl Config {
    /// Loads the layers. `file` is the configuration file to read; when it is `None`,
    /// `tessera.toml` in the working directory is read if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                anyhow::ensure!(
                    path.exists(),
                    "configuration file {} does not exist",
                    path.display()
                );
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let config: Config = figment
            .merge(Env::prefixed("TESSERA_").ignore(NOT_CONFIG).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.public_url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "public_url must start with http:// or https:// (got {url:?})"
            );
        }
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "max_body_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_upload_bytes >= 1,
            "max_upload_bytes must be at least 1"
        );
        anyhow::ensure!(
            self.database.max_connections >= 1,
            "database.max_connections must be at least 1"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.runtime.workers),
            "runtime.workers must be between 1 and 1024"
        );
        anyhow::ensure!(
            self.runtime.lease_seconds >= 3,
            "runtime.lease_seconds must be at least 3"
        );
        anyhow::ensure!(
            self.runtime.poll_interval_ms >= 10,
            "runtime.poll_interval_ms must be at least 10"
        );
        anyhow::ensure!(
            (0..=300).contains(&self.sessions.ask_wait_seconds),
            "sessions.ask_wait_seconds must be between 0 and 300"
        );
        anyhow::ensure!(
            (1..=tessera_domain::agent::ApprovalRule::MAX_EXPIRES_IN_SECONDS)
                .contains(&self.sessions.action_expiry_seconds),
            "sessions.action_expiry_seconds must be between 1 and 86400"
        );
        anyhow::ensure!(
            self.runtime.tool_timeout_seconds >= 1,
            "runtime.tool_timeout_seconds must be at least 1"
        );
        self.sandbox.validate().map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            (1..=3650).contains(&self.runtime.board_slot_retention_days),
            "runtime.board_slot_retention_days must be between 1 and 3650"
        );
        anyhow::ensure!(
            self.runtime.orphan_upload_grace_seconds >= 600,
            "runtime.orphan_upload_grace_seconds must be at least 600"
        );
        tessera_runtime::tool_net::NetPolicy::new(&self.tools.allow_hosts)
            .map_err(|e| anyhow::anyhow!("tools.allow_hosts: {e}"))?;
        anyhow::ensure!(
            (1..=tessera_domain::tool::ApiConfig::MAX_RESPONSE_BYTES)
                .contains(&self.tools.max_response_bytes),
            "tools.max_response_bytes must be between 1 and 10485760"
        );
        anyhow::ensure!(
            self.tools.max_redirects <= 20,
            "tools.max_redirects must be at most 20"
        );
        self.toolkits.validate().map_err(|e| anyhow::anyhow!(e))?;
        for name in self.providers.keys() {
            tessera_domain::validate::ProviderName::parse("providers", name.clone())
                .map_err(|e| anyhow::anyhow!("provider name {name:?}: {}", e.message))?;
        }
        if let Some(key) = &self.secrets_key {
            tessera_domain::token::SecretsKey::parse(key.expose())
                .map_err(|e| anyhow::anyhow!("TESSERA_SECRETS_KEY {e}"))?;
        }
        let identity = &self.identity;
        anyhow::ensure!(
            identity.session_idle_timeout_seconds >= 60,
            "identity.session_idle_timeout_seconds must be at least 60"
        );
        anyhow::ensure!(
            identity.session_lifetime_seconds >= identity.session_idle_timeout_seconds,
            "identity.session_lifetime_seconds must be at least session_idle_timeout_seconds"
        );
        anyhow::ensure!(
            identity.sign_in_window_seconds >= 1,
            "identity.sign_in_window_seconds must be at least 1"
        );
        anyhow::ensure!(
            identity.sign_in_max_failures_per_account >= 1
                && identity.sign_in_max_failures_per_ip >= 1,
            "identity.sign_in_max_failures_per_account and _per_ip must be at least 1"
        );
        anyhow::ensure!(
            (60..=86_400).contains(&identity.user_token_max_seconds)
                && (60..=identity.user_token_max_seconds)
                    .contains(&identity.user_token_default_seconds),
            "identity.user_token_max_seconds must be 60-86400 and user_token_default_seconds \
             60-user_token_max_seconds"
        );
        let sessions = &self.sessions;
        anyhow::ensure!(
            (1..=7 * 86_400).contains(&sessions.ticket_max_expires_in_seconds)
                && (1..=sessions.ticket_max_expires_in_seconds)
                    .contains(&sessions.ticket_default_expires_in_seconds),
            "sessions.ticket_max_expires_in_seconds must be 1-604800 and \
             ticket_default_expires_in_seconds 1-ticket_max_expires_in_seconds"
        );
        anyhow::ensure!(
            (60..=30 * 86_400).contains(&sessions.agent_session_lifetime_seconds),
            "sessions.agent_session_lifetime_seconds must be 60-2592000"
        );
        anyhow::ensure!(
            (60..=1800).contains(&sessions.impersonation_seconds),
            "sessions.impersonation_seconds must be 60-1800 (impersonation lasts at most 30 minutes)"
        );
        anyhow::ensure!(
            (60..=7 * 86_400).contains(&sessions.console_session_seconds),
            "sessions.console_session_seconds must be 60-604800"
        );
        if let Some(password) = &self.bootstrap_admin_password {
            anyhow::ensure!(
                (12..=1024).contains(&password.expose().len()),
                "TESSERA_BOOTSTRAP_ADMIN_PASSWORD must be 12-1024 bytes"
            );
        }
        if let Some(key) = &self.bootstrap_secret_key {
            tessera_domain::secret::validate_operator_secret_key(key.expose())
                .map_err(|e| anyhow::anyhow!("TESSERA_BOOTSTRAP_SECRET_KEY {e}"))?;
        }
        Ok(())
    }

    /// The public origin without a trailing slash.
    pub fn public_url(&self) -> String {
        self.public_url_at(self.listen)
    }

    /// The public origin of a server bound to `addr` (which differs from `listen` when it asked
    /// for port 0).
    pub fn public_url_at(&self, addr: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{addr}"),
        }
    }

    /// Where the secrets key file is (see `secrets_key_file`).
    pub fn secrets_key_path(&self) -> std::path::PathBuf {
        if let Some(path) = &self.secrets_key_file {
            return path.clone();
        }
        let sqlite_file = self
            .database_url
            .strip_prefix("sqlite://")
            .or_else(|| self.database_url.strip_prefix("sqlite:"))
            .map(|rest| rest.split('?').next().unwrap_or_default());
        match sqlite_file {
            Some(file) if !file.is_empty() => Path::new(file)
                .parent()
                .map(|dir| dir.join("secrets.key"))
                .unwrap_or_else(|| "secrets.key".into()),
            _ => Path::new("tessera-data").join("secrets.key"),
        }
    }

    /// Storage connection settings derived from this configuration.
    pub fn connect_options(&self) -> tessera_store::ConnectOptions {
        tessera_store::ConnectOptions {
            max_connections: self.database.max_connections,
            sqlite_synchronous_full: self.database.sqlite_synchronous == SqliteSynchronous::Full,
            busy_timeout: std::time::Duration::from_millis(self.database.busy_timeout_ms),
            sqlite_pin_writer: self.database.sqlite_pin_writer,
        }
    }
}

#[cfg(test)]
// figment's test jail returns its own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tessera.toml",
                r#"
                listen = "127.0.0.1:9000"
                log_level = "debug"
                [database]
                max_connections = 3
                "#,
            )?;
            jail.set_env("TESSERA_LOG_LEVEL", "warn");
            jail.set_env("TESSERA_DATABASE__BUSY_TIMEOUT_MS", "100");
            jail.set_env("TESSERA_DATABASE__SQLITE_PIN_WRITER", "false");
            jail.set_env("TESSERA_API_KEY", "not-config");
            let config = Config::load(
                None,
                &Overrides {
                    database_url: Some("sqlite://x.db".into()),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.log_level, "warn");
            assert_eq!(config.database.max_connections, 3);
            assert_eq!(config.database.busy_timeout_ms, 100);
            assert!(!config.connect_options().sqlite_pin_writer);
            assert!(Config::default().connect_options().sqlite_pin_writer);
            assert_eq!(config.database_url, "sqlite://x.db");
            assert_eq!(config.public_url(), "http://127.0.0.1:9000");
            Ok(())
        });
    }

    #[test]
    fn weak_bootstrap_keys_and_bad_urls_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESSERA_BOOTSTRAP_SECRET_KEY", "tsk_short");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("BOOTSTRAP_SECRET_KEY"));
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESSERA_PUBLIC_URL", "example.com");
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn secrets_key_file_defaults_next_to_sqlite() {
        let config = Config {
            database_url: "sqlite:///var/lib/tessera/t.db?mode=rwc".into(),
            ..Config::default()
        };
        assert_eq!(
            config.secrets_key_path(),
            Path::new("/var/lib/tessera/secrets.key")
        );
        let config = Config {
            database_url: "postgres://u@h/db".into(),
            ..Config::default()
        };
        assert_eq!(
            config.secrets_key_path(),
            Path::new("tessera-data/secrets.key")
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESSERA_SECRETS_KEY", "not-a-key");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("SECRETS_KEY"), "{err}");
            jail.set_env("TESSERA_SECRETS_KEY", "ab".repeat(32));
            jail.set_env("TESSERA_IDENTITY__SIGN_IN_MAX_FAILURES_PER_ACCOUNT", "3");
            jail.set_env("TESSERA_IDENTITY__PASSWORD_CHECK_SLOTS", "4");
            jail.set_env("TESSERA_IDENTITY__PASSWORD_CHECK_WAIT_MS", "250");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.identity.sign_in_max_failures_per_account, 3);
            assert_eq!(config.identity.password_check_slots, 4);
            assert_eq!(config.identity.password_check_wait_ms, 250);
            assert!(!format!("{config:?}").contains(&"ab".repeat(32)));
            Ok(())
        });
    }

    #[test]
    fn session_limits_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESSERA_SESSIONS__IMPERSONATION_SECONDS", "3600");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("impersonation"), "{err}");
            jail.set_env("TESSERA_SESSIONS__IMPERSONATION_SECONDS", "600");
            jail.set_env("TESSERA_SESSIONS__TICKET_MAX_EXPIRES_IN_SECONDS", "60");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("ticket_default"), "{err}");
            jail.set_env("TESSERA_SESSIONS__TICKET_DEFAULT_EXPIRES_IN_SECONDS", "30");
            jail.set_env("TESSERA_BOOTSTRAP_ADMIN_PASSWORD", "short");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("ADMIN_PASSWORD"), "{err}");
            jail.set_env("TESSERA_BOOTSTRAP_ADMIN_PASSWORD", "a long enough password");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.sessions.ticket_max_expires_in_seconds, 60);
            assert_eq!(config.sessions.impersonation_seconds, 600);
            Ok(())
        });
    }

    #[test]
    fn sandbox_and_mcp_sections_load_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tessera.toml",
                r#"
                [sandbox]
                allow_unsandboxed = true
                execute_code_network = true
                limits = { cpu_seconds = 5, wall_clock_seconds = 20 }
                [mcp]
                allow_stdio = true
                "#,
            )?;
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert!(config.sandbox.allow_unsandboxed && config.sandbox.execute_code_network);
            assert_eq!(config.sandbox.limits.cpu_seconds, 5);
            assert_eq!(config.sandbox.limits.wall_clock_seconds, 20);
            // Unset limits keep their defaults.
            assert_eq!(config.sandbox.limits.max_processes, 64);
            assert!(config.mcp.allow_stdio && !config.mcp.allow_private);
            jail.set_env("TESSERA_SANDBOX__LIMITS__MAX_PROCESSES", "1");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_processes"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_toolkits_section_loads_and_is_checked() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                config.toolkits.base_url, None,
                "toolkits are off by default"
            );
            jail.create_file(
                "tessera.toml",
                r#"
                [toolkits]
                base_url = "https://toolkits.example.com/v1"
                api_key_env = "TOOLKIT_KEY"
                "#,
            )?;
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                config.toolkits.base_url.as_deref(),
                Some("https://toolkits.example.com/v1")
            );
            assert_eq!(config.toolkits.api_key_env.as_deref(), Some("TOOLKIT_KEY"));
            assert_eq!(config.toolkits.timeout_seconds, 30);
            jail.set_env("TESSERA_TOOLKITS__BASE_URL", "ftp://toolkits.example.com");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("toolkits.base_url"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = Config {
            bootstrap_secret_key: Some(Secret::new("tsk_supersecret")),
            bootstrap_admin_password: Some(Secret::new("adminsupersecret")),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("supersecret"));
    }
}
