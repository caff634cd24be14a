//! Conversions at the API edge for task boards: wire requests into validated domain values and
//! stored records into wire responses (the board counterpart of `convert.rs`).

use tessera_api as api;
use tessera_domain::board::{
    parse_description, parse_schedule, Assignment, BoardItem, BoardItemPatch, DirEntry, FileMeta,
    ItemStatus, NewBoardItem, Overlap, Schedule, ScheduleKind, WorkspacePath,
};
use tessera_domain::validate::{parse_list, CapabilityTag, Label};
use tessera_domain::{ProjectId, ThreadId, Timestamp, ValidationError};
use tessera_runtime::boards::Delegation;

/// Most capability tags on an item or a delegation.
const MAX_TAGS: usize = 20;

fn ts(t: Timestamp) -> String {
    t.to_rfc3339()
}

fn tags(raw: Option<Vec<String>>) -> Result<Vec<CapabilityTag>, ValidationError> {
    parse_list(
        "capability_tags",
        raw.unwrap_or_default(),
        MAX_TAGS,
        CapabilityTag::parse,
    )
}

pub(crate) fn schedule(
    field: &str,
    s: api::ScheduleSpec,
    now: Timestamp,
) -> Result<Schedule, ValidationError> {
    let kind = match s.schedule_kind {
        api::ScheduleKind::Once => "ONCE",
        api::ScheduleKind::Interval => "INTERVAL",
    };
    let overlap = s.overlap.map(|o| match o {
        api::OverlapPolicy::Skip => "skip",
        api::OverlapPolicy::Parallel => "parallel",
    });
    parse_schedule(
        field,
        kind,
        s.next_run_at.as_deref(),
        s.interval_seconds,
        overlap,
        now,
    )
}

/// `Err(None)` when `assigned_thread_id` is not even a thread id (answered as not found).
pub(crate) fn new_item(
    project_id: ProjectId,
    req: api::CreateBoardItemRequest,
) -> Result<NewBoardItem, ValidationError> {
    let assignment = match req.assigned_thread_id {
        Some(raw) => Assignment::Thread(
            ThreadId::parse(&raw)
                .map_err(|_| ValidationError::new("assigned_thread_id", "is not a thread id"))?,
        ),
        None => Assignment::NewThread {
            agent: None,
            context_of: None,
        },
    };
    Ok(NewBoardItem {
        project_id,
        title: Label::parse("title", req.title)?,
        description: parse_description("description", req.description)?,
        assignment,
        capability_tags: tags(req.capability_tags)?,
        schedule: req
            .schedule
            .map(|s| schedule("schedule", s, Timestamp::now()))
            .transpose()?,
        parent_item_id: None,
    })
}

pub(crate) fn item_patch(
    req: api::UpdateBoardItemRequest,
) -> Result<BoardItemPatch, ValidationError> {
    Ok(BoardItemPatch {
        title: req.title.map(|t| Label::parse("title", t)).transpose()?,
        description: req
            .description
            .map(|d| parse_description("description", d))
            .transpose()?,
        capability_tags: req.capability_tags.map(|t| tags(Some(t))).transpose()?,
        schedule: req
            .schedule
            .map(|s| {
                s.map(|s| schedule("schedule", s, Timestamp::now()))
                    .transpose()
            })
            .transpose()?,
        paused: req.paused,
    })
}

pub(crate) fn delegation(
    req: api::DelegateProjectTaskRequest,
) -> Result<Delegation, ValidationError> {
    let title = Label::parse("title", req.title)?;
    let description = match req.description {
        Some(d) => parse_description("description", d)?,
        None => title.as_str().to_owned(),
    };
    Ok(Delegation {
        target_lane_thread_id: ThreadId::parse(&req.target_lane_thread_id)
            .map_err(|_| ValidationError::new("target_lane_thread_id", "is not a thread id"))?,
        title,
        description,
        capability_tags: tags(req.capability_tags)?,
    })
}

