//! Secrets, as sealed records: this module never sees a value in clear. Sealing and opening
//! (the AEAD and its key) belong to the API's secrets service.

use crate::{new_id, now_ms, Result, Store, StoreError};

/// A secret as stored: its name in clear, its value sealed.
#[derive(Clone, sqlx::FromRow)]
pub struct SecretRecord {
    pub id: String,
    pub name: String,
    /// Which key sealed the value (a hash of the key, never the key).
    pub key_id: String,
    /// Base64 of the AEAD nonce.
    pub nonce: String,
    /// Base64 of the AEAD ciphertext (with its tag).
    pub ciphertext: String,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A sealed value, ready to store.
#[derive(Clone)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

const SELECT: &str =
    "SELECT id, name, key_id, nonce, ciphertext, create_time_ms, update_time_ms FROM secrets";
const RETURNING: &str =
    "RETURNING id, name, key_id, nonce, ciphertext, create_time_ms, update_time_ms";

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("secret '{name}'"))
}

fn not_found_by(name_or_id: &str, by_id: bool) -> StoreError {
    if by_id {
        StoreError::NotFound(format!("secret with id '{name_or_id}'"))
    } else {
        not_found(name_or_id)
    }
}

impl Store {
    /// Store a new secret; `AlreadyExists` when the name is taken.
    pub async fn insert_secret(&self, name: &str, sealed: &Sealed) -> Result<SecretRecord> {
        let now = now_ms();
        let rec = SecretRecord {
            id: new_id("sec"),
            name: name.to_string(),
            key_id: sealed.key_id.clone(),
            nonce: sealed.nonce.clone(),
            ciphertext: sealed.ciphertext.clone(),
            create_time_ms: now,
            update_time_ms: now,
        };
        let r = sqlx::query(
            "INSERT INTO secrets (id, name, key_id, nonce, ciphertext, create_time_ms, update_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&rec.id)
        .bind(&rec.name)
        .bind(&rec.key_id)
        .bind(&rec.nonce)
        .bind(&rec.ciphertext)
        .bind(rec.create_time_ms)
        .bind(rec.update_time_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(rec),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists(format!("secret '{name}'")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_secret(&self, name: &str) -> Result<SecretRecord> {
        sqlx::query_as::<_, SecretRecord>(&format!("{SELECT} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found(name))
    }

    pub async fn get_secret_by_id(&self, id: &str) -> Result<SecretRecord> {
        sqlx::query_as::<_, SecretRecord>(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found_by(id, true))
    }

    /// Newest first, paged by `starting_after` id.
    pub async fn list_secrets(
        &self,
        starting_after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SecretRecord>> {
        Ok(sqlx::query_as::<_, SecretRecord>(&format!(
            "{SELECT} WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(starting_after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_secrets(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Key ids that sealed stored secrets (to warn at start-up when the key has changed).
    pub async fn secret_key_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT key_id FROM secrets")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Replace the sealed value of the secret with this name (or, with `by_id`, this id).
    pub async fn update_secret(
        &self,
        name_or_id: &str,
        by_id: bool,
        sealed: &Sealed,
    ) -> Result<SecretRecord> {
        let column = if by_id { "id" } else { "name" };
        sqlx::query_as::<_, SecretRecord>(&format!(
            "UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3, update_time_ms = $4 WHERE {column} = $5 {RETURNING}"
        ))
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_ms())
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found_by(name_or_id, by_id))
    }

    /// Delete the secret with this name (or, with `by_id`, this id); returns what it was.
    pub async fn delete_secret(&self, name_or_id: &str, by_id: bool) -> Result<SecretRecord> {
        let column = if by_id { "id" } else { "name" };
        sqlx::query_as::<_, SecretRecord>(&format!(
            "DELETE FROM secrets WHERE {column} = $1 {RETURNING}"
        ))
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found_by(name_or_id, by_id))
    }
}
