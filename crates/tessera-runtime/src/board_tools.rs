//! Internal tools of task boards: `list_files`, `read_file`, `write_file` (the running task's
//! workspace), `delegate_task` and `schedule_task`; and [`ToolChain`], which offers several
//! executors' tools as one.
//!
//! The workspace of a run is its board item's when the run was started by one, else its
//! thread's.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tessera_domain::board::{
    guess_mime, list_dir, parse_description, Assignment, DirEntry, NewBoardItem, WorkspaceId,
    WorkspacePath,
};
use tessera_domain::thread::ToolCall;
use tessera_domain::validate::{parse_list, CapabilityTag, Label};
use tessera_domain::{BoardItemId, ProjectId, ThreadId, Timestamp};
use tessera_store::{Conflict, Idempotency, StoreError};

use crate::board_scheduler::BoardSchedulerHandle;
use crate::boards::{self, BoardError, Delegation, FileWriter};
use crate::provider::ToolSpec;
use crate::tools::{ToolContext, ToolExecutor, ToolOutput};

pub const LIST_FILES: &str = "list_files";
pub const READ_FILE: &str = "read_file";
pub const WRITE_FILE: &str = "write_file";
pub const DELEGATE_TASK: &str = "delegate_task";
pub const SCHEDULE_TASK: &str = "schedule_task";

/// Largest file `read_file` returns to the model.
pub const READ_LIMIT: u64 = 256 * 1024;
/// Largest content `write_file` accepts.
pub const WRITE_LIMIT: u64 = 1024 * 1024;
/// Most entries `list_files` returns.
const LIST_LIMIT: u32 = 500;

/// Offers the tools of several executors; a call goes to the first that offers its name.
///
/// An executor's tools are fixed once it is built, so the chain collects their specs, and which
/// executor takes each name, when it is made: offering them and routing a call ask no executor.
/// (A call's arguments are still checked by the executor taking it, against its own specs.)
pub struct ToolChain {
    executors: Vec<Arc<dyn ToolExecutor>>,
    specs: Vec<ToolSpec>,
    /// The executor (index into `executors`) that takes each tool name: the first offering it.
    owners: HashMap<String, usize>,
}

impl ToolChain {
    pub fn new(executors: Vec<Arc<dyn ToolExecutor>>) -> Self {
        let mut specs = Vec::new();
        let mut owners = HashMap::new();
        for (i, executor) in executors.iter().enumerate() {
            for spec in executor.specs() {
                owners.entry(spec.name.clone()).or_insert(i);
                specs.push(spec);
            }
        }
        Self {
            executors,
            specs,
            owners,
        }
    }

    fn owner(&self, tool: &str) -> Option<&Arc<dyn ToolExecutor>> {
        self.owners.get(tool).map(|&i| &self.executors[i])
    }
}

#[async_trait]
impl ToolExecutor for ToolChain {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.clone()
    }

    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        match self.owner(&call.name) {
            Some(executor) => executor.execute(ctx, call).await,
            None => ToolOutput::error(format!("unknown tool `{}`", call.name)),
        }
    }

    /// The executor that takes the call checks it.
    fn check(&self, call: &ToolCall) -> Result<(), String> {
        match self.owner(&call.name) {
            Some(executor) => executor.check(call),
            None => Err(format!("unknown tool `{}`", call.name)),
        }
    }

    fn requiring_confirmation(&self) -> Vec<String> {
        self.executors
            .iter()
            .flat_map(|e| e.requiring_confirmation())
            .collect()
    }

    fn timeout(&self, tool: &str) -> Option<std::time::Duration> {
        self.executors.iter().find_map(|e| e.timeout(tool))
    }

    fn confirmation_expiry(&self, tool: &str) -> Option<u32> {
        self.executors
            .iter()
            .find_map(|e| e.confirmation_expiry(tool))
    }
}

/// The board tools. New items wake this node's board scheduler.
pub struct BoardTools {
    board_scheduler: BoardSchedulerHandle,
}

impl BoardTools {
    pub fn new(board_scheduler: BoardSchedulerHandle) -> Self {
        Self { board_scheduler }
    }
}

/// The workspace of the running task (also `execute_code`'s).
pub(crate) async fn run_workspace(ctx: &ToolContext<'_>) -> Result<WorkspaceId, String> {
    match ctx.store.board_item_of_run(ctx.scope, ctx.run_id).await {
        Ok(Some((_, item))) => Ok(WorkspaceId::Item(item)),
        Ok(None) => Ok(WorkspaceId::Thread(ctx.thread_id.clone())),
        Err(e) => Err(format!("cannot find the workspace: {e}")),
    }
}

