//! Task boards: board items, the pure slot arithmetic of their schedules, and the paths and
//! metadata of task workspaces.
//!
//! A schedule is a sequence of *slots* (instants). Firing a slot is recorded once per
//! `(item, slot)` by the store; this module only decides which slot comes next, so the rules
//! "a missed slot fires once after downtime" and "no slot twice" live here and are
//! property-tested without a database.

use std::fmt;

use crate::thread::RunStatus;
use crate::validate::ValidationError;
use crate::{AgentId, BlobId, BoardItemId, ProjectId, RunId, ThreadId, Timestamp};

/// Shortest interval of an `INTERVAL` schedule.
pub const MIN_INTERVAL_SECONDS: u32 = 60;
/// Longest interval: a year.
pub const MAX_INTERVAL_SECONDS: u32 = 366 * 24 * 3600;
/// A board item's description (the task text) is at most this many characters.
pub const MAX_DESCRIPTION_CHARS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Fires at `next_run_at`, then is done.
    Once,
    /// Fires at `next_run_at`, then every `interval_seconds`.
    Interval,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "ONCE",
            Self::Interval => "INTERVAL",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ONCE" => Some(Self::Once),
            "INTERVAL" => Some(Self::Interval),
            _ => None,
        }
    }
}

/// What a slot does while the item's previous run is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// The slot is recorded as skipped; no run starts.
    #[default]
    Skip,
    /// The slot starts a run anyway; it queues behind the open one on the item's thread.
    Parallel,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Parallel => "parallel",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "skip" => Some(Self::Skip),
            "parallel" => Some(Self::Parallel),
            _ => None,
        }
    }
}

/// A validated schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    kind: ScheduleKind,
    next_run_at: Timestamp,
    interval_seconds: Option<u32>,
    overlap: Overlap,
}

impl Schedule {
    /// `ONCE` takes no interval; `INTERVAL` needs one of at least [`MIN_INTERVAL_SECONDS`].
    /// Errors name fields under `field` (`schedule.interval_seconds`).
    pub fn new(
        field: &str,
        kind: ScheduleKind,
        next_run_at: Timestamp,
        interval_seconds: Option<u32>,
        overlap: Overlap,
    ) -> Result<Self, ValidationError> {
        let interval_field = format!("{field}.interval_seconds");
        match (kind, interval_seconds) {
            (ScheduleKind::Once, Some(_)) => {
                return Err(ValidationError::new(
                    interval_field,
                    "is only allowed with schedule_kind INTERVAL",
                ))
            }
            (ScheduleKind::Interval, None) => {
                return Err(ValidationError::new(
                    interval_field,
                    "is required with schedule_kind INTERVAL",
                ))
            }
            (ScheduleKind::Interval, Some(s))
                if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&s) =>
            {
                return Err(ValidationError::new(
                    interval_field,
                    format!("must be between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS}"),
                ))
            }
            _ => {}
        }
        Ok(Self {
            kind,
            next_run_at,
            interval_seconds,
            overlap,
        })
    }

    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// The first slot.
    pub fn next_run_at(&self) -> Timestamp {
        self.next_run_at
    }

    pub fn interval_seconds(&self) -> Option<u32> {
        self.interval_seconds
    }

    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// What to fire for the pending slot `pending` when the clock reads `now`; see [`fire`].
    pub fn fire(&self, pending: Timestamp, now: Timestamp) -> Option<Firing> {
        fire(
            self.kind,
            self.interval_seconds.map(|s| i64::from(s) * 1000),
            pending,
            now,
        )
    }
}

