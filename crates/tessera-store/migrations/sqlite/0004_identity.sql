-- Identity: end users, organizations and memberships, browser sessions, sign-in throttling,
-- the audit log, and the installation's token signing keys.
-- Timestamps are integer milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    -- Normalized (trimmed, lower-cased) by the domain before it gets here.
    email         TEXT NOT NULL,
    first_name    TEXT,
    last_name     TEXT,
    -- argon2id PHC string; NULL when the user has no password.
    password_hash TEXT,
    metadata      TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (deployment_id, email)
);
CREATE INDEX users_deployment ON users (deployment_id, id);

CREATE TABLE organizations (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    name          TEXT NOT NULL,
    slug          TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (deployment_id, slug)
);
CREATE INDEX organizations_deployment ON organizations (deployment_id, id);

CREATE TABLE memberships (
    id              TEXT PRIMARY KEY,
    deployment_id   TEXT NOT NULL REFERENCES deployments (id),
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    role            TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at      INTEGER NOT NULL,
    UNIQUE (organization_id, user_id)
);
CREATE INDEX memberships_organization ON memberships (organization_id, id);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE browser_sessions (
    id                     TEXT PRIMARY KEY,
    deployment_id          TEXT NOT NULL REFERENCES deployments (id),
    -- SHA-256 of the cookie value; the value itself is never stored.
    token_hash             BLOB NOT NULL UNIQUE,
    user_id                TEXT REFERENCES users (id),
    active_organization_id TEXT REFERENCES organizations (id),
    created_at             INTEGER NOT NULL,
    last_seen_at           INTEGER NOT NULL,
    idle_expires_at        INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL
);
CREATE INDEX browser_sessions_user ON browser_sessions (user_id);
CREATE INDEX browser_sessions_expiry ON browser_sessions (expires_at);

-- Failed sign-in counters per account and per client address, in fixed windows. Kept in the
-- database so that every node sees the same counts.
CREATE TABLE sign_in_failures (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    bucket        TEXT NOT NULL,
    window_start  INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, bucket)
);

CREATE TABLE audit_events (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    kind          TEXT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    subject_id    TEXT,
    ip            TEXT,
    user_agent    TEXT,
    data          TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX audit_events_deployment ON audit_events (deployment_id, id);

-- Installation-wide (not per deployment): tokens carry their deployment as a claim.
CREATE TABLE signing_keys (
    id                 TEXT PRIMARY KEY,
    public_key         BLOB NOT NULL,
    -- ChaCha20-Poly1305 under the installation's secrets key: nonce || ciphertext || tag.
    sealed_private_key BLOB NOT NULL,
    created_at         INTEGER NOT NULL,
    retired_at         INTEGER
);
