//! Running the real `tessera` binary: a server process per test, and one-shot commands.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_client::Client;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// The banner's last line; everything before it has been printed once it is seen.
const BANNER_END: &str = "Press Ctrl-C to stop.";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh, strong key for `TESSERA_BOOTSTRAP_SECRET_KEY`.
pub fn bootstrap_key() -> String {
    PlainSecret::generate(SECRET_KEY_PREFIX).expose().to_owned()
}

/// Removes the caller's `TESSERA_*` variables, so the developer's environment cannot change
/// what a test sees.
fn clean_env(command: &mut StdCommand) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
}

/// A `tessera serve` child process; killed (and reaped) on drop.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, from the banner.
    pub url: String,
    /// The banner lines printed on standard output.
    pub banner: Vec<String>,
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    /// Starts `tessera serve` on `database_url` with `bootstrap_key` as the bootstrap secret key,
    /// waits for the banner and for `/healthz` to answer 200.
    pub async fn start(database_url: &str, bootstrap_key: &str) -> Server {
        Self::launch(database_url, Some(bootstrap_key), &[]).await
    }

    /// Like [`Server::start`], with extra environment variables for the server process
    /// (`TESSERA_RUNTIME__LEASE_SECONDS`, `TESSERA_PROVIDERS__NAME__BASE_URL`, …).
    pub async fn start_with_env(
        database_url: &str,
        bootstrap_key: &str,
        env: &[(&str, String)],
    ) -> Server {
        Self::launch(database_url, Some(bootstrap_key), env).await
    }

    /// Like [`Server::start`], but lets the server generate (and print) the first key.
    pub async fn start_generating_key(database_url: &str) -> Server {
        Self::launch(database_url, None, &[]).await
    }

    async fn launch(
        database_url: &str,
        bootstrap_key: Option<&str>,
        env: &[(&str, String)],
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut command = StdCommand::new(BIN);
        clean_env(&mut command);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
            .arg(database_url)
            .env("TESSERA_LOG_FORMAT", "json")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(key) = bootstrap_key {
            command.env("TESSERA_BOOTSTRAP_SECRET_KEY", key);
        }
        let mut child = command.spawn().expect("spawn tessera serve");
        let stdout = child.stdout.take().unwrap();

        // A thread keeps draining standard output for the life of the process, so the child
        // can never block on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut server = Server {
            child: Some(child),
            url: String::new(),
            banner: Vec::new(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line == BANNER_END;
                    server.banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(err) => panic!(
                    "no banner from tessera serve ({err}); stdout so far: {:?}\nlog:\n{}",
                    server.banner,
                    server.log()
                ),
            }
        }
        server.url = server
            .banner
            .iter()
            .find_map(|line| line.split_once(" listening on ").map(|(_, url)| url))
            .unwrap_or_else(|| panic!("no listening address in {:?}", server.banner))
            .trim()
            .to_owned();
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let client = Client::unauthenticated(self.url.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match client.health().send().await {
                Ok(health) if health.status == "ok" => return,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "server never became healthy: {other:?}\nlog:\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn client(&self, key: &str) -> Client {
        Client::new(self.url.clone(), key)
    }

    /// The process's log (its standard error) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the banner says this start created deployment `default`.
    pub fn bootstrapped(&self) -> bool {
        self.banner
            .iter()
            .any(|line| line.contains("created deployment"))
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; `None` if it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = StdCommand::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a one-shot command did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the output unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self:#?}");
        self
    }

    /// Panics unless the command failed with exit status 1.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit status 1: {self:#?}"
        );
        self
    }

    /// The secret key printed on a `secret key: tsk_…` line.
    #[track_caller]
    pub fn secret_key(&self) -> String {
        self.stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("secret key:"))
            .map(|key| key.trim().to_owned())
            .filter(|key| key.starts_with("tsk_"))
            .unwrap_or_else(|| panic!("no secret key in {:?}", self.stdout))
    }

    #[track_caller]
    pub fn stdout_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// A one-shot `tessera …` command in an empty working directory (so no stray `tessera.toml`
/// is read).
pub struct Tessera {
    command: tokio::process::Command,
    stdin: Option<String>,
    _dir: TempDir,
}

/// `tessera <args>`.
pub fn tessera<I, S>(args: I) -> Tessera
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut std_command = StdCommand::new(BIN);
    clean_env(&mut std_command);
    std_command
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut command = tokio::process::Command::from(std_command);
    command.kill_on_drop(true);
    Tessera {
        command,
        stdin: None,
        _dir: dir,
    }
}

impl Tessera {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.command.env(name, value);
        self
    }

    /// `TESSERA_URL` and `TESSERA_API_KEY` for the API commands.
    pub fn against(self, server: &Server, key: &str) -> Self {
        self.env("TESSERA_URL", &server.url)
            .env("TESSERA_API_KEY", key)
    }

    pub fn stdin(mut self, input: &str) -> Self {
        self.command.stdin(Stdio::piped());
        self.stdin = Some(input.to_owned());
        self
    }

    pub async fn run(mut self) -> Run {
        use tokio::io::AsyncWriteExt as _;

        let mut child = self.command.spawn().expect("spawn tessera");
        if let Some(input) = self.stdin.take() {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).await.unwrap();
            drop(stdin);
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .expect("tessera command timed out")
            .unwrap();
        Run {
            status: output.status,
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

/// Writes `contents` to `name` in `dir` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