/// Parses a schedule as clients send it (`schedule_kind`, `next_run_at` RFC 3339,
/// `interval_seconds`, `overlap`); errors name `field.<part>`. `next_run_at` is required for
/// `ONCE`; an `INTERVAL` without one starts at `now`.
pub fn parse_schedule(
    field: &str,
    kind: &str,
    next_run_at: Option<&str>,
    interval_seconds: Option<u32>,
    overlap: Option<&str>,
    now: Timestamp,
) -> Result<Schedule, ValidationError> {
    let kind = ScheduleKind::parse(kind).ok_or_else(|| {
        ValidationError::new(format!("{field}.schedule_kind"), "must be ONCE or INTERVAL")
    })?;
    let next_run_at = match next_run_at {
        Some(raw) => Timestamp::parse_rfc3339(raw).ok_or_else(|| {
            ValidationError::new(
                format!("{field}.next_run_at"),
                "must be an RFC 3339 timestamp (2026-01-31T09:00:00Z)",
            )
        })?,
        None if kind == ScheduleKind::Once => {
            return Err(ValidationError::new(
                format!("{field}.next_run_at"),
                "is required with schedule_kind ONCE",
            ))
        }
        None => now,
    };
    let overlap = match overlap {
        None => Overlap::default(),
        Some(raw) => Overlap::parse(raw).ok_or_else(|| {
            ValidationError::new(format!("{field}.overlap"), "must be skip or parallel")
        })?,
    };
    Schedule::new(field, kind, next_run_at, interval_seconds, overlap)
}

/// One firing: the slot recorded (and executed), and the slot pending after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    pub slot: Timestamp,
    pub next: Option<Timestamp>,
}

/// What fires when the pending slot is `pending` and the clock reads `now`: nothing before it
/// is due. `ONCE` fires its slot and has no next one. `INTERVAL` fires the *latest* grid point
/// `pending + k·interval` that is not after `now` and continues one interval later: slots
/// missed while no node was running (or while the clock jumped) collapse into that one, so
/// downtime costs one firing, not one per missed interval, and the grid never moves.
pub fn fire(
    kind: ScheduleKind,
    interval_ms: Option<i64>,
    pending: Timestamp,
    now: Timestamp,
) -> Option<Firing> {
    if pending > now {
        return None;
    }
    match (kind, interval_ms) {
        (ScheduleKind::Interval, Some(step)) if step > 0 => {
            let behind = now.as_millis().saturating_sub(pending.as_millis());
            let slot = pending.as_millis().saturating_add(behind / step * step);
            Some(Firing {
                slot: Timestamp::from_millis(slot),
                next: Some(Timestamp::from_millis(slot.saturating_add(step))),
            })
        }
        _ => Some(Firing {
            slot: pending,
            next: None,
        }),
    }
}

/// Where a board item's schedule stands (stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleState {
    /// A slot is pending at `next_run_at`.
    Active,
    /// Pending slots wait for a resume.
    Paused,
    /// No slot is left (a `ONCE` item fired, or an item without schedule executed).
    Done,
    /// The item was cancelled: its schedule is stopped for good.
    Cancelled,
}

impl ScheduleState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            "done" => Some(Self::Done),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// A board item's status as shown to clients, derived from its schedule and last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
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

