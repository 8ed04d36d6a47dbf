-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE projects (
    name TEXT PRIMARY KEY,
    active_deployment_id TEXT,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    project_name TEXT NOT NULL,
    source TEXT NOT NULL,
    git_ref TEXT,
    status TEXT NOT NULL,
    failure_reason TEXT,
    manifest TEXT,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    ended_at_ms BIGINT
);
CREATE INDEX deployments_by_project ON deployments (project_name, created_at_ms);

CREATE TABLE deployment_logs (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE invocations (
    id TEXT PRIMARY KEY,
    project_name TEXT NOT NULL,
    function_name TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    parent_invocation_id TEXT,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    ended_at_ms BIGINT
);
CREATE INDEX invocations_by_status ON invocations (status, created_at_ms);
CREATE INDEX invocations_by_function ON invocations (project_name, function_name, created_at_ms);

CREATE TABLE invocation_logs (
    invocation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    stream TEXT NOT NULL,
    level TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (invocation_id, seq)
);

CREATE TABLE devboxes (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    invocation_id TEXT,
    failure_reason TEXT,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    ended_at_ms BIGINT
);
CREATE INDEX devboxes_by_invocation ON devboxes (invocation_id);
CREATE INDEX devboxes_by_status ON devboxes (status, created_at_ms);
