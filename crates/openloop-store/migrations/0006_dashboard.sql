-- The dashboard: sign-in sessions, who created a devbox, and indexes so every page answers
-- fast with a large history (keyset pages by id under each filter the pages offer).
CREATE TABLE ui_sessions (
    token_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX ui_sessions_by_key ON ui_sessions (key_id);

ALTER TABLE devboxes ADD COLUMN key_id TEXT;

CREATE INDEX invocations_status_id ON invocations (status, id);
CREATE INDEX invocations_project_id ON invocations (project_name, id);
CREATE INDEX invocations_function_id ON invocations (project_name, function_name, id);
CREATE INDEX invocations_function_status_id ON invocations (project_name, function_name, status, id);
CREATE INDEX invocations_by_parent ON invocations (parent_invocation_id);
CREATE INDEX deployments_by_status ON deployments (status, id);
