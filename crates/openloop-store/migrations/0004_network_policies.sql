-- Runloop's network policies: where a sandbox's outbound traffic may go. The egress rules are
-- one JSON document (allow_all, allowed_cidrs with ports, allowed_hostnames and Runloop's
-- other flags), validated by the API before it is stored. Names may be reused.
CREATE TABLE network_policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    egress TEXT NOT NULL,
    create_time_ms BIGINT NOT NULL,
    update_time_ms BIGINT NOT NULL
);
CREATE INDEX network_policies_name ON network_policies (name);