fn ok(value: serde_json::Value) -> ToolOutput {
    ToolOutput {
        result: Ok(value.to_string()),
        events: Vec::new(),
    }
}

fn path_arg(args: &serde_json::Value, dir: bool) -> Result<WorkspacePath, String> {
    match args.get("path") {
        None | Some(serde_json::Value::Null) if dir => Ok(WorkspacePath::root()),
        Some(serde_json::Value::String(raw)) if dir => {
            WorkspacePath::parse_dir("path", raw).map_err(|e| e.to_string())
        }
        Some(serde_json::Value::String(raw)) => {
            WorkspacePath::parse_file("path", raw).map_err(|e| e.to_string())
        }
        _ => Err("path: must be a string".to_owned()),
    }
}

fn str_arg<'a>(args: &'a serde_json::Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{name}: required string"))
}

fn tags_arg(args: &serde_json::Value) -> Result<Vec<CapabilityTag>, String> {
    let raw: Vec<String> = match args.get("capability_tags") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "capability_tags: must be a list of strings".to_owned())?,
    };
    parse_list("capability_tags", raw, 20, |f, v| {
        CapabilityTag::parse(f, v)
    })
    .map_err(|e| e.to_string())
}

fn board_error(err: BoardError) -> String {
    match err {
        BoardError::Invalid(e) => e.to_string(),
        BoardError::Store(StoreError::NotFound { entity, field, .. }) => match field {
            Some(f) => format!("{f}: no such {entity:?} in this project"),
            None => format!("no such {entity:?}"),
        },
        BoardError::Store(StoreError::Conflict(c)) => format!("refused: {c:?}"),
        BoardError::Store(e) => format!("failed: {e}"),
    }
}

impl BoardTools {
    async fn workspace(&self, ctx: &ToolContext<'_>) -> Result<WorkspaceId, String> {
        run_workspace(ctx).await
    }

    async fn project_and_item(
        &self,
        ctx: &ToolContext<'_>,
    ) -> Result<(ProjectId, Option<BoardItemId>), String> {
        if let Ok(Some((project, item))) = ctx.store.board_item_of_run(ctx.scope, ctx.run_id).await
        {
            return Ok((project, Some(item)));
        }
        let thread = ctx
            .store
            .get_thread(ctx.scope, ctx.thread_id)
            .await
            .map_err(|e| format!("cannot read the thread: {e}"))?;
        Ok((thread.project_id, None))
    }

    async fn list_files(&self, ctx: &ToolContext<'_>, args: &serde_json::Value) -> ToolOutput {
        let run = async {
            let dir = path_arg(args, true)?;
            let ws = self.workspace(ctx).await?;
            let files = ctx
                .store
                .list_files(ctx.scope, &ws, &dir, LIST_LIMIT)
                .await
                .map_err(|e| format!("cannot list files: {e}"))?;
            let entries: Vec<serde_json::Value> = list_dir(&dir, files)
                .into_iter()
                .map(|e| match e {
                    DirEntry::Directory { path } => json!({"path": path.as_str(), "type": "directory"}),
                    DirEntry::File(f) => json!({"path": f.path.as_str(), "type": "file", "size": f.size, "mime_type": f.mime_type}),
                })
                .collect();
            Ok::<_, String>(json!({"path": dir.as_str(), "entries": entries}))
        };
        match run.await {
            Ok(v) => ok(v),
            Err(e) => ToolOutput::error(e),
        }
    }

