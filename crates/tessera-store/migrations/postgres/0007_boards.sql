-- Task boards: board items, the record of every schedule slot, and task workspace files.

CREATE TABLE board_items (
    id                 TEXT PRIMARY KEY,
    deployment_id      TEXT NOT NULL REFERENCES deployments (id),
    project_id         TEXT NOT NULL REFERENCES actor_projects (id),
    -- n of the item's TASK-n key, unique within the project.
    seq                BIGINT NOT NULL,
    title              TEXT NOT NULL,
    description        TEXT NOT NULL,
    assigned_thread_id TEXT NOT NULL REFERENCES threads (id),
    assigned_agent_id  TEXT NOT NULL,
    capability_tags    TEXT NOT NULL,
    -- NULL: no schedule (the item executed once, when created).
    schedule_kind      TEXT CHECK (schedule_kind IN ('ONCE', 'INTERVAL')),
    schedule_first_at  BIGINT,
    interval_seconds   BIGINT,
    overlap            TEXT NOT NULL CHECK (overlap IN ('skip', 'parallel')),
    schedule_state     TEXT NOT NULL CHECK (schedule_state IN ('active', 'paused', 'done', 'cancelled')),
    -- The pending slot (ms), if any.
    next_run_at        BIGINT,
    parent_item_id     TEXT,
    last_run_id        TEXT,
    last_slot_at       BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    archived_at        BIGINT,
    UNIQUE (project_id, seq)
);
CREATE INDEX board_items_project ON board_items (deployment_id, project_id, id);
-- The scheduler's one question: which active slot is due next.
CREATE INDEX board_items_due ON board_items (next_run_at)
    WHERE schedule_state = 'active' AND archived_at IS NULL;

-- One row per slot that came due: the primary key is what makes a slot fire exactly once,
-- whichever node claims it.
CREATE TABLE board_slots (
    item_id       TEXT NOT NULL REFERENCES board_items (id),
    slot_at       BIGINT NOT NULL,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    -- 'fired' (a run was started, or is being started) or 'skipped' (overlap skip), 'failed'.
    outcome       TEXT NOT NULL CHECK (outcome IN ('fired', 'skipped', 'failed')),
    run_id        TEXT,
    message_id    TEXT,
    thread_id     TEXT NOT NULL,
    node          TEXT NOT NULL,
    fired_at      BIGINT NOT NULL,
    error         TEXT,
    PRIMARY KEY (item_id, slot_at)
);
CREATE INDEX board_slots_fired ON board_slots (outcome, fired_at);
CREATE INDEX board_slots_run ON board_slots (run_id);

-- A workspace file: the current version of (workspace, path). Its bytes are in blob_chunks.
CREATE TABLE workspace_files (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    -- A board item id or a thread id.
    workspace_id  TEXT NOT NULL,
    path          TEXT NOT NULL,
    blob_id       TEXT NOT NULL,
    size          BIGINT NOT NULL,
    chunks        BIGINT NOT NULL,
    mime_type     TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, workspace_id, path)
);

-- File content in chunks, so neither an upload nor a download holds a whole file in memory.
-- A blob is written before its file row points at it, and deleted when replaced.
CREATE TABLE blob_chunks (
    blob_id       TEXT NOT NULL,
    idx           BIGINT NOT NULL,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    data          BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
