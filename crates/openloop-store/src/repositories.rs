//! Connected git repositories (push-to-deploy) and their webhook deliveries.
//!
//! The webhook secret is kept sealed (sealing belongs to the API's secrets key); this module
//! never sees it in clear. Deliveries are capped at [`DELIVERIES_KEPT`] per repository, so
//! unauthenticated webhook requests cannot grow the database without bound.

use crate::secrets::Sealed;
use crate::{new_id, now_ms, Result, Store, StoreError};

/// Deliveries kept per repository; older ones are deleted as new ones are recorded.
pub const DELIVERIES_KEPT: i64 = 100;

/// A connected repository as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct RepositoryRecord {
    pub id: String,
    /// The project its pushes deploy to.
    pub project_name: String,
    pub url: String,
    pub branch: String,
    /// Poll the branch's head this often (`None`: webhooks only).
    pub poll_seconds: Option<i64>,
    /// The sealed webhook secret.
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
    /// The last commit this connection deployed, and that deployment.
    pub last_commit: Option<String>,
    pub last_deployment_id: Option<String>,
    pub created_at_ms: i64,
}

impl RepositoryRecord {
    pub fn sealed_secret(&self) -> Sealed {
        Sealed {
            key_id: self.key_id.clone(),
            nonce: self.nonce.clone(),
            ciphertext: self.ciphertext.clone(),
        }
    }
}

impl std::fmt::Debug for RepositoryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryRecord")
            .field("id", &self.id)
            .field("project_name", &self.project_name)
            .field("url", &self.url)
            .field("branch", &self.branch)
            .field("poll_seconds", &self.poll_seconds)
            .field("last_commit", &self.last_commit)
            .finish_non_exhaustive()
    }
}

/// What a new connection stores (its id is chosen first: it is the sealing's associated data).
pub struct NewRepository<'a> {
    pub id: &'a str,
    pub project_name: &'a str,
    pub url: &'a str,
    pub branch: &'a str,
    pub poll_seconds: Option<i64>,
    pub secret: &'a Sealed,
}

/// One webhook delivery (or one poll that deployed), as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub repository_id: String,
    pub received_at_ms: i64,
    /// `github`, `gitea`, `forgejo`, `gitlab`, `poll` or `unknown`.
    pub provider: String,
    pub event: Option<String>,
    pub git_ref: Option<String>,
    pub commit_sha: Option<String>,
    /// `deployed`, `ignored`, `rejected` or `failed`.
    pub outcome: String,
    pub message: String,
    pub deployment_id: Option<String>,
}

/// What a new delivery record holds.
pub struct NewDelivery<'a> {
    pub repository_id: &'a str,
    pub provider: &'a str,
    pub event: Option<&'a str>,
    pub git_ref: Option<&'a str>,
    pub commit_sha: Option<&'a str>,
    pub outcome: &'a str,
    pub message: &'a str,
    pub deployment_id: Option<&'a str>,
}

macro_rules! repository_columns {
    () => {
        "id, project_name, url, branch, poll_seconds, key_id, nonce, ciphertext, last_commit, last_deployment_id, created_at_ms"
    };
}

macro_rules! delivery_columns {
    () => {
        "id, repository_id, received_at_ms, provider, event, git_ref, commit_sha, outcome, message, deployment_id"
    };
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("repository '{id}'"))
}

