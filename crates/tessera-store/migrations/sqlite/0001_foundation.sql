-- Foundation: deployments, secret keys, actors, agents, actor projects.
-- Timestamps are integer milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    backend_host  TEXT NOT NULL,
    frontend_host TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE secret_keys (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    hash          BLOB NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX secret_keys_deployment ON secret_keys (deployment_id, id);

CREATE TABLE actors (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    subject_type  TEXT NOT NULL,
    external_key  TEXT NOT NULL,
    display_name  TEXT,
    metadata      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (deployment_id, subject_type, external_key)
);
CREATE INDEX actors_deployment ON actors (deployment_id, id);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    endpoint_slug TEXT,
    spec          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER
);
CREATE INDEX agents_deployment ON agents (deployment_id, id);
CREATE INDEX agents_endpoint ON agents (deployment_id, endpoint_slug) WHERE endpoint_slug IS NOT NULL;

CREATE TABLE actor_projects (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    actor_id      TEXT NOT NULL REFERENCES actors (id),
    agent_id      TEXT NOT NULL REFERENCES agents (id),
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    created_at    INTEGER NOT NULL,
    archived_at   INTEGER
);
CREATE INDEX actor_projects_deployment ON actor_projects (deployment_id, id);
CREATE INDEX actor_projects_agent ON actor_projects (agent_id, status);