impl ItemStatus {
    pub const ALL: [Self; 7] = [
        Self::Scheduled,
        Self::Paused,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Paused => "paused",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// The run a board item started last, and its answer once it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRun {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    /// `None` while the run is being submitted (its slot is recorded, the run not yet).
    pub status: Option<RunStatus>,
    /// The slot that started it.
    pub slot_at: Timestamp,
    /// The run's last assistant message.
    pub result: Option<String>,
}

/// A stored board item.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardItem {
    pub id: BoardItemId,
    pub project_id: ProjectId,
    /// `TASK-n`, unique within the project.
    pub task_key: String,
    pub title: String,
    pub description: String,
    pub status: ItemStatus,
    pub assigned_thread_id: ThreadId,
    pub assigned_agent_id: AgentId,
    pub capability_tags: Vec<String>,
    pub schedule: Option<Schedule>,
    pub schedule_state: ScheduleState,
    /// The pending slot, if any.
    pub next_run_at: Option<Timestamp>,
    /// The item that delegated this one.
    pub parent_item_id: Option<BoardItemId>,
    pub last_run: Option<ItemRun>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// Where a new item executes.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// An existing thread of the project (its agent executes).
    Thread(ThreadId),
    /// A new execution thread of the project, made for the item, run by `agent` (the project's
    /// agent when `None`). `context_of` copies a lane's context group and instructions.
    NewThread {
        agent: Option<AgentId>,
        context_of: Option<ThreadId>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBoardItem {
    pub project_id: ProjectId,
    pub title: crate::validate::Label,
    pub description: String,
    pub assignment: Assignment,
    pub capability_tags: Vec<crate::validate::CapabilityTag>,
    /// `None`: the item executes once, now.
    pub schedule: Option<Schedule>,
    pub parent_item_id: Option<BoardItemId>,
}

/// Fields a `PATCH` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardItemPatch {
    pub title: Option<crate::validate::Label>,
    pub description: Option<String>,
    pub capability_tags: Option<Vec<crate::validate::CapabilityTag>>,
    /// `Some(None)` removes the schedule (no further slot).
    pub schedule: Option<Option<Schedule>>,
    /// `Some(true)` pauses, `Some(false)` resumes.
    pub paused: Option<bool>,
}

/// Validates a board item description: 1-[`MAX_DESCRIPTION_CHARS`] characters.
pub fn parse_description(field: &str, raw: String) -> Result<String, ValidationError> {
    let len = raw.chars().count();
    if raw.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if len > MAX_DESCRIPTION_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters (got {len})"),
        ));
    }
    if raw.contains('\0') {
        return Err(ValidationError::new(field, "must not contain NUL"));
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------------------------
// Workspaces

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Deepest accepted nesting.
pub const MAX_DEPTH: usize = 32;

/// A normalized workspace path: `/` followed by components joined with `/`. Empty and `.`
/// components are dropped; `..`, NUL and other control characters, backslashes, drive
/// prefixes (`C:`) and over-long paths are refused, so a path can never name anything outside
/// its workspace whatever stores the bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// The workspace root (a directory).
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// A path naming a directory (the root allowed).
    pub fn parse_dir(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let components = components(field, raw)?;
        Ok(Self(format!("/{}", components.join("/"))))
    }

    /// A path naming a file (not the root).
    pub fn parse_file(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let path = Self::parse_dir(field, raw)?;
        if path.is_root() {
            return Err(ValidationError::new(
                field,
                "must name a file, not the root",
            ));
        }
        Ok(path)
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component (`report.pdf`); empty for the root.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The prefix every path inside this directory starts with (`/out/`, or `/`).
    pub fn dir_prefix(&self) -> String {
        if self.is_root() {
            "/".to_owned()
        } else {
            format!("{}/", self.0)
        }
    }

    /// Rebuilds a path read back from storage (already normalized when stored).
    pub fn from_stored(raw: &str) -> Result<Self, ValidationError> {
        let path = Self::parse_dir("path", raw)?;
        if path.0 != raw {
            return Err(ValidationError::new("path", "is not normalized"));
        }
        Ok(path)
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn components<'a>(field: &str, raw: &'a str) -> Result<Vec<&'a str>, ValidationError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_PATH_BYTES} bytes (got {})", raw.len()),
        ));
    }
    if raw.contains('\0') {
        return Err(ValidationError::new(field, "must not contain NUL"));
    }
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if raw.contains('\\') {
        return Err(ValidationError::new(
            field,
            "must use `/` as separator (no backslash)",
        ));
    }
    let bytes = raw.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(ValidationError::new(
            field,
            "must not start with a drive letter",
        ));
    }
    let mut out = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ValidationError::new(
                    field,
                    "must not contain `..` components",
                ))
            }
            p if p.len() > MAX_COMPONENT_BYTES => {
                return Err(ValidationError::new(
                    field,
                    format!("components must be at most {MAX_COMPONENT_BYTES} bytes"),
                ))
            }
            p => out.push(p),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_DEPTH} levels deep"),
        ));
    }
    Ok(out)
}

