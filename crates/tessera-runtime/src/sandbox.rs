//! Runs untrusted python / javascript / bash code in a bubblewrap (`bwrap`) sandbox: new
//! user, pid, network, ipc, uts, mount and cgroup namespaces; a read-only system; a private
//! `/tmp`; one host directory mounted read-write at `/workspace` (also the working directory);
//! an empty environment; and CPU-time, memory, process-count, file-size, output-size and
//! wall-clock limits. The program's stdin carries its input; stdout, stderr, the exit code and
//! the limit that ended it come back.
//!
//! The sandbox fails closed: when bubblewrap is missing or cannot create its namespaces, a run
//! is refused with [`SandboxError::Unavailable`]. Only the operator setting
//! [`SandboxConfig::allow_unsandboxed`] runs code without bubblewrap (development), and every
//! such run logs a warning.
//!
//! How the limits are enforced (no `unsafe` in this workspace, so no `pre_exec`): the program is
//! started through `prlimit` *inside* the sandbox, after bubblewrap has made the new user
//! namespace, so `RLIMIT_NPROC` counts only this sandbox's processes. When the server runs as
//! root, bubblewrap is started through `setpriv` as an unprivileged uid (65534 by default):
//! the kernel does not enforce `RLIMIT_NPROC` for root, and a root-mapped sandbox could bypass
//! file permissions on what it sees. Killing bubblewrap (wall clock, output cap) kills the whole
//! sandbox: `--die-with-parent` and the pid namespace take every descendant with it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Where the task workspace appears inside the sandbox (also the working directory).
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where the program's source file appears inside the sandbox (read-only).
const CODE_MOUNT: &str = "/code";
/// `PATH` inside the sandbox.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Exit status bubblewrap reports for a program killed by `SIGXCPU` (128 + 24), i.e. the CPU
/// time limit.
const EXIT_SIGXCPU: i32 = 128 + 24;

/// Top-level directories that hold the system (binaries, libraries): bound read-only, or
/// recreated as the same symlinks on merged-/usr systems.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// The parts of `/etc` programs need (dynamic loader, alternatives, time zone, name resolution
/// and TLS roots for runs with network). Everything else of `/etc` (passwd, shadow, the
/// server's configuration) is absent.
const ETC_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
];

/// `[sandbox]`: how code runs (see `docs/sandbox.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// The bubblewrap binary.
    pub bwrap_path: PathBuf,
    /// `prlimit` (util-linux); it runs inside the sandbox, so it must live under a bound
    /// system directory.
    pub prlimit_path: PathBuf,
    /// `setpriv` (util-linux), used to drop to `run_as_uid` when the server runs as root.
    pub setpriv_path: PathBuf,
    /// The unprivileged uid/gid code runs as when the server runs as root (`nobody`).
    pub run_as_uid: u32,
    pub run_as_gid: u32,
    /// Interpreters; each must live under a bound system directory or `extra_ro_binds`.
    pub python_path: PathBuf,
    pub node_path: PathBuf,
    pub bash_path: PathBuf,
    /// More host directories bound read-only at the same path (e.g. `/opt/python`).
    pub extra_ro_binds: Vec<PathBuf>,
    /// Where per-run directories are created; the system temporary directory by default.
    pub work_dir: Option<PathBuf>,
    /// Runs code WITHOUT bubblewrap when set (development only; every run logs a warning).
    /// Limits still apply; isolation does not.
    pub allow_unsandboxed: bool,
    /// Whether the internal `execute_code` tool's runs may use the network.
    pub execute_code_network: bool,
    /// Limits of every run unless a tool sets its own.
    pub limits: SandboxLimits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            bwrap_path: "/usr/bin/bwrap".into(),
            prlimit_path: "/usr/bin/prlimit".into(),
            setpriv_path: "/usr/bin/setpriv".into(),
            run_as_uid: 65534,
            run_as_gid: 65534,
            python_path: "/usr/bin/python3".into(),
            node_path: "/usr/bin/node".into(),
            bash_path: "/usr/bin/bash".into(),
            extra_ro_binds: Vec::new(),
            work_dir: None,
            allow_unsandboxed: false,
            execute_code_network: false,
            limits: SandboxLimits::default(),
        }
    }
}

