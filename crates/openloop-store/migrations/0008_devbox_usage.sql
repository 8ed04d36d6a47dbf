-- What a devbox really used, measured from its cgroup and disk as it stopped (its resource
-- usage answers these once the sandbox is gone).
CREATE TABLE devbox_usage (
    devbox_id TEXT PRIMARY KEY,
    cpu_usage_ns BIGINT,
    memory_peak_bytes BIGINT,
    disk_used_bytes BIGINT,
    recorded_at_ms BIGINT NOT NULL
);
