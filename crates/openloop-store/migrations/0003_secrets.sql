-- Secrets, encrypted at rest: the value is sealed with an AEAD (ChaCha20-Poly1305) under the
-- server's secrets key, with the secret's name as associated data. Nothing here is cleartext
-- but the name. `key_id` tells which key sealed it (a hash of the key, not the key).
CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    create_time_ms BIGINT NOT NULL,
    update_time_ms BIGINT NOT NULL
);
