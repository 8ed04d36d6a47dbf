-- Disk snapshots of devboxes, and the snapshot a devbox was started from.
ALTER TABLE devboxes ADD COLUMN snapshot_id TEXT;
CREATE INDEX devboxes_by_snapshot ON devboxes (snapshot_id, status);

CREATE TABLE disk_snapshots (
    id TEXT PRIMARY KEY,
    -- Who may see and use it: `key:<api key id>` or `run:<invocation id>`.
    owner TEXT NOT NULL,
    source_devbox_id TEXT NOT NULL,
    name TEXT,
    commit_message TEXT,
    -- A JSON object of strings.
    metadata TEXT NOT NULL,
    -- `in_progress`, `complete`, `error` or `deleted`.
    status TEXT NOT NULL,
    error_message TEXT,
    size_bytes BIGINT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX disk_snapshots_by_owner ON disk_snapshots (owner, status, id);
CREATE INDEX disk_snapshots_by_devbox ON disk_snapshots (source_devbox_id, id);
