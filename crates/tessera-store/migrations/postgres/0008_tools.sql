-- Tools (issue 8): tool records, which agents attach which tools, platform events and the
-- webhook outbox they are queued in.

CREATE TABLE tools (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,
    -- The configuration's secret, sealed with the secrets key bound to the tool id; NULL when
    -- the configuration has none.
    sealed_secret BYTEA,
    version       BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX tools_deployment ON tools (deployment_id, id);

-- Kept in step with agents.spec.tool_ids (the spec stays the source of the order), so that
-- "which agents use this tool" is an indexed lookup.
CREATE TABLE agent_tools (
    agent_id      TEXT NOT NULL REFERENCES agents (id),
    tool_id       TEXT NOT NULL REFERENCES tools (id),
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    PRIMARY KEY (agent_id, tool_id)
);
CREATE INDEX agent_tools_tool ON agent_tools (tool_id);

CREATE TABLE platform_events (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    event_type    TEXT NOT NULL,
    tool_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL REFERENCES threads (id),
    run_id        TEXT NOT NULL,
    payload       TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX platform_events_deployment ON platform_events (deployment_id, id);

-- Deliveries waiting for the deployment's webhook app (delivery itself is a later issue).
CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,
    deployment_id   TEXT NOT NULL REFERENCES deployments (id),
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_outbox_deployment ON webhook_outbox (deployment_id, id);