    async fn read_file(&self, ctx: &ToolContext<'_>, args: &serde_json::Value) -> ToolOutput {
        let run = async {
            let path = path_arg(args, false)?;
            let ws = self.workspace(ctx).await?;
            let meta = ctx
                .store
                .get_file(ctx.scope, &ws, &path)
                .await
                .map_err(|_| format!("{path}: no such file"))?;
            if meta.size > READ_LIMIT {
                return Err(format!(
                    "{path} has {} bytes; read_file returns at most {READ_LIMIT}",
                    meta.size
                ));
            }
            let mut bytes = Vec::with_capacity(meta.size as usize);
            for i in 0..meta.chunks {
                let chunk = ctx
                    .store
                    .read_blob_chunk(ctx.scope, &meta.blob_id, i)
                    .await
                    .map_err(|e| format!("cannot read {path}: {e}"))?;
                bytes.extend_from_slice(&chunk);
            }
            String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))
        };
        match run.await {
            Ok(text) => ToolOutput {
                result: Ok(text),
                events: Vec::new(),
            },
            Err(e) => ToolOutput::error(e),
        }
    }

    async fn write_file(&self, ctx: &ToolContext<'_>, args: &serde_json::Value) -> ToolOutput {
        let run = async {
            let path = path_arg(args, false)?;
            let content = str_arg(args, "content")?;
            let ws = self.workspace(ctx).await?;
            let mut writer = FileWriter::new(ctx.store, ctx.scope, WRITE_LIMIT);
            if let Err(e) = writer.push(content.as_bytes()).await {
                writer.abort().await;
                return Err(format!("cannot write {path}: {e}"));
            }
            let mime = guess_mime(&path).to_owned();
            let meta = writer.finish(&ws, path, mime).await.map_err(|e| match e {
                StoreError::Conflict(Conflict::PathIsDirectory) => {
                    "cannot write the file: the path is a directory (files lie below it)".to_owned()
                }
                StoreError::Conflict(Conflict::PathUnderFile) => {
                    "cannot write the file: one of the path's parent directories is a file"
                        .to_owned()
                }
                other => format!("cannot write the file: {other}"),
            })?;
            Ok::<_, String>(
                json!({"path": meta.path.as_str(), "size": meta.size, "sha256": meta.sha256}),
            )
        };
        match run.await {
            Ok(v) => ok(v),
            Err(e) => ToolOutput::error(e),
        }
    }

    async fn delegate_task(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        let args = &call.arguments;
        let run = async {
            let target = ThreadId::parse(str_arg(args, "target_lane_thread_id")?)
                .map_err(|_| "target_lane_thread_id: not a thread id".to_owned())?;
            let title =
                Label::parse("title", str_arg(args, "title")?).map_err(|e| e.to_string())?;
            let description = match args.get("description").and_then(|d| d.as_str()) {
                Some(d) => {
                    parse_description("description", d.to_owned()).map_err(|e| e.to_string())?
                }
                None => title.as_str().to_owned(),
            };
            let tags = tags_arg(args)?;
            let (project, parent) = self.project_and_item(ctx).await?;
            let item = boards::delegate(
                ctx.store,
                ctx.scope,
                &project,
                Delegation {
                    target_lane_thread_id: target,
                    title,
                    description,
                    capability_tags: tags,
                },
                parent,
                Some(&once_per_call(ctx, call)),
            )
            .await
            .map_err(board_error)?;
            self.board_scheduler.wake();
            Ok::<_, String>(json!({
                "task_key": item.task_key,
                "board_item_id": item.id.as_str(),
                "assigned_agent_id": item.assigned_agent_id.as_str(),
            }))
        };
        match run.await {
            Ok(v) => ok(v),
            Err(e) => ToolOutput::error(e),
        }
    }

    async fn schedule_task(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        let args = &call.arguments;
        let run = async {
            let title =
                Label::parse("title", str_arg(args, "title")?).map_err(|e| e.to_string())?;
            let description =
                parse_description("description", str_arg(args, "description")?.to_owned())
                    .map_err(|e| e.to_string())?;
            let schedule = args
                .get("schedule")
                .ok_or_else(|| "schedule: required".to_owned())
                .and_then(|s| {
                    boards::schedule_from_json("schedule", s, Timestamp::now())
                        .map_err(|e| e.to_string())
                })?;
            let (project, parent) = self.project_and_item(ctx).await?;
            let item = boards::create_item(
                ctx.store,
                ctx.scope,
                &NewBoardItem {
                    project_id: project,
                    title,
                    description,
                    // Scheduled work reports back where it was asked for.
                    assignment: Assignment::Thread(ctx.thread_id.clone()),
                    capability_tags: Vec::new(),
                    schedule: Some(schedule),
                    parent_item_id: parent,
                },
                Some(&once_per_call(ctx, call)),
            )
            .await
            .map_err(board_error)?;
            self.board_scheduler.wake();
            Ok::<_, String>(json!({
                "task_key": item.task_key,
                "board_item_id": item.id.as_str(),
                "next_run_at": item.next_run_at.map(|t| t.to_rfc3339()),
            }))
        };
        match run.await {
            Ok(v) => ok(v),
            Err(e) => ToolOutput::error(e),
        }
    }
}

/// The idempotency key of a tool call that creates a board item: one item per (run, call id),
/// so a run resumed after its node died, repeating a call whose result was not stored, gets
/// the item the first attempt created instead of a second one. (Keys are kept 24 h; a run is
/// resumed within its lease.)
pub fn once_per_call(ctx: &ToolContext<'_>, call: &ToolCall) -> Idempotency {
    use sha2::{Digest, Sha256};
    Idempotency {
        operation: format!("tool_call:{}:{}", call.name, ctx.run_id),
        key: call.id.clone(),
        request_hash: Sha256::digest(call.arguments.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        result: json!({}),
    }
}

fn spec(name: &str, description: &str, parameters: serde_json::Value) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    }
}