/// Which workspace a file belongs to: a board item's, or a thread's (work outside any item).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkspaceId {
    Item(BoardItemId),
    Thread(ThreadId),
}

impl WorkspaceId {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Item(id) => id.as_str(),
            Self::Thread(id) => id.as_str(),
        }
    }
}

/// A stored file's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    pub path: WorkspacePath,
    pub size: u64,
    pub mime_type: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub blob_id: BlobId,
    /// Number of stored chunks of the content.
    pub chunks: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq)]
pub enum DirEntry {
    File(FileMeta),
    /// A directory (directories exist implicitly, through the files below them).
    Directory {
        path: WorkspacePath,
    },
}

/// The direct children of `dir`, given the files at or below it (any order), directories
/// first, each group sorted by path.
pub fn list_dir(dir: &WorkspacePath, files: Vec<FileMeta>) -> Vec<DirEntry> {
    let prefix = dir.dir_prefix();
    let mut dirs = std::collections::BTreeSet::new();
    let mut out_files = Vec::new();
    for file in files {
        let Some(rest) = file.path.as_str().strip_prefix(&prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((sub, _)) => {
                dirs.insert(format!("{prefix}{sub}"));
            }
            None => out_files.push(file),
        }
    }
    out_files.sort_by(|a, b| a.path.cmp(&b.path));
    dirs.into_iter()
        .map(|p| DirEntry::Directory {
            path: WorkspacePath(p),
        })
        .chain(out_files.into_iter().map(DirEntry::File))
        .collect()
}

/// A media type `type/subtype` (parameters allowed) as sent in `Content-Type`: printable ASCII,
/// at most 255 bytes.
pub fn parse_mime(field: &str, raw: &str) -> Result<String, ValidationError> {
    let essence = raw.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok = raw.len() <= 255
        && raw.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    if ok {
        Ok(raw.trim().to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be a media type `type/subtype`",
        ))
    }
}

/// A media type guessed from a file name's extension (for files written by tools, or uploads
/// without a `Content-Type`).
pub fn guess_mime(path: &WorkspacePath) -> &'static str {
    let ext = path
        .file_name()
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "json" => "application/json",
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "zip" => "application/zip",
        "js" => "text/javascript; charset=utf-8",
        "py" => "text/x-python; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A file name safe to put in `Content-Disposition`: ASCII letters, digits, `.`, `-` and `_`