impl SandboxConfig {
    /// Checks the values an operator may get wrong.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let checks = [
            (
                l.cpu_seconds >= 1,
                "sandbox.limits.cpu_seconds must be at least 1",
            ),
            (
                l.memory_bytes >= 64 * 1024 * 1024,
                "sandbox.limits.memory_bytes must be at least 64 MiB",
            ),
            (
                l.max_processes >= 4,
                "sandbox.limits.max_processes must be at least 4",
            ),
            (
                l.output_bytes >= 1024,
                "sandbox.limits.output_bytes must be at least 1024",
            ),
            (
                l.wall_clock_seconds >= 1,
                "sandbox.limits.wall_clock_seconds must be at least 1",
            ),
            (
                l.file_size_bytes >= 1024,
                "sandbox.limits.file_size_bytes must be at least 1024",
            ),
            (
                l.tmp_bytes >= 1024 * 1024,
                "sandbox.limits.tmp_bytes must be at least 1 MiB",
            ),
        ];
        for (ok, message) in checks {
            if !ok {
                return Err(message.to_owned());
            }
        }
        for path in [
            &self.bwrap_path,
            &self.prlimit_path,
            &self.setpriv_path,
            &self.python_path,
            &self.node_path,
            &self.bash_path,
        ]
        .into_iter()
        .chain(&self.extra_ro_binds)
        {
            if !path.is_absolute() {
                return Err(format!("sandbox paths must be absolute (got {path:?})"));
            }
        }
        Ok(())
    }
}

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxLimits {
    /// CPU time of each process (`RLIMIT_CPU`): `SIGXCPU` at this many seconds.
    pub cpu_seconds: u64,
    /// Address space of each process (`RLIMIT_AS`). Node needs about 1 GiB to start.
    pub memory_bytes: u64,
    /// Processes and threads of the sandbox (`RLIMIT_NPROC` in its own user namespace).
    pub max_processes: u64,
    /// stdout and stderr together; the sandbox is killed when it writes more.
    pub output_bytes: u64,
    /// Wall-clock time of the whole run; the sandbox is killed after it.
    pub wall_clock_seconds: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// Size of the private `/tmp` (a tmpfs, so memory).
    pub tmp_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            cpu_seconds: 10,
            memory_bytes: 1024 * 1024 * 1024,
            max_processes: 64,
            output_bytes: 1024 * 1024,
            wall_clock_seconds: 30,
            file_size_bytes: 64 * 1024 * 1024,
            tmp_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A language the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Javascript,
    Bash,
}

impl Language {
    /// `python`, `javascript`, `bash` (and `node`, `js`, `sh` as aliases).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "python" | "python3" | "py" => Some(Self::Python),
            "javascript" | "js" | "node" => Some(Self::Javascript),
            "bash" | "sh" | "shell" => Some(Self::Bash),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Javascript => "javascript",
            Self::Bash => "bash",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Self::Python => "main.py",
            Self::Javascript => "main.js",
            Self::Bash => "main.sh",
        }
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct CodeRun {
    pub language: Language,
    pub code: String,
    /// Bytes on the program's stdin (the JSON input), then end of file.
    pub stdin: Vec<u8>,
    /// Host directory mounted read-write at [`WORKSPACE_MOUNT`]; `None` gives an empty one
    /// that is deleted after the run. When the server runs as root its contents are handed to
    /// the sandbox uid before the run.
    pub workspace: Option<PathBuf>,
    /// Shares the host's network when set; otherwise the sandbox has only its own loopback.
    pub network: bool,
    pub limits: SandboxLimits,
}

/// The limit that ended a run (or that the program ran into).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Killed by `SIGXCPU`.
    CpuTime,
    /// An allocation was refused (recognised from the interpreter's error message).
    Memory,
    /// A fork was refused (recognised from the error message: `EAGAIN`).
    Processes,
    /// stdout + stderr exceeded the cap; the sandbox was killed.
    Output,
    /// The wall clock ran out; the sandbox was killed.
    WallClock,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CpuTime => "cpu_time",
            Self::Memory => "memory",
            Self::Processes => "processes",
            Self::Output => "output",
            Self::WallClock => "wall_clock",
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOutcome {
    /// stdout, lossily decoded as UTF-8, cut at the output cap.
    pub stdout: String,
    pub stderr: String,
    /// The program's exit code (128 + N for a signal N), `None` when the sandbox was killed.
    pub exit_code: Option<i32>,
    pub limit: Option<Limit>,
    /// Whether output was cut at the cap.
    pub output_truncated: bool,
    /// `false` only for runs without bubblewrap (`allow_unsandboxed`).
    pub sandboxed: bool,
}

