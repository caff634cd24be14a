//! The internal `execute_code {language, code, stdin?}` tool: runs code in the sandbox
//! ([`crate::sandbox`]) with the running task's workspace mounted at `/workspace`.
//!
//! The workspace lives in the database, so a call materializes it into a private directory,
//! runs the code there, then writes back every file the code created or changed (compared by
//! SHA-256) through the store, within the workspace limits. What is not written back is listed
//! in the result with the reason (over the size limit, a path the workspace refuses, a symlink
//! or special file). Deletions are *not* applied: the workspace has no delete operation for
//! tools, so a file the code removed stays in the workspace and is listed as
//! `deleted_not_synced`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_domain::board::{guess_mime, WorkspaceId, WorkspacePath, MAX_DEPTH};
use tessera_domain::thread::ToolCall;
use tokio::io::AsyncReadExt;

use crate::board_tools::run_workspace;
use crate::boards::FileWriter;
use crate::provider::ToolSpec;
use crate::sandbox::{CodeRun, Language, Sandbox, SandboxError, SandboxLimits};
use crate::tools::{ToolContext, ToolExecutor, ToolOutput};

pub const EXECUTE_CODE: &str = "execute_code";

/// Longest accepted source, in bytes.
pub const MAX_CODE_BYTES: usize = 256 * 1024;
/// Longest accepted stdin, in bytes.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// How `execute_code` uses the workspace and the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeToolSettings {
    /// Whether runs may use the network (`sandbox.execute_code_network`).
    pub network: bool,
    /// Largest workspace file mounted or written back (the workspace's upload limit).
    pub max_file_bytes: u64,
    /// Most files mounted, and most files written back, per call.
    pub max_files: u32,
    /// Most bytes mounted per call.
    pub max_mounted_bytes: u64,
}

impl Default for CodeToolSettings {
    fn default() -> Self {
        Self {
            network: false,
            max_file_bytes: 25 * 1024 * 1024,
            max_files: 1000,
            max_mounted_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The `execute_code` tool.
pub struct CodeTools {
    sandbox: Arc<Sandbox>,
    settings: CodeToolSettings,
}

impl CodeTools {
    pub fn new(sandbox: Arc<Sandbox>, settings: CodeToolSettings) -> Self {
        Self { sandbox, settings }
    }

    /// The limits of a CodeRunner tool: each limit it sets, capped at the operator's
    /// (`[sandbox]`); the operator's for those it leaves out. A tool can only tighten them.
    pub fn limits_for(&self, tool: &tessera_domain::tool::CodeLimits) -> SandboxLimits {
        let base = self.sandbox.config().limits;
        let cap = |set: Option<u64>, max: u64| set.map_or(max, |v| v.min(max));
        SandboxLimits {
            cpu_seconds: cap(tool.cpu_seconds.map(u64::from), base.cpu_seconds),
            memory_bytes: cap(
                tool.memory_mb.map(|mb| u64::from(mb) * 1024 * 1024),
                base.memory_bytes,
            ),
            max_processes: cap(tool.max_processes.map(u64::from), base.max_processes),
            output_bytes: cap(tool.max_output_bytes, base.output_bytes),
            wall_clock_seconds: cap(tool.wall_seconds.map(u64::from), base.wall_clock_seconds),
            ..base
        }
    }
}

#[async_trait]
impl ToolExecutor for CodeTools {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: EXECUTE_CODE.to_owned(),
            description: "Run python, javascript (node) or bash code in a sandbox. The task \
                workspace is the working directory (/workspace); files the code creates or \
                changes there are saved to the workspace. `stdin` is passed on standard input \
                (a string as is, other JSON serialized). Returns stdout, stderr, the exit code \
                and which limit (cpu_time, memory, processes, output, wall_clock) was hit."
                .to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": ["python", "javascript", "bash"]},
                    "code": {"type": "string", "description": "The program (at most 256 KiB)."},
                    "stdin": {"description": "Standard input: a string, or JSON to serialize."}
                },
                "required": ["language", "code"],
                "additionalProperties": false
            }),
        }]
    }

    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        if call.name != EXECUTE_CODE {
            return ToolOutput::error(format!("unknown tool `{}`", call.name));
        }
        match self.execute_code(ctx, &call.arguments).await {
            Ok(value) => ToolOutput {
                result: Ok(value.to_string()),
                events: Vec::new(),
            },
            Err(message) => ToolOutput::error(message),
        }
    }
}

