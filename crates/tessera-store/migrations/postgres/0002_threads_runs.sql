-- Threads, their messages, runs, the per-thread event log, and idempotency records.

CREATE TABLE threads (
    id                  TEXT PRIMARY KEY,
    deployment_id       TEXT NOT NULL REFERENCES deployments (id),
    project_id          TEXT NOT NULL REFERENCES actor_projects (id),
    actor_id            TEXT NOT NULL REFERENCES actors (id),
    agent_id            TEXT NOT NULL REFERENCES agents (id),
    title               TEXT NOT NULL,
    system_instructions TEXT,
    purpose             TEXT NOT NULL CHECK (purpose IN ('conversation', 'execution')),
    capability_tags     TEXT NOT NULL,
    context_group       TEXT,
    status              TEXT NOT NULL,
    -- The one run allowed to be active (running or waiting for input); claiming sets it.
    active_run_id       TEXT,
    -- Sequence number of the thread's last event.
    last_seq            BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX threads_deployment ON threads (deployment_id, id);
CREATE INDEX threads_project ON threads (project_id, id);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    deployment_id     TEXT NOT NULL REFERENCES deployments (id),
    thread_id         TEXT NOT NULL REFERENCES threads (id),
    status            TEXT NOT NULL,
    -- Incremented on every claim: the fencing token of the worker holding the lease.
    attempt           BIGINT NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    input_message_id  TEXT NOT NULL,
    -- 0 none, 1 cancel requested, 2 interrupted by a newer message.
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    stop_reason       TEXT,
    error             TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    iterations        BIGINT NOT NULL DEFAULT 0,
    tool_calls        BIGINT NOT NULL DEFAULT 0,
    wall_ms           BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);
CREATE INDEX runs_thread ON runs (thread_id, id);
CREATE INDEX runs_status ON runs (status, id);

CREATE TABLE messages (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    thread_id     TEXT NOT NULL REFERENCES threads (id),
    run_id        TEXT,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    tool_calls    TEXT NOT NULL,
    tool_call_id  TEXT,
    tool_name     TEXT,
    is_error      BIGINT NOT NULL DEFAULT 0,
    attachments   TEXT NOT NULL,
    usage         TEXT,
    -- Identifies a worker's durable step, so a resumed run cannot store it twice.
    step_key      TEXT,
    created_at    BIGINT NOT NULL,
    UNIQUE (run_id, step_key)
);
CREATE INDEX messages_thread ON messages (thread_id, id);

CREATE TABLE thread_events (
    thread_id     TEXT NOT NULL REFERENCES threads (id),
    seq           BIGINT NOT NULL,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    run_id        TEXT,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (thread_id, seq)
);

CREATE TABLE idempotency_keys (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    operation     TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    result        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, operation, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