/// Why a run could not happen (the program's own failures are a [`RunOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox cannot be created here; nothing ran.
    #[error("the code sandbox is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The sandbox engine; cheap to share.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    /// Set once bubblewrap was seen creating a sandbox here.
    probed: tokio::sync::OnceCell<()>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        if config.allow_unsandboxed {
            tracing::warn!(
                "sandbox.allow_unsandboxed is set: code tools may run WITHOUT isolation when \
                 bubblewrap is unavailable; never use this in production"
            );
        }
        Self {
            config,
            probed: tokio::sync::OnceCell::new(),
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// A new private directory for one run's workspace, in `work_dir`.
    pub fn scratch_dir(&self) -> io::Result<tempfile::TempDir> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("tessera-sandbox-");
        match &self.config.work_dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
    }

    /// Checks that bubblewrap can create a sandbox here (once; a failure is retried on the
    /// next call). Errors say why, for the operator.
    pub async fn check(&self) -> Result<(), SandboxError> {
        self.probed
            .get_or_try_init(|| async {
                let uid = drop_to(&self.config)?;
                let mut args = namespace_args(&self.config, false);
                args.extend(["--remount-ro".into(), "/".into(), "--".into()]);
                args.push(self.config.prlimit_path.as_os_str().to_owned());
                args.push("--version".into());
                let mut cmd = wrapped(&self.config, uid, args);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
                    .await
                    .map_err(|_| {
                        SandboxError::Unavailable("bubblewrap did not start within 30 s".into())
                    })?
                    .map_err(|e| {
                        SandboxError::Unavailable(format!(
                            "cannot start bubblewrap ({}): {e}",
                            self.config.bwrap_path.display()
                        ))
                    })?;
                if !out.status.success() {
                    return Err(SandboxError::Unavailable(format!(
                        "bubblewrap cannot create a sandbox here ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Runs `run`. Fails closed: when bubblewrap cannot be used the result is
    /// [`SandboxError::Unavailable`], unless the operator set `allow_unsandboxed`.
    pub async fn run(&self, run: CodeRun) -> Result<RunOutcome, SandboxError> {
        let interpreter = self.interpreter(run.language);
        if !interpreter.exists() {
            return Err(SandboxError::Unavailable(format!(
                "the {} interpreter {} is not installed",
                run.language.as_str(),
                interpreter.display()
            )));
        }
        let sandboxed = match self.check().await {
            Ok(()) => true,
            Err(err) if self.config.allow_unsandboxed => {
                tracing::warn!(error = %err, "running code WITHOUT a sandbox (sandbox.allow_unsandboxed)");
                false
            }
            Err(err) => return Err(err),
        };
        let run_dir = self.scratch_dir()?;
        let code_dir = run_dir.path().join("code");
        std::fs::create_dir(&code_dir)?;
        std::fs::write(code_dir.join(run.language.file_name()), run.code.as_bytes())?;
        let workspace = match &run.workspace {
            Some(dir) => dir.clone(),
            None => {
                let dir = run_dir.path().join("workspace");
                std::fs::create_dir(&dir)?;
                dir
            }
        };
        let uid = if sandboxed {
            drop_to(&self.config)?
        } else {
            None
        };
        if let Some((uid, gid)) = uid {
            // The unprivileged sandbox user must be able to enter and write its directories.
            hand_over(run_dir.path(), uid, gid)?;
            if run.workspace.is_some() {
                hand_over(&workspace, uid, gid)?;
            }
        }
        let cmd = if sandboxed {
            self.sandboxed_command(&run, uid, &code_dir, &workspace)
        } else {
            self.unsandboxed_command(&run, &code_dir, &workspace, run_dir.path())
        };
        let outcome = execute(cmd, run.stdin, &run.limits).await?;
        Ok(RunOutcome {
            sandboxed,
            ..outcome
        })
    }

    fn interpreter(&self, language: Language) -> &Path {
        match language {
            Language::Python => &self.config.python_path,
            Language::Javascript => &self.config.node_path,
            Language::Bash => &self.config.bash_path,
        }
    }

    /// `INTERPRETER [flags] FILE`, with the limits applied by `prlimit` first.
    fn program(&self, run: &CodeRun, code_file: &Path) -> Vec<std::ffi::OsString> {
        let l = &run.limits;
        let mut argv: Vec<std::ffi::OsString> = vec![
            self.config.prlimit_path.clone().into(),
            format!("--cpu={}:{}", l.cpu_seconds, l.cpu_seconds + 1).into(),
            format!("--as={}", l.memory_bytes).into(),
            format!("--nproc={}", l.max_processes).into(),
            format!("--fsize={}", l.file_size_bytes).into(),
            "--core=0".into(),
            "--".into(),
            self.interpreter(run.language).as_os_str().to_owned(),
        ];
        match run.language {
            // Unbuffered, no .pyc files in the workspace, no user site directory.
            Language::Python => argv.extend(["-u".into(), "-B".into(), "-s".into()]),
            // A heap limit below the address-space limit makes V8 fail with a clear
            // "heap out of memory" instead of a failed mapping.
            Language::Javascript => argv.push(
                format!(
                    "--max-old-space-size={}",
                    (l.memory_bytes / (1024 * 1024) / 4).max(16)
                )
                .into(),
            ),
            Language::Bash => {}
        }
        argv.push(code_file.as_os_str().to_owned());
        argv
    }

    fn sandboxed_command(
        &self,
        run: &CodeRun,
        uid: Option<(u32, u32)>,
        code_dir: &Path,
        workspace: &Path,
    ) -> Command {
        let mut args = namespace_args(&self.config, run.network);
        args.extend([
            "--size".into(),
            run.limits.tmp_bytes.to_string().into(),
            "--tmpfs".into(),
            "/tmp".into(),
            "--bind".into(),
            workspace.as_os_str().to_owned(),
            WORKSPACE_MOUNT.into(),
            "--ro-bind".into(),
            code_dir.as_os_str().to_owned(),
            CODE_MOUNT.into(),
            "--chdir".into(),
            WORKSPACE_MOUNT.into(),
            // The root bwrap builds is a writable tmpfs: freeze it once everything is
            // mounted, so only /workspace and /tmp take writes.
            "--remount-ro".into(),
            "/".into(),
            "--".into(),
        ]);
        let file = Path::new(CODE_MOUNT).join(run.language.file_name());
        args.extend(self.program(run, &file));
        wrapped(&self.config, uid, args)
    }

    fn unsandboxed_command(
        &self,
        run: &CodeRun,
        code_dir: &Path,
        workspace: &Path,
        run_dir: &Path,
    ) -> Command {
        let argv = self.program(run, &code_dir.join(run.language.file_name()));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(workspace)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", run_dir)
            .env("TMPDIR", run_dir)
            .env("LANG", "C.UTF-8");
        cmd
    }
}

/// The uid/gid to drop to: `Some` when the server runs as root.
fn drop_to(config: &SandboxConfig) -> Result<Option<(u32, u32)>, SandboxError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    if config.run_as_uid == 0 {
        return Err(SandboxError::Unavailable(
            "sandbox.run_as_uid must not be 0".into(),
        ));
    }
    if !config.setpriv_path.exists() {
        return Err(SandboxError::Unavailable(format!(
            "the server runs as root and {} (util-linux) is missing to drop privileges",
            config.setpriv_path.display()
        )));
    }
    Ok(Some((config.run_as_uid, config.run_as_gid)))
}

/// bubblewrap's arguments up to the per-run mounts: namespaces, system binds, environment.
fn namespace_args(config: &SandboxConfig, network: bool) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--unshare-all".into(),
        // `--unshare-all` only *tries* a user namespace; insist.
        "--unshare-user".into(),
        "--disable-userns".into(),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--hostname".into(),
        "sandbox".into(),
    ];
    if network {
        args.push("--share-net".into());
    }
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    args.extend(["--symlink".into(), target.into(), (*dir).into()]);
                }
            }
            Ok(meta) if meta.is_dir() => {
                args.extend(["--ro-bind".into(), (*dir).into(), (*dir).into()]);
            }
            _ => {}
        }
    }
    for file in ETC_FILES {
        args.extend(["--ro-bind-try".into(), (*file).into(), (*file).into()]);
    }
    for dir in &config.extra_ro_binds {
        args.extend([
            "--ro-bind".into(),
            dir.as_os_str().to_owned(),
            dir.as_os_str().to_owned(),
        ]);
    }
    args.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--clearenv",
            "--setenv",
            "PATH",
            SANDBOX_PATH,
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "TMPDIR",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
        ]
        .map(Into::into),
    );
    args
}

