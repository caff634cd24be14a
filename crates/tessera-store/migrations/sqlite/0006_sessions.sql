-- Session management: closing a session, its context variables, and tool calls waiting for a
-- person's confirmation (pending actions).

ALTER TABLE threads ADD COLUMN closed_at INTEGER;
-- The close record, kept so that a second close answers the same.
ALTER TABLE threads ADD COLUMN close_duration_seconds INTEGER;
ALTER TABLE threads ADD COLUMN billable INTEGER;
ALTER TABLE threads ADD COLUMN context_variables TEXT NOT NULL DEFAULT '{}';
ALTER TABLE threads ADD COLUMN requested_variables TEXT NOT NULL DEFAULT '[]';

CREATE TABLE pending_actions (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    thread_id     TEXT NOT NULL REFERENCES threads (id),
    run_id        TEXT NOT NULL REFERENCES runs (id),
    -- The model's tool call: one action per call.
    call_id       TEXT NOT NULL,
    tool          TEXT NOT NULL,
    preview       TEXT NOT NULL,
    -- pending → confirmed → executing → completed | failed; pending → cancelled | expired.
    status        TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    -- When the pending_action.expiring event is due, and whether it was sent.
    warn_at       INTEGER NOT NULL,
    warned        INTEGER NOT NULL DEFAULT 0,
    callback_id   TEXT,
    result        TEXT,
    -- The pool response (run id) that reported the final outcome.
    reported_in   TEXT,
    created_at    INTEGER NOT NULL,
    decided_at    INTEGER,
    UNIQUE (run_id, call_id)
);
CREATE INDEX pending_actions_due ON pending_actions (status, expires_at);
CREATE INDEX pending_actions_thread ON pending_actions (thread_id, id);
