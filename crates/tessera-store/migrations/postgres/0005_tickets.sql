-- Session tickets, agent sessions, named sessions, the app registry that ticket slugs are
-- checked against, console administrators and their sessions.
-- Timestamps are integer milliseconds since the Unix epoch; JSON is stored as text.

-- Apps that api_auth_access / webhook_app_access tickets manage. Filled by the API-auth and
-- webhook features; until they exist the table stays empty and such tickets are refused (404).
CREATE TABLE apps (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    kind          TEXT NOT NULL CHECK (kind IN ('api_auth', 'webhook')),
    slug          TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, kind, slug)
);

CREATE TABLE session_tickets (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    -- SHA-256 of the ticket; the ticket itself is never stored.
    hash          BYTEA NOT NULL UNIQUE,
    ticket_type   TEXT NOT NULL,
    -- What the ticket grants (agents, binding, mode, context group / user / app), as JSON.
    grant_json    TEXT NOT NULL,
    issuer_type   TEXT NOT NULL,
    issuer_id     TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    -- Set by the one exchange that succeeds (a conditional UPDATE).
    redeemed_at   BIGINT,
    -- Set when a used ticket was presented again (its sessions were revoked).
    replayed_at   BIGINT
);
CREATE INDEX session_tickets_expiry ON session_tickets (expires_at);

-- Named agent sessions, resumed by name: same context group, same actor.
CREATE TABLE named_agent_sessions (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    name          TEXT NOT NULL,
    context_group TEXT NOT NULL,
    actor_id      TEXT NOT NULL REFERENCES actors (id),
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, name)
);

CREATE TABLE agent_sessions (
    id                 TEXT PRIMARY KEY,
    deployment_id      TEXT NOT NULL REFERENCES deployments (id),
    ticket_id          TEXT NOT NULL REFERENCES session_tickets (id),
    -- The browser session it is the active agent session of (no foreign key: browser sessions
    -- are deleted on rotation and sign-out, which simply orphans the agent session).
    browser_session_id TEXT,
    -- SHA-256 of the bearer `session_token` handed to the exchanging client.
    token_hash         BYTEA NOT NULL UNIQUE,
    actor_id           TEXT NOT NULL REFERENCES actors (id),
    agent_ids          TEXT NOT NULL,
    context_group      TEXT NOT NULL,
    session_name       TEXT,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    ended_at           BIGINT,
    -- replaced | ticket_replayed
    end_reason         TEXT
);
CREATE INDEX agent_sessions_browser ON agent_sessions (browser_session_id);
CREATE INDEX agent_sessions_ticket ON agent_sessions (ticket_id);

-- Impersonation: who signed the browser in as the user, with which ticket.
ALTER TABLE browser_sessions ADD COLUMN impersonator_type TEXT;
ALTER TABLE browser_sessions ADD COLUMN impersonator_id TEXT;
ALTER TABLE browser_sessions ADD COLUMN ticket_id TEXT;

-- Conversations an agent session deleted: hidden from the browser API, kept for the backend.
ALTER TABLE threads ADD COLUMN hidden_at BIGINT;
CREATE INDEX threads_partition ON threads (deployment_id, actor_id, context_group, id);

-- Console administrators of the installation (not tenant data).
CREATE TABLE console_admins (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- argon2id PHC string.
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE console_sessions (
    token_hash BYTEA PRIMARY KEY,
    admin_id   TEXT NOT NULL REFERENCES console_admins (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