/// `bwrap ARGS`, started through `setpriv` as the unprivileged uid when the server is root.
fn wrapped(
    config: &SandboxConfig,
    uid: Option<(u32, u32)>,
    args: Vec<std::ffi::OsString>,
) -> Command {
    let mut cmd = match uid {
        Some((uid, gid)) => {
            let mut cmd = Command::new(&config.setpriv_path);
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(&config.bwrap_path);
            cmd
        }
        None => Command::new(&config.bwrap_path),
    };
    cmd.args(args)
        // bubblewrap clears the sandbox's environment; its own needs none either.
        .env_clear()
        .current_dir("/");
    cmd
}

/// Gives `dir` and everything below it (never following symlinks) to `uid:gid`.
fn hand_over(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            hand_over(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// How a run's streams ended.
enum Ending {
    Finished,
    OutputCap,
}

/// Spawns `cmd` in its own process group, feeds stdin, collects output under the cap and
/// enforces the wall clock.
async fn execute(
    mut cmd: Command,
    stdin: Vec<u8>,
    limits: &SandboxLimits,
) -> Result<RunOutcome, SandboxError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::Unavailable(format!("cannot start the sandboxed program: {e}"))
    })?;
    let feeder = child.stdin.take().map(|mut pipe| {
        tokio::spawn(async move {
            // The program may exit without reading its input: a broken pipe is its choice.
            let _ = pipe.write_all(&stdin).await;
            let _ = pipe.shutdown().await;
        })
    });
    let (Some(mut out_pipe), Some(mut err_pipe)) = (child.stdout.take(), child.stderr.take())
    else {
        return Err(SandboxError::Io(io::Error::other("no output pipes")));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let cap = limits.output_bytes;
    let wall = Duration::from_secs(limits.wall_clock_seconds);
    let collected = tokio::time::timeout(wall, async {
        let ending = collect(&mut out_pipe, &mut err_pipe, &mut stdout, &mut stderr, cap).await;
        if let Ending::OutputCap = ending {
            return (ending, None);
        }
        let status = child.wait().await.ok();
        (ending, status)
    })
    .await;
    let (limit, status) = match collected {
        Ok((Ending::Finished, status)) => (None, status),
        Ok((Ending::OutputCap, _)) => (Some(Limit::Output), None),
        Err(_) => (Some(Limit::WallClock), None),
    };
    if limit.is_some() {
        kill(&mut child).await;
    }
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    let exit_code = status.map(|s| {
        use std::os::unix::process::ExitStatusExt as _;
        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
    });
    let stderr_text = String::from_utf8_lossy(&stderr).into_owned();
    let limit = limit.or_else(|| classify(exit_code, &stderr_text));
    Ok(RunOutcome {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: stderr_text,
        exit_code,
        limit,
        output_truncated: limit == Some(Limit::Output),
        sandboxed: true,
    })
}

