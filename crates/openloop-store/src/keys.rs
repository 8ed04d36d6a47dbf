//! API keys. The secret is shown once at creation; only its SHA-256 hash is stored.

use crate::{new_id, now_ms, Result, Store, StoreError};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// Hash of a secret as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh high-entropy secret with the given prefix (`ol_` for API keys).
pub fn new_secret(prefix: &str) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

impl Store {
    /// Create a key; returns its record and the secret (never stored).
    pub async fn create_key(&self, name: &str) -> Result<(ApiKey, String)> {
        let secret = new_secret("ol_");
        let key = ApiKey {
            id: new_id("key"),
            name: name.to_string(),
            prefix: secret[..10].to_string(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, key_hash, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(hash_secret(&secret))
        .bind(key.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok((key, secret))
    }

    pub async fn count_keys(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// The live key whose secret this is, if any.
    pub async fn verify_key(&self, secret: &str) -> Result<Option<ApiKey>> {
        Ok(sqlx::query_as::<_, ApiKey>(
            "SELECT id, name, prefix, created_at_ms, revoked_at_ms FROM api_keys WHERE key_hash = $1 AND revoked_at_ms IS NULL",
        )
        .bind(hash_secret(secret))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        Ok(sqlx::query_as::<_, ApiKey>(
            "SELECT id, name, prefix, created_at_ms, revoked_at_ms FROM api_keys ORDER BY created_at_ms",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revoke by id or by name.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = $1 WHERE (id = $2 OR name = $2) AND revoked_at_ms IS NULL",
        )
        .bind(now_ms())
        .bind(id_or_name)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("live API key '{id_or_name}'")));
        }
        // Its dashboard sessions end with it (they are also checked against the key on use).
        sqlx::query(
            "DELETE FROM ui_sessions WHERE key_id IN (SELECT id FROM api_keys WHERE id = $1 OR name = $1)",
        )
        .bind(id_or_name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
