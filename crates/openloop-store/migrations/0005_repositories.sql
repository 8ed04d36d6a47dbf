-- Push-to-deploy: git repositories connected to a project. A push to `branch` (reported by a
-- signed webhook, or seen by polling every `poll_seconds`) deploys that commit. The webhook
-- secret is sealed like a secret (`key_id`, `nonce`, `ciphertext`: an AEAD under the server's
-- secrets key, with `webhook:<id>` as associated data); it must be usable for HMAC, so it
-- cannot be hashed. `last_commit` is the last commit this connection deployed.
CREATE TABLE repositories (
    id TEXT PRIMARY KEY,
    project_name TEXT NOT NULL,
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    poll_seconds BIGINT,
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    last_commit TEXT,
    last_deployment_id TEXT,
    created_at_ms BIGINT NOT NULL
);

-- Every webhook delivery and every poll that deployed, the last 100 per repository.
CREATE TABLE repository_deliveries (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    provider TEXT NOT NULL,
    event TEXT,
    git_ref TEXT,
    commit_sha TEXT,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    deployment_id TEXT
);
CREATE INDEX repository_deliveries_by_repository ON repository_deliveries (repository_id, id);