/// Kills the process group (bubblewrap, or the unsandboxed program and its children), then
/// reaps the child.
async fn kill(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads both streams to their end, keeping at most `cap` bytes in all; stops at the cap.
async fn collect(
    out_pipe: &mut (impl AsyncRead + Unpin),
    err_pipe: &mut (impl AsyncRead + Unpin),
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
    cap: u64,
) -> Ending {
    let mut out_buf = vec![0u8; 16 * 1024];
    let mut err_buf = vec![0u8; 16 * 1024];
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            r = out_pipe.read(&mut out_buf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => stdout.extend_from_slice(&out_buf[..n]),
            },
            r = err_pipe.read(&mut err_buf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => stderr.extend_from_slice(&err_buf[..n]),
            },
        }
        let total = (stdout.len() + stderr.len()) as u64;
        if total > cap {
            // Keep stderr whole where possible (it says what went wrong), cut stdout first.
            let excess = usize::try_from(total - cap).unwrap_or(usize::MAX);
            let from_out = excess.min(stdout.len());
            stdout.truncate(stdout.len() - from_out);
            stderr.truncate(stderr.len() - (excess - from_out).min(stderr.len()));
            return Ending::OutputCap;
        }
    }
    Ending::Finished
}

/// The limit a program that ended by itself ran into, from its exit code and error output.
/// CPU time is certain (`SIGXCPU`); memory and processes are recognised from the messages the
/// interpreters print when the kernel refuses an allocation or a fork.
fn classify(exit_code: Option<i32>, stderr: &str) -> Option<Limit> {
    let code = exit_code?;
    if code == EXIT_SIGXCPU {
        return Some(Limit::CpuTime);
    }
    // EAGAIN from fork/clone: bash `fork: retry: …`, Python `BlockingIOError: [Errno 11] …`,
    // node `spawn EAGAIN`.
    const FORK: &[&str] = &["Resource temporarily unavailable", "spawn EAGAIN"];
    const MEMORY: &[&str] = &[
        "MemoryError",
        "heap out of memory",
        "Cannot allocate memory",
        "out of memory",
        "Fatal process OOM",
        "std::bad_alloc",
    ];
    if code != 0 && MEMORY.iter().any(|m| stderr.contains(m)) {
        return Some(Limit::Memory);
    }
    if FORK.iter().any(|m| stderr.contains(m)) {
        return Some(Limit::Processes);
    }
    None
}

