-- Third-party toolkits (issue 8, `Virtual` tools): the toolkits each deployment enabled, and
-- each actor's connection (connected account at the toolkit provider) to them.

CREATE TABLE toolkits (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    slug          TEXT NOT NULL,
    name          TEXT NOT NULL,
    -- JSON: requires_confirmation, confirmation_expires_in_seconds, timeout_seconds.
    settings      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, slug)
);

-- One connection per (deployment, actor, toolkit); connecting again replaces it.
CREATE TABLE toolkit_connections (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    actor_id      TEXT NOT NULL REFERENCES actors (id),
    toolkit       TEXT NOT NULL,
    -- The provider's id of the connected account.
    account_id    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'connected', 'failed', 'expired')),
    redirect_url  TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (deployment_id, actor_id, toolkit),
    FOREIGN KEY (deployment_id, toolkit) REFERENCES toolkits (deployment_id, slug)
);