/// (everything else becomes `_`), no leading dot, at most 100 bytes, never empty.
pub fn attachment_file_name(path: &WorkspacePath) -> String {
    let mut name: String = path
        .file_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    name.truncate(100);
    if name.is_empty() {
        "download".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn interval_grid_collapses_missed_slots() {
        let k = ScheduleKind::Interval;
        let f = |pending, now| {
            fire(k, Some(60_000), ts(pending), ts(now))
                .map(|f| (f.slot.as_millis(), f.next.map(Timestamp::as_millis)))
        };
        // Not due yet.
        assert_eq!(f(60_000, 59_999), None);
        // On time: this slot, then the next.
        assert_eq!(f(0, 10), Some((0, Some(60_000))));
        // Ten minutes late: one firing, for the latest due grid point.
        assert_eq!(f(0, 600_500), Some((600_000, Some(660_000))));
        // Exactly on a later grid point: that point.
        assert_eq!(f(0, 120_000), Some((120_000, Some(180_000))));
        assert_eq!(
            fire(ScheduleKind::Once, None, ts(5), ts(900)),
            Some(Firing {
                slot: ts(5),
                next: None
            })
        );
    }

    #[test]
    fn schedules_check_their_interval() {
        let at = ts(0);
        let once = Schedule::new("schedule", ScheduleKind::Once, at, Some(60), Overlap::Skip);
        assert_eq!(once.unwrap_err().field, "schedule.interval_seconds");
        let short = Schedule::new(
            "schedule",
            ScheduleKind::Interval,
            at,
            Some(59),
            Overlap::Skip,
        );
        assert_eq!(short.unwrap_err().field, "schedule.interval_seconds");
        let none = Schedule::new("schedule", ScheduleKind::Interval, at, None, Overlap::Skip);
        assert!(none.is_err());
        assert!(
            Schedule::new("s", ScheduleKind::Interval, at, Some(60), Overlap::Parallel).is_ok()
        );
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        let ok = |raw: &str| WorkspacePath::parse_file("path", raw).map(|p| p.0);
        assert_eq!(ok("out/report.pdf").unwrap(), "/out/report.pdf");
        assert_eq!(ok("//out/./report.pdf/").unwrap(), "/out/report.pdf");
        assert_eq!(
            WorkspacePath::parse_dir("path", "").unwrap(),
            WorkspacePath::root()
        );
        for bad in [
            "../etc/passwd",
            "/a/../../etc/passwd",
            "a/..",
            "..",
            "a\0b",
            "a\\b",
            "C:/Windows",
            "c:\\x",
            "a\nb",
            "/",
            "",
        ] {
            let err = ok(bad).unwrap_err();
            assert_eq!(err.field, "path", "{bad:?}");
        }
        assert!(ok(&"a/".repeat(600)).is_err());
        assert!(ok(&"x".repeat(256)).is_err());
        assert!(ok(&"a/".repeat(33)).is_err());
        assert!(ok("résumé/ünïcode.txt").is_ok());
        assert_eq!(WorkspacePath::from_stored("/a/b").unwrap().as_str(), "/a/b");
        assert!(WorkspacePath::from_stored("a/b").is_err());
    }

    #[test]
    fn attachment_names_are_sanitized() {
        let name = |raw: &str| attachment_file_name(&WorkspacePath::parse_file("p", raw).unwrap());
        assert_eq!(name("/out/report.pdf"), "report.pdf");
        assert_eq!(name("/x/a\"b;c.txt"), "a_b_c.txt");
        assert_eq!(name("/x/..hidden"), "hidden");
        assert_eq!(name("/x/ä"), "_");
        assert_eq!(name("/x/..."), "download");
    }

    #[test]
    fn listings_show_direct_children() {
        let meta = |p: &str| FileMeta {
            path: WorkspacePath::parse_file("p", p).unwrap(),
            size: 1,
            mime_type: "text/plain".into(),
            sha256: String::new(),
            blob_id: BlobId::generate(),
            chunks: 1,
            created_at: ts(0),
            updated_at: ts(0),
        };
        let files = vec![
            meta("/b.txt"),
            meta("/out/x/y.txt"),
            meta("/out/a.txt"),
            meta("/a.txt"),
        ];
        let root = list_dir(&WorkspacePath::root(), files.clone());
        let names: Vec<String> = root
            .iter()
            .map(|e| match e {
                DirEntry::File(f) => f.path.to_string(),
                DirEntry::Directory { path } => format!("{path}/"),
            })
            .collect();
        assert_eq!(names, ["/out/", "/a.txt", "/b.txt"]);
        let out = list_dir(&WorkspacePath::parse_dir("p", "out").unwrap(), files);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn media_types() {
        assert!(parse_mime("Content-Type", "text/plain; charset=utf-8").is_ok());
        assert!(parse_mime("Content-Type", "nonsense").is_err());
        assert!(parse_mime("Content-Type", "text/plain\r\nX: y").is_err());
        let p = WorkspacePath::parse_file("p", "a/REPORT.PDF").unwrap();
        assert_eq!(guess_mime(&p), "application/pdf");
    }
}