/// The arguments, validated.
struct Request {
    language: Language,
    code: String,
    stdin: Vec<u8>,
}

fn parse(args: &serde_json::Value) -> Result<Request, String> {
    let obj = args
        .as_object()
        .ok_or("execute_code needs {\"language\", \"code\", \"stdin\"?}")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "language" | "code" | "stdin") {
            return Err(format!("{key}: is not an argument of execute_code"));
        }
    }
    let language = obj
        .get("language")
        .and_then(|l| l.as_str())
        .and_then(Language::parse)
        .ok_or("language: must be one of python, javascript, bash")?;
    let code = obj
        .get("code")
        .and_then(|c| c.as_str())
        .ok_or("code: required string")?;
    if code.len() > MAX_CODE_BYTES {
        return Err(format!("code: must be at most {MAX_CODE_BYTES} bytes"));
    }
    let stdin = match obj.get("stdin") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    };
    if stdin.len() > MAX_STDIN_BYTES {
        return Err(format!("stdin: must be at most {MAX_STDIN_BYTES} bytes"));
    }
    Ok(Request {
        language,
        code: code.to_owned(),
        stdin,
    })
}

/// What happened to the workspace files.
#[derive(Default)]
struct FileReport {
    written: Vec<serde_json::Value>,
    skipped: Vec<serde_json::Value>,
    not_mounted: Vec<serde_json::Value>,
    deleted_not_synced: Vec<String>,
}

impl FileReport {
    fn skip(&mut self, path: &str, reason: impl Into<String>) {
        self.skipped
            .push(json!({"path": path, "reason": reason.into()}));
    }
}

impl CodeTools {
    async fn execute_code(
        &self,
        ctx: &ToolContext<'_>,
        args: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let request = parse(args)?;
        self.run_in_workspace(
            ctx,
            request.language,
            request.code,
            request.stdin,
            self.settings.network,
            self.sandbox.config().limits,
        )
        .await
    }

    /// Runs `code` in the sandbox with the running task's workspace mounted at `/workspace`
    /// and written back afterwards; the result is the JSON `execute_code` returns (exit code,
    /// limit, stdout, stderr, files written / skipped / not mounted / deleted). `Err` is text
    /// for the model: the sandbox is unavailable (fail closed) or the workspace unreachable.
    /// CodeRunner tools call this with their fixed code, the model's JSON input as `stdin`
    /// and their own network setting.
    pub async fn run_in_workspace(
        &self,
        ctx: &ToolContext<'_>,
        language: Language,
        code: String,
        stdin: Vec<u8>,
        network: bool,
        limits: SandboxLimits,
    ) -> Result<serde_json::Value, String> {
        let workspace = run_workspace(ctx).await?;
        let dir = self
            .sandbox
            .scratch_dir()
            .map_err(|e| format!("cannot prepare the workspace: {e}"))?;
        let root = dir.path().join("workspace");
        std::fs::create_dir(&root).map_err(|e| format!("cannot prepare the workspace: {e}"))?;
        let mut report = FileReport::default();
        let mounted = self
            .materialize(ctx, &workspace, &root, &mut report)
            .await?;
        let outcome = self
            .sandbox
            .run(CodeRun {
                language,
                code,
                stdin,
                workspace: Some(root.clone()),
                network,
                limits,
            })
            .await
            .map_err(|e| match e {
                SandboxError::Unavailable(_) => e.to_string(),
                SandboxError::Io(e) => format!("the sandbox failed: {e}"),
            })?;
        self.write_back(ctx, &workspace, &root, &mounted, &mut report)
            .await?;
        let mut result = json!({
            "exit_code": outcome.exit_code,
            "limit": outcome.limit.map(|l| l.as_str()),
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "output_truncated": outcome.output_truncated,
            "files_written": report.written,
        });
        let extra = [
            ("files_skipped", json!(report.skipped)),
            ("files_not_mounted", json!(report.not_mounted)),
            ("deleted_not_synced", json!(report.deleted_not_synced)),
        ];
        for (key, value) in extra {
            if value.as_array().is_some_and(|a| !a.is_empty()) {
                result[key] = value;
            }
        }
        if !outcome.sandboxed {
            result["sandboxed"] = json!(false);
        }
        Ok(result)
    }

