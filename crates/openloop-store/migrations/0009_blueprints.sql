-- Blueprints: a Dockerfile built once into a read-only layer, its build log, and the
-- blueprint a devbox was started from.
CREATE TABLE blueprints (
    id TEXT PRIMARY KEY,
    -- Who may see and use it: `key:<api key id>`.
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The create request as given (Runloop's `parameters`), JSON.
    parameters TEXT NOT NULL,
    -- The blueprint it was built `FROM`, if any.
    base_blueprint_id TEXT,
    -- Names its layer, `<data>/blueprints/<content_hash>`: identical content shares it.
    content_hash TEXT NOT NULL,
    -- `queued`, `building`, `build_complete` or `failed`.
    status TEXT NOT NULL,
    -- `created` or `deleted`.
    state TEXT NOT NULL,
    -- `build_failed`, `out_of_memory` or `out_of_disk`.
    failure_reason TEXT,
    -- What a devbox from it starts with (ENV, WORKDIR, USER), JSON.
    image TEXT NOT NULL,
    -- A JSON object of strings.
    metadata TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    build_finish_time_ms BIGINT
);
CREATE INDEX blueprints_by_owner ON blueprints (owner, state, id);
CREATE INDEX blueprints_by_status ON blueprints (owner, status, id);
CREATE INDEX blueprints_by_name ON blueprints (owner, name, status, id);
CREATE INDEX blueprints_by_hash ON blueprints (content_hash, state);
CREATE INDEX blueprints_by_base ON blueprints (base_blueprint_id, status);

CREATE TABLE blueprint_logs (
    blueprint_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    PRIMARY KEY (blueprint_id, seq)
);

ALTER TABLE devboxes ADD COLUMN blueprint_id TEXT;
CREATE INDEX devboxes_by_blueprint ON devboxes (blueprint_id, status);
