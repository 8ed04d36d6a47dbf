-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- The SHA-256 of a devbox's tunnel key (hex), so that any node of a cluster finds the node a
-- tunnel's devbox lives on (the tunnel itself lives in that node's memory).
ALTER TABLE devboxes ADD COLUMN tunnel_key_hash TEXT;
CREATE INDEX devboxes_by_tunnel_key ON devboxes (tunnel_key_hash);
