//! Network policies: a name, a description and the egress rules as one JSON document (the
//! API validates and interprets it; the store only keeps it).

use crate::{new_id, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NetworkPolicyRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// The egress rules, as JSON.
    pub egress: String,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

const SELECT: &str =
    "SELECT id, name, description, egress, create_time_ms, update_time_ms FROM network_policies";
const RETURNING: &str = "RETURNING id, name, description, egress, create_time_ms, update_time_ms";

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("network policy '{id}'"))
}

impl Store {
    pub async fn insert_network_policy(
        &self,
        name: &str,
        description: Option<&str>,
        egress: &str,
    ) -> Result<NetworkPolicyRecord> {
        let now = now_ms();
        let rec = NetworkPolicyRecord {
            id: new_id("np"),
            name: name.to_string(),
            description: description.map(str::to_string),
            egress: egress.to_string(),
            create_time_ms: now,
            update_time_ms: now,
        };
        sqlx::query(
            "INSERT INTO network_policies (id, name, description, egress, create_time_ms, update_time_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&rec.id)
        .bind(&rec.name)
        .bind(&rec.description)
        .bind(&rec.egress)
        .bind(rec.create_time_ms)
        .bind(rec.update_time_ms)
        .execute(&self.pool)
        .await?;
        Ok(rec)
    }

    pub async fn get_network_policy(&self, id: &str) -> Result<NetworkPolicyRecord> {
        sqlx::query_as::<_, NetworkPolicyRecord>(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Policies with exactly this name, newest first (names may be reused).
    pub async fn network_policies_named(&self, name: &str) -> Result<Vec<NetworkPolicyRecord>> {
        Ok(sqlx::query_as::<_, NetworkPolicyRecord>(&format!(
            "{SELECT} WHERE name = $1 ORDER BY id DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Newest first, paged by `starting_after` id; `name_part` matches any part of the name.
    pub async fn list_network_policies(
        &self,
        id: Option<&str>,
        name_part: Option<&str>,
        starting_after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NetworkPolicyRecord>> {
        let pattern = name_part.map(|n| format!("%{n}%"));
        Ok(sqlx::query_as::<_, NetworkPolicyRecord>(&format!(
            "{SELECT} WHERE ($1 IS NULL OR id = $1) AND ($2 IS NULL OR name LIKE $2) AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        ))
        .bind(id)
        .bind(pattern)
        .bind(starting_after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_network_policies(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM network_policies")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    pub async fn update_network_policy(
        &self,
        id: &str,
        name: &str,
        description: Option<&str>,
        egress: &str,
    ) -> Result<NetworkPolicyRecord> {
        sqlx::query_as::<_, NetworkPolicyRecord>(&format!(
            "UPDATE network_policies SET name = $1, description = $2, egress = $3, update_time_ms = $4 WHERE id = $5 {RETURNING}"
        ))
        .bind(name)
        .bind(description)
        .bind(egress)
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(id))
    }

    pub async fn delete_network_policy(&self, id: &str) -> Result<NetworkPolicyRecord> {
        sqlx::query_as::<_, NetworkPolicyRecord>(&format!(
            "DELETE FROM network_policies WHERE id = $1 {RETURNING}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(id))
    }
}
