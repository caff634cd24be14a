//! Task boards: board items, their schedules, delegation and task workspace files.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::types::{double_option, RunStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ScheduleKind {
    /// Runs at `next_run_at`, then stops.
    #[serde(rename = "ONCE")]
    Once,
    /// Runs at `next_run_at`, then every `interval_seconds`.
    #[serde(rename = "INTERVAL")]
    Interval,
}

/// What a slot does while the item's previous run is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// The slot is recorded as skipped.
    #[default]
    Skip,
    /// The slot starts a run anyway (it queues behind the open one on the item's thread).
    Parallel,
}

/// A schedule as sent by clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub schedule_kind: ScheduleKind,
    /// RFC 3339 time of the first run. Required for `ONCE`; `INTERVAL` starts now without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-12-01T09:00:00Z")]
    pub next_run_at: Option<String>,
    /// `INTERVAL` only: at least 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// `skip` (default) or `parallel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapPolicy>,
}

/// A board item's schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardItemSchedule {
    pub schedule_kind: ScheduleKind,
    /// The first slot.
    pub first_run_at: String,
    #[serde(default)]
    pub interval_seconds: Option<u32>,
    pub overlap: OverlapPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoardItemStatus {
    /// Waiting for its next slot.
    Scheduled,
    Paused,
    /// Its last run is queued or executing.
    Running,
    Completed,
    Failed,
    Cancelled,
    Archived,
}

/// The run an item started last, and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardItemRun {
    pub run_id: String,
    pub thread_id: String,
    /// Absent while the run is being started.
    #[serde(default)]
    pub status: Option<RunStatus>,
    /// The slot that started it.
    pub slot_at: String,
    /// The run's last assistant message, once it has one.
    #[serde(default)]
    pub result: Option<String>,
}

/// A task of an actor project: its description is what the agent executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardItem {
    pub id: String,
    pub project_id: String,
    /// `TASK-n`, unique within the project.
    #[schema(example = "TASK-1")]
    pub task_key: String,
    pub title: String,
    pub description: String,
    pub status: BoardItemStatus,
    pub assigned_thread_id: String,
    pub assigned_agent_id: String,
    pub capability_tags: Vec<String>,
    #[serde(default)]
    pub schedule: Option<BoardItemSchedule>,
    /// The pending slot, if any.
    #[serde(default)]
    pub next_run_at: Option<String>,
    /// The item that delegated this one.
    #[serde(default)]
    pub parent_item_id: Option<String>,
    #[serde(default)]
    pub last_run: Option<BoardItemRun>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub archived_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBoardItemRequest {
    /// 1-200 characters.
    #[schema(example = "Daily report")]
    pub title: String,
    /// The task the agent executes: 1-20 000 characters.
    pub description: String,
    /// Without one, the item executes once, now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// A thread of the project to execute on; without one the item gets its own execution
    /// thread (run by the project's agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
}

/// Changes what is sent; `schedule: null` removes the schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBoardItemRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ScheduleSpec>, nullable)]
    pub schedule: Option<Option<ScheduleSpec>>,
    /// `true` pauses the schedule, `false` resumes it (a slot missed meanwhile fires once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListBoardItemsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BoardItemStatus>,
    /// `false` (default): items not archived; `true`: archived ones only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A page of board items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardItemList {
    pub data: Vec<BoardItem>,
    /// More items exist beyond this page in the direction of travel.
    pub has_more: bool,
    /// Id of the first item: pass as `before` for the previous page.
    #[serde(default)]
    pub first_id: Option<String>,
    /// Id of the last item: pass as `after` for the next page.
    #[serde(default)]
    pub last_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegateProjectTaskRequest {
    /// An execution thread of the same project.
    pub target_lane_thread_id: String,
    pub title: String,
    /// The task; the title when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Every tag must be among the assigned agent's; empty or omitted matches any agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DelegateProjectTaskResponse {
    pub task_key: String,
    pub board_item_id: String,
    pub assigned_agent_id: String,
}

/// `?path=` of a workspace directory (the root when omitted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesystemDirParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `?path=` of a workspace file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesystemFileParams {
    /// `/out/report.pdf`; `..`, NUL, backslashes and paths over 1024 bytes are refused.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilesystemEntryType {
    File,
    Directory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilesystemEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub entry_type: FilesystemEntryType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A directory of a workspace: its direct children, directories first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilesystemListing {
    pub path: String,
    pub entries: Vec<FilesystemEntry>,
}

/// A workspace file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceFile {
    pub path: String,
    pub name: String,
    pub size: u64,
    pub mime_type: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub created_at: String,
    pub updated_at: String,
}