pub(crate) fn item_status(s: api::BoardItemStatus) -> ItemStatus {
    match s {
        api::BoardItemStatus::Scheduled => ItemStatus::Scheduled,
        api::BoardItemStatus::Paused => ItemStatus::Paused,
        api::BoardItemStatus::Running => ItemStatus::Running,
        api::BoardItemStatus::Completed => ItemStatus::Completed,
        api::BoardItemStatus::Failed => ItemStatus::Failed,
        api::BoardItemStatus::Cancelled => ItemStatus::Cancelled,
        api::BoardItemStatus::Archived => ItemStatus::Archived,
    }
}

fn wire_status(s: ItemStatus) -> api::BoardItemStatus {
    match s {
        ItemStatus::Scheduled => api::BoardItemStatus::Scheduled,
        ItemStatus::Paused => api::BoardItemStatus::Paused,
        ItemStatus::Running => api::BoardItemStatus::Running,
        ItemStatus::Completed => api::BoardItemStatus::Completed,
        ItemStatus::Failed => api::BoardItemStatus::Failed,
        ItemStatus::Cancelled => api::BoardItemStatus::Cancelled,
        ItemStatus::Archived => api::BoardItemStatus::Archived,
    }
}

pub(crate) fn item(i: BoardItem) -> api::BoardItem {
    api::BoardItem {
        id: i.id.into_string(),
        project_id: i.project_id.into_string(),
        task_key: i.task_key,
        title: i.title,
        description: i.description,
        status: wire_status(i.status),
        assigned_thread_id: i.assigned_thread_id.into_string(),
        assigned_agent_id: i.assigned_agent_id.into_string(),
        capability_tags: i.capability_tags,
        schedule: i.schedule.map(|s| api::BoardItemSchedule {
            schedule_kind: match s.kind() {
                ScheduleKind::Once => api::ScheduleKind::Once,
                ScheduleKind::Interval => api::ScheduleKind::Interval,
            },
            first_run_at: ts(s.next_run_at()),
            interval_seconds: s.interval_seconds(),
            overlap: match s.overlap() {
                Overlap::Skip => api::OverlapPolicy::Skip,
                Overlap::Parallel => api::OverlapPolicy::Parallel,
            },
        }),
        next_run_at: i.next_run_at.map(ts),
        parent_item_id: i.parent_item_id.map(|p| p.into_string()),
        last_run: i.last_run.map(|r| api::BoardItemRun {
            run_id: r.run_id.into_string(),
            thread_id: r.thread_id.into_string(),
            status: r.status.map(crate::convert::run_status),
            slot_at: ts(r.slot_at),
            result: r.result,
        }),
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        archived_at: i.archived_at.map(ts),
    }
}

pub(crate) fn file(f: FileMeta) -> api::WorkspaceFile {
    api::WorkspaceFile {
        name: f.path.file_name().to_owned(),
        path: f.path.to_string(),
        size: f.size,
        mime_type: f.mime_type,
        sha256: f.sha256,
        created_at: ts(f.created_at),
        updated_at: ts(f.updated_at),
    }
}

pub(crate) fn listing(dir: &WorkspacePath, entries: Vec<DirEntry>) -> api::FilesystemListing {
    api::FilesystemListing {
        path: dir.to_string(),
        entries: entries
            .into_iter()
            .map(|e| match e {
                DirEntry::Directory { path } => api::FilesystemEntry {
                    name: path.file_name().to_owned(),
                    path: path.to_string(),
                    entry_type: api::FilesystemEntryType::Directory,
                    size: None,
                    mime_type: None,
                    updated_at: None,
                },
                DirEntry::File(f) => api::FilesystemEntry {
                    name: f.path.file_name().to_owned(),
                    path: f.path.to_string(),
                    entry_type: api::FilesystemEntryType::File,
                    size: Some(f.size),
                    mime_type: Some(f.mime_type),
                    updated_at: Some(ts(f.updated_at)),
                },
            })
            .collect(),
    }
}