    /// Writes the workspace's files under `root`; returns each mounted path's SHA-256.
    async fn materialize(
        &self,
        ctx: &ToolContext<'_>,
        workspace: &WorkspaceId,
        root: &Path,
        report: &mut FileReport,
    ) -> Result<HashMap<String, String>, String> {
        let s = &self.settings;
        let files = ctx
            .store
            .list_files(
                ctx.scope,
                workspace,
                &WorkspacePath::root(),
                s.max_files + 1,
            )
            .await
            .map_err(|e| format!("cannot list the workspace: {e}"))?;
        let mut mounted = HashMap::new();
        let mut total = 0u64;
        for (i, meta) in files.iter().enumerate() {
            let path = meta.path.as_str();
            let reason = if i as u64 >= u64::from(s.max_files) {
                Some(format!("the workspace has more than {} files", s.max_files))
            } else if meta.size > s.max_file_bytes {
                Some(format!("{} bytes exceed {}", meta.size, s.max_file_bytes))
            } else if total + meta.size > s.max_mounted_bytes {
                Some(format!("more than {} bytes in all", s.max_mounted_bytes))
            } else {
                None
            };
            if let Some(reason) = reason {
                report
                    .not_mounted
                    .push(json!({"path": path, "reason": reason}));
                continue;
            }
            let target = root.join(path.trim_start_matches('/'));
            let written = async {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let mut file = tokio::fs::File::create(&target).await?;
                for chunk in 0..meta.chunks {
                    let bytes = ctx
                        .store
                        .read_blob_chunk(ctx.scope, &meta.blob_id, chunk)
                        .await
                        .map_err(std::io::Error::other)?;
                    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            match written.await {
                Ok(()) => {
                    total += meta.size;
                    mounted.insert(path.to_owned(), meta.sha256.clone());
                }
                Err(e) => report
                    .not_mounted
                    .push(json!({"path": path, "reason": e.to_string()})),
            }
        }
        Ok(mounted)
    }

    /// Stores the files under `root` that are new or differ from what was mounted.
    async fn write_back(
        &self,
        ctx: &ToolContext<'_>,
        workspace: &WorkspaceId,
        root: &Path,
        mounted: &HashMap<String, String>,
        report: &mut FileReport,
    ) -> Result<(), String> {
        let root_owned = root.to_owned();
        let (files, odd) = tokio::task::spawn_blocking(move || walk(&root_owned))
            .await
            .map_err(|e| format!("cannot read the workspace back: {e}"))?;
        for (path, reason) in odd {
            report.skip(&path, reason);
        }
        let mut seen = std::collections::HashSet::new();
        let mut stored = 0u32;
        for (raw, disk) in files {
            seen.insert(raw.clone());
            let path = match WorkspacePath::parse_file("path", &raw) {
                Ok(p) if p.as_str() == raw => p,
                Ok(_) => {
                    report.skip(&raw, "not a normalized workspace path");
                    continue;
                }
                Err(e) => {
                    report.skip(&raw, e.message.to_string());
                    continue;
                }
            };
            let (size, sha256) = match digest(&disk).await {
                Ok(d) => d,
                Err(e) => {
                    report.skip(&raw, format!("cannot read it: {e}"));
                    continue;
                }
            };
            if mounted.get(&raw) == Some(&sha256) {
                continue;
            }
            if size > self.settings.max_file_bytes {
                report.skip(
                    &raw,
                    format!(
                        "{size} bytes exceed the workspace file limit of {}",
                        self.settings.max_file_bytes
                    ),
                );
                continue;
            }
            if stored >= self.settings.max_files {
                report.skip(
                    &raw,
                    format!("more than {} files written", self.settings.max_files),
                );
                continue;
            }
            match self.store_file(ctx, workspace, &disk, path).await {
                Ok(size) => {
                    stored += 1;
                    report.written.push(json!({"path": raw, "size": size}));
                }
                Err(e) => report.skip(&raw, e),
            }
        }
        let mut deleted: Vec<String> = mounted
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        deleted.sort();
        report.deleted_not_synced = deleted;
        Ok(())
    }

    async fn store_file(
        &self,
        ctx: &ToolContext<'_>,
        workspace: &WorkspaceId,
        disk: &Path,
        path: WorkspacePath,
    ) -> Result<u64, String> {
        let mut file = open_regular(disk).await.map_err(|e| e.to_string())?;
        let mut writer = FileWriter::new(ctx.store, ctx.scope, self.settings.max_file_bytes);
        let mut buf = vec![0u8; tessera_store::CHUNK_BYTES];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    writer.abort().await;
                    return Err(format!("cannot read it: {e}"));
                }
            };
            if let Err(e) = writer.push(&buf[..n]).await {
                writer.abort().await;
                return Err(e.to_string());
            }
        }
        let mime = guess_mime(&path).to_owned();
        writer
            .finish(workspace, path, mime)
            .await
            .map(|meta| meta.size)
            .map_err(|e| format!("cannot store it: {e}"))
    }
}

