-- Devbox lifecycle details in Runloop's terms.
ALTER TABLE devboxes ADD COLUMN shutdown_reason TEXT;
ALTER TABLE devboxes ADD COLUMN status_message TEXT;

CREATE TABLE devbox_transitions (
    devbox_id TEXT NOT NULL,
    transition_time_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT
);
CREATE INDEX devbox_transitions_by_devbox ON devbox_transitions (devbox_id, transition_time_ms);