impl Store {
    pub async fn insert_repository(&self, new: &NewRepository<'_>) -> Result<RepositoryRecord> {
        let rec = RepositoryRecord {
            id: new.id.to_string(),
            project_name: new.project_name.to_string(),
            url: new.url.to_string(),
            branch: new.branch.to_string(),
            poll_seconds: new.poll_seconds,
            key_id: new.secret.key_id.clone(),
            nonce: new.secret.nonce.clone(),
            ciphertext: new.secret.ciphertext.clone(),
            last_commit: None,
            last_deployment_id: None,
            created_at_ms: now_ms(),
        };
        sqlx::query(concat!(
            "INSERT INTO repositories (",
            repository_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&rec.id)
        .bind(&rec.project_name)
        .bind(&rec.url)
        .bind(&rec.branch)
        .bind(rec.poll_seconds)
        .bind(&rec.key_id)
        .bind(&rec.nonce)
        .bind(&rec.ciphertext)
        .bind(&rec.last_commit)
        .bind(&rec.last_deployment_id)
        .bind(rec.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(rec)
    }

    pub async fn get_repository(&self, id: &str) -> Result<RepositoryRecord> {
        sqlx::query_as::<_, RepositoryRecord>(concat!(
            "SELECT ",
            repository_columns!(),
            " FROM repositories WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(id))
    }

    /// Every connection, newest first.
    pub async fn list_repositories(&self) -> Result<Vec<RepositoryRecord>> {
        Ok(sqlx::query_as::<_, RepositoryRecord>(concat!(
            "SELECT ",
            repository_columns!(),
            " FROM repositories ORDER BY created_at_ms DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Remove a connection and its deliveries; returns what it was.
    pub async fn delete_repository(&self, id: &str) -> Result<RepositoryRecord> {
        let mut tx = self.pool.begin().await?;
        let rec = sqlx::query_as::<_, RepositoryRecord>(concat!(
            "DELETE FROM repositories WHERE id = $1 RETURNING ",
            repository_columns!()
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(id))?;
        sqlx::query("DELETE FROM repository_deliveries WHERE repository_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Take `commit` as the connection's next deployment unless it is the last one deployed:
    /// true when this caller claimed it (so two pollers, or two servers sharing a database,
    /// never deploy the same head twice), false when it was already deployed or the
    /// connection is gone.
    pub async fn claim_repository_commit(&self, id: &str, commit: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE repositories SET last_commit = $1 WHERE id = $2 AND (last_commit IS NULL OR last_commit <> $1)",
        )
        .bind(commit)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record that the connection deployed `commit` as `deployment_id`.
    pub async fn set_repository_deployment(
        &self,
        id: &str,
        commit: &str,
        deployment_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE repositories SET last_commit = $1, last_deployment_id = $2 WHERE id = $3",
        )
        .bind(commit)
        .bind(deployment_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record a delivery, then delete the repository's deliveries beyond the newest
    /// [`DELIVERIES_KEPT`].
    pub async fn insert_delivery(&self, new: &NewDelivery<'_>) -> Result<DeliveryRecord> {
        let rec = DeliveryRecord {
            id: new_id("dlv"),
            repository_id: new.repository_id.to_string(),
            received_at_ms: now_ms(),
            provider: new.provider.to_string(),
            event: new.event.map(str::to_string),
            git_ref: new.git_ref.map(str::to_string),
            commit_sha: new.commit_sha.map(str::to_string),
            outcome: new.outcome.to_string(),
            message: new.message.to_string(),
            deployment_id: new.deployment_id.map(str::to_string),
        };
        sqlx::query(concat!(
            "INSERT INTO repository_deliveries (",
            delivery_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&rec.id)
        .bind(&rec.repository_id)
        .bind(rec.received_at_ms)
        .bind(&rec.provider)
        .bind(&rec.event)
        .bind(&rec.git_ref)
        .bind(&rec.commit_sha)
        .bind(&rec.outcome)
        .bind(&rec.message)
        .bind(&rec.deployment_id)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM repository_deliveries WHERE repository_id = $1 AND id NOT IN (SELECT id FROM repository_deliveries WHERE repository_id = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(&rec.repository_id)
        .bind(DELIVERIES_KEPT)
        .execute(&self.pool)
        .await?;
        Ok(rec)
    }

    /// A repository's deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        repository_id: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>> {
        Ok(sqlx::query_as::<_, DeliveryRecord>(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM repository_deliveries WHERE repository_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(repository_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Sealed {
        Sealed {
            key_id: "k".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
        }
    }

    fn delivery<'a>(repo: &'a str, message: &'a str) -> NewDelivery<'a> {
        NewDelivery {
            repository_id: repo,
            provider: "github",
            event: Some("push"),
            git_ref: None,
            commit_sha: None,
            outcome: "rejected",
            message,
            deployment_id: None,
        }
    }

    #[tokio::test]
    async fn connections_commits_and_capped_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(&dir.path().join("t.db")))
            .await
            .unwrap();
        let secret = sealed();
        for id in ["repo_a", "repo_b"] {
            store
                .insert_repository(&NewRepository {
                    id,
                    project_name: "p",
                    url: "/srv/p.git",
                    branch: "main",
                    poll_seconds: Some(30),
                    secret: &secret,
                })
                .await
                .unwrap();
        }
        assert_eq!(store.list_repositories().await.unwrap().len(), 2);

        // A commit is claimed once; a new one again.
        assert!(store.claim_repository_commit("repo_a", "c1").await.unwrap());
        assert!(!store.claim_repository_commit("repo_a", "c1").await.unwrap());
        assert!(store.claim_repository_commit("repo_a", "c2").await.unwrap());
        assert!(!store.claim_repository_commit("nope", "c2").await.unwrap());
        store
            .set_repository_deployment("repo_a", "c3", "dpl_1")
            .await
            .unwrap();
        let a = store.get_repository("repo_a").await.unwrap();
        assert_eq!(a.last_commit.as_deref(), Some("c3"));
        assert_eq!(a.last_deployment_id.as_deref(), Some("dpl_1"));

        // Only the newest DELIVERIES_KEPT stay, per repository.
        let n = DELIVERIES_KEPT as usize + 5;
        for i in 0..n {
            store
                .insert_delivery(&delivery("repo_a", &format!("m{i}")))
                .await
                .unwrap();
        }
        store
            .insert_delivery(&delivery("repo_b", "b"))
            .await
            .unwrap();
        let kept = store.list_deliveries("repo_a", 1000).await.unwrap();
        assert_eq!(kept.len(), DELIVERIES_KEPT as usize);
        assert_eq!(kept[0].message, format!("m{}", n - 1), "newest first");
        assert_eq!(kept.last().unwrap().message, "m5");
        assert_eq!(
            store.list_deliveries("repo_b", 1000).await.unwrap().len(),
            1
        );

        // Removing a connection removes its deliveries, not the other's.
        store.delete_repository("repo_a").await.unwrap();
        assert!(matches!(
            store.get_repository("repo_a").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store
            .list_deliveries("repo_a", 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.list_deliveries("repo_b", 10).await.unwrap().len(), 1);
        assert!(matches!(
            store.delete_repository("repo_a").await,
            Err(StoreError::NotFound(_))
        ));
    }
}