/// Opens a regular file without following a symlink at its last component.
async fn open_regular(path: &Path) -> std::io::Result<tokio::fs::File> {
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(path)
        .await?;
    if !file.metadata().await?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

async fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = open_regular(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// A path left out, and why.
type Skipped = (String, String);

/// The regular files below `root` as (`/workspace path`, disk path), never following symlinks;
/// and what was not a regular file or directory, with the reason.
fn walk(root: &Path) -> (Vec<(String, PathBuf)>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut odd = Vec::new();
    let mut stack = vec![(root.to_owned(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            odd.push((format!("{prefix}/"), "cannot read the directory".to_owned()));
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}/{name}");
            match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) if meta.is_dir() => {
                    if depth + 1 >= MAX_DEPTH {
                        odd.push((rel, format!("nested deeper than {MAX_DEPTH}")));
                    } else {
                        stack.push((entry.path(), rel, depth + 1));
                    }
                }
                Ok(meta) if meta.is_file() => files.push((rel, entry.path())),
                Ok(meta) if meta.file_type().is_symlink() => {
                    odd.push((rel, "symbolic links are not saved".to_owned()))
                }
                Ok(_) => odd.push((rel, "not a regular file".to_owned())),
                Err(e) => odd.push((rel, e.to_string())),
            }
        }
    }
    files.sort();
    (files, odd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_validated() {
        let ok = parse(&json!({"language": "python", "code": "print(1)", "stdin": {"a": 1}}))
            .map(|r| (r.language, r.stdin))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok, (Language::Python, b"{\"a\":1}".to_vec()));
        let text = parse(&json!({"language": "bash", "code": "cat", "stdin": "raw"}));
        assert_eq!(text.map(|r| r.stdin).ok(), Some(b"raw".to_vec()));
        for (args, field) in [
            (json!({"code": "x"}), "language"),
            (json!({"language": "ruby", "code": "x"}), "language"),
            (json!({"language": "python"}), "code"),
            (json!({"language": "python", "code": "x", "env": {}}), "env"),
            (json!("python"), "execute_code"),
        ] {
            match parse(&args) {
                Err(e) => assert!(e.contains(field), "{e}"),
                Ok(_) => panic!("{args} accepted"),
            }
        }
        let long = "x".repeat(MAX_CODE_BYTES + 1);
        assert!(parse(&json!({"language": "python", "code": long})).is_err());
    }

    #[test]
    fn walk_reports_symlinks_and_keeps_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("a/b/c.txt"), "c").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("top.txt"), "t").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/etc/hostname", root.join("link"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (files, odd) = walk(root);
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["/a/b/c.txt", "/top.txt"]);
        assert_eq!(
            odd,
            [(
                "/link".to_owned(),
                "symbolic links are not saved".to_owned()
            )]
        );
    }
}