/// For test suites: the sandbox with the default configuration when bubblewrap works here;
/// `None` (skip) when it does not, unless `TESSERA_REQUIRE_SANDBOX=1` makes that a panic.
#[cfg(feature = "testing")]
pub async fn sandbox_for_tests() -> Option<Sandbox> {
    let sandbox = Sandbox::new(SandboxConfig::default());
    match sandbox.check().await {
        Ok(()) => Some(sandbox),
        Err(err) if std::env::var("TESSERA_REQUIRE_SANDBOX").as_deref() == Ok("1") => {
            panic!("TESSERA_REQUIRE_SANDBOX=1 but the sandbox is unavailable: {err}")
        }
        Err(err) => {
            eprintln!("skipped: {err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names_the_limit_from_the_evidence() {
        assert_eq!(classify(Some(152), ""), Some(Limit::CpuTime));
        assert_eq!(
            classify(Some(1), "Traceback\nMemoryError\n"),
            Some(Limit::Memory)
        );
        assert_eq!(
            classify(
                Some(0),
                "bash: fork: retry: Resource temporarily unavailable"
            ),
            Some(Limit::Processes)
        );
        assert_eq!(classify(Some(1), "ValueError: nope"), None);
        assert_eq!(classify(Some(0), "MemoryError is a class"), None);
        assert_eq!(classify(None, "MemoryError"), None);
    }

    #[tokio::test]
    async fn output_over_the_cap_is_cut_and_named() {
        let (mut out_w, mut out_r) = tokio::io::duplex(64);
        let (_err_w, mut err_r) = tokio::io::duplex(64);
        drop(_err_w);
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                if out_w.write_all(b"0123456789").await.is_err() {
                    break;
                }
            }
        });
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let ending = collect(&mut out_r, &mut err_r, &mut stdout, &mut stderr, 95).await;
        assert!(matches!(ending, Ending::OutputCap));
        assert_eq!(stdout.len(), 95);
        writer.abort();
    }

    #[test]
    fn languages_parse_with_aliases() {
        assert_eq!(Language::parse("python"), Some(Language::Python));
        assert_eq!(Language::parse("node"), Some(Language::Javascript));
        assert_eq!(Language::parse("sh"), Some(Language::Bash));
        assert_eq!(Language::parse("ruby"), None);
    }

    #[test]
    fn bad_limits_are_refused() {
        let mut config = SandboxConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.limits.max_processes = 1;
        assert!(config.validate().is_err());
        config = SandboxConfig::default();
        config.python_path = "python3".into();
        assert!(config.validate().is_err());
    }
}
