//! What a devbox used, recorded as it stopped (its sandbox and cgroups are gone after that).

use crate::{now_ms, Result, Store};

/// Figures measured as a devbox stopped; `None` where the host offered none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRecord {
    pub cpu_usage_ns: Option<i64>,
    pub memory_peak_bytes: Option<i64>,
    pub disk_used_bytes: Option<i64>,
}

impl Store {
    /// Record (or replace) what a devbox used.
    pub async fn record_devbox_usage(&self, devbox_id: &str, usage: UsageRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO devbox_usage (devbox_id, cpu_usage_ns, memory_peak_bytes, disk_used_bytes, recorded_at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (devbox_id) DO UPDATE SET cpu_usage_ns = excluded.cpu_usage_ns, memory_peak_bytes = excluded.memory_peak_bytes, disk_used_bytes = excluded.disk_used_bytes, recorded_at_ms = excluded.recorded_at_ms",
        )
        .bind(devbox_id)
        .bind(usage.cpu_usage_ns)
        .bind(usage.memory_peak_bytes)
        .bind(usage.disk_used_bytes)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What a stopped devbox used, if it was recorded.
    pub async fn devbox_usage(&self, devbox_id: &str) -> Result<Option<UsageRecord>> {
        Ok(sqlx::query_as::<_, UsageRecord>(
            "SELECT cpu_usage_ns, memory_peak_bytes, disk_used_bytes FROM devbox_usage WHERE devbox_id = $1",
        )
        .bind(devbox_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