#[async_trait]
impl ToolExecutor for BoardTools {
    fn specs(&self) -> Vec<ToolSpec> {
        let schedule = json!({
            "type": "object",
            "properties": {
                "schedule_kind": {"type": "string", "enum": ["ONCE", "INTERVAL"]},
                "next_run_at": {"type": "string", "description": "RFC 3339 time of the first run (required for ONCE)."},
                "interval_seconds": {"type": "integer", "minimum": 60},
                "overlap": {"type": "string", "enum": ["skip", "parallel"]}
            },
            "required": ["schedule_kind"],
            "additionalProperties": false
        });
        vec![
            spec(LIST_FILES, "List a directory of the task workspace.", json!({
                "type": "object",
                "properties": {"path": {"type": "string", "description": "Directory, `/` by default."}},
                "additionalProperties": false
            })),
            spec(READ_FILE, "Read a UTF-8 text file of the task workspace (at most 256 KiB).", json!({
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
                "additionalProperties": false
            })),
            spec(WRITE_FILE, "Create or replace a file of the task workspace (at most 1 MiB of text).", json!({
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
                "additionalProperties": false
            })),
            spec(DELEGATE_TASK, "Delegate a task to an execution lane thread of this project; an agent of the lane with all the capability tags executes it.", json!({
                "type": "object",
                "properties": {
                    "target_lane_thread_id": {"type": "string"},
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "capability_tags": {"type": "array", "items": {"type": "string"}}
                },
                "required": ["target_lane_thread_id", "title"],
                "additionalProperties": false
            })),
            spec(SCHEDULE_TASK, "Schedule a task (its description is executed on this thread at each slot).", json!({
                "type": "object",
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "schedule": schedule},
                "required": ["title", "description", "schedule"],
                "additionalProperties": false
            })),
        ]
    }

    async fn execute(&self, ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        let args = &call.arguments;
        match call.name.as_str() {
            LIST_FILES => self.list_files(ctx, args).await,
            READ_FILE => self.read_file(ctx, args).await,
            WRITE_FILE => self.write_file(ctx, args).await,
            DELEGATE_TASK => self.delegate_task(ctx, call).await,
            SCHEDULE_TASK => self.schedule_task(ctx, call).await,
            other => ToolOutput::error(format!("unknown tool `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Offers `names`, each taking an integer `n`; counts how often it was asked for its specs.
    struct Offers {
        names: &'static [&'static str],
        maximum: i64,
        asked: AtomicUsize,
    }

    impl Offers {
        fn new(names: &'static [&'static str], maximum: i64) -> Arc<Self> {
            Arc::new(Self {
                names,
                maximum,
                asked: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl ToolExecutor for Offers {
        fn specs(&self) -> Vec<ToolSpec> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.names
                .iter()
                .map(|name| ToolSpec {
                    name: (*name).to_owned(),
                    description: format!("{name} of an executor taking n up to {}", self.maximum),
                    parameters: json!({
                        "type": "object",
                        "properties": {"n": {"type": "integer", "maximum": self.maximum}},
                        "required": ["n"]
                    }),
                })
                .collect()
        }

        async fn execute(&self, _ctx: &ToolContext<'_>, _call: &ToolCall) -> ToolOutput {
            ToolOutput::error("not run in these tests")
        }
    }

    fn call(name: &str, n: i64) -> ToolCall {
        ToolCall {
            id: "call_1".to_owned(),
            name: name.to_owned(),
            arguments: json!({ "n": n }),
        }
    }

    #[test]
    fn a_chain_asks_its_executors_once_and_the_first_offer_takes_a_call() {
        let (first, second) = (Offers::new(&["a", "b"], 10), Offers::new(&["b", "c"], 100));
        let chain = ToolChain::new(vec![first.clone(), second.clone()]);
        let names: Vec<String> = chain.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["a", "b", "b", "c"],
            "every executor's specs, in order"
        );
        // `b` is the first executor's: its schema (n up to 10) checks the call.
        assert!(chain.check(&call("b", 5)).is_ok());
        let refused = chain.check(&call("b", 50)).unwrap_err();
        assert!(refused.contains("invalid arguments for `b`"), "{refused}");
        assert!(chain.check(&call("c", 50)).is_ok());
        assert!(chain.check(&call("a", 50)).is_err());
        assert_eq!(
            chain.check(&call("nope", 1)).unwrap_err(),
            "unknown tool `nope`"
        );
        // The chain's own specs ask nobody: the counts are the chain's making (once each) plus
        // the checks, each asking only the executor taking the call (three `first`, one `second`).
        for _ in 0..3 {
            chain.specs();
        }
        assert_eq!(first.asked.load(Ordering::SeqCst), 1 + 3);
        assert_eq!(second.asked.load(Ordering::SeqCst), 1 + 1);
    }
}
