//! Dashboard sign-in sessions. The cookie holds a random token; only its SHA-256 hash is
//! stored, next to the API key it was opened with. A session is valid only while that key is
//! not revoked, so revoking a key ends its sessions at their next request.

use crate::keys::hash_secret;
use crate::{now_ms, Result, Store};

/// An open session, as the dashboard sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UiSession {
    pub key_id: String,
    /// The key's name, shown in the navigation bar.
    pub key_name: String,
    /// Every state-changing form carries this token (CSRF protection).
    pub csrf_token: String,
    pub expires_at_ms: i64,
}

impl Store {
    /// Open a session for `key_id`; `token` is the cookie's secret (only its hash is kept).
    pub async fn create_session(
        &self,
        token: &str,
        key_id: &str,
        csrf_token: &str,
        ttl_ms: i64,
    ) -> Result<()> {
        let now = now_ms();
        // Expired sessions of anyone go when a new one is opened: no sweeper needed.
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO ui_sessions (token_hash, key_id, csrf_token, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash_secret(token))
        .bind(key_id)
        .bind(csrf_token)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session of a cookie token, if it is open, unexpired and its key not revoked.
    pub async fn session(&self, token: &str) -> Result<Option<UiSession>> {
        Ok(sqlx::query_as::<_, UiSession>(
            "SELECT s.key_id, k.name AS key_name, s.csrf_token, s.expires_at_ms FROM ui_sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.token_hash = $1 AND s.expires_at_ms > $2 AND k.revoked_at_ms IS NULL",
        )
        .bind(hash_secret(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Sign out: the session is gone.
    pub async fn delete_session(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM ui_sessions WHERE token_hash = $1")
            .bind(hash_secret(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
