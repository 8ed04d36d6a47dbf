-- Cluster mode: several nodes on one database (PostgreSQL), each owning what it runs.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL (where a single node is a cluster of one).

-- One row per node. `epoch` grows at each start of the node (and when it rejoins after losing
-- its lease); a run records the epoch it was taken under, so a node that comes back with a
-- stale lease cannot finish a run another node took over (fencing).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    status TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL,
    lost_at_ms BIGINT,
    taken_over_by TEXT
);

-- The node running an invocation and the epoch it took it under (NULL while queued).
ALTER TABLE invocations ADD COLUMN node_id TEXT;
ALTER TABLE invocations ADD COLUMN node_epoch BIGINT;
CREATE INDEX invocations_by_node ON invocations (node_id, status);
-- 1 while a running invocation waits on another and has lent its function slot to it (a
-- cluster's per-function limit counts the runs of a function that are running and not lending).
ALTER TABLE invocations ADD COLUMN lending BIGINT NOT NULL DEFAULT 0;

-- The node a devbox lives on (its calls are forwarded there).
ALTER TABLE devboxes ADD COLUMN node_id TEXT;
CREATE INDEX devboxes_by_node ON devboxes (node_id, status);

-- The node that built a deployment, and the content hash of its source archive, from which
-- every other node builds the same environment on its first run of it.
ALTER TABLE deployments ADD COLUMN node_id TEXT;
ALTER TABLE deployments ADD COLUMN source_hash TEXT;

CREATE TABLE deployment_sources (
    hash TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    archive BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
