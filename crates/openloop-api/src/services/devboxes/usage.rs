//! What a devbox has used (Runloop's `DevboxResourceUsageView`): its allotment times the time
//! it was up, as Runloop counts it, and what it really used, from its cgroups (CPU time,
//! memory now and at its peak) and its own disk: measured while it runs, and recorded as it
//! stops (`devbox_usage`), so a stopped devbox still answers its CPU time, peak and disk use.

use super::*;
use crate::model::ResourceUsageView;
use openloop_store::devboxes::Transition;

/// Statuses in which a devbox is not up (its time does not count as active).
const NOT_ACTIVE: [&str; 3] = ["suspended", "shutdown", "failure"];

impl Devboxes {
    pub async fn usage(&self, id: &str, principal: &Principal) -> ApiResult<ResourceUsageView> {
        let rec = self.authorized(id, principal).await?;
        let transitions = self.store.devbox_transitions(id).await?;
        let spec: Value = serde_json::from_str(&rec.spec).unwrap_or(Value::Null);
        // The size it was given, from what it asked for (checked when it was created).
        let asked = CreateDevbox {
            launch_parameters: spec
                .get("launch_parameters")
                .cloned()
                .and_then(|p| serde_json::from_value(p).ok()),
            network: spec
                .get("network")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Default::default()
        };
        let res = self.resources(&asked)?;
        let now = now_ms();
        let end = rec.ended_at_ms.unwrap_or(now);
        let elapsed_ms = (end - rec.created_at_ms).max(0);
        let active_ms = active_ms(&transitions, end);
        let vcpus = res.limits.cpu_shares as f64 / 1024.0;
        let memory_gb = res.limits.memory_bytes as f64 / (1u64 << 30) as f64;
        let disk_gb = (res.disk_bytes >> 30) as f64;
        let secs = |ms: i64| ms as f64 / 1000.0;
        let live = lock(&self.live)
            .get(id)
            .filter(|l| l.devbox.exit_reason().is_none())
            .map(|l| l.devbox.clone());
        let measured = match live {
            Some(d) => measure(d).await,
            // Stopped: what was recorded as it stopped (nothing is in use any more).
            None => match self.store.devbox_usage(id).await? {
                Some(r) => openloop_sandbox::Usage {
                    cpu_usage_ns: r.cpu_usage_ns.map(|v| v as u64),
                    memory_peak_bytes: r.memory_peak_bytes.map(|v| v as u64),
                    disk_used_bytes: r.disk_used_bytes.map(|v| v as u64),
                    ..Default::default()
                },
                None => openloop_sandbox::Usage::default(),
            },
        };
        Ok(ResourceUsageView {
            id: rec.id.clone(),
            status: DevboxStatus::parse(&rec.status)?,
            start_time_ms: rec.created_at_ms,
            end_time_ms: rec.ended_at_ms,
            total_elapsed_seconds: elapsed_ms / 1000,
            total_active_seconds: active_ms / 1000,
            vcpu_seconds: (secs(active_ms) * vcpus).round() as i64,
            memory_gb_seconds: (secs(active_ms) * memory_gb).round() as i64,
            disk_gb_seconds: (secs(elapsed_ms) * disk_gb).round() as i64,
            cpu_seconds_used: measured.cpu_usage_ns.map(|ns| ns as f64 / 1e9),
            memory_used_bytes: measured.memory_bytes,
            memory_peak_bytes: measured.memory_peak_bytes,
            disk_used_bytes: measured.disk_used_bytes,
            disk_size_bytes: measured.disk_size_bytes.unwrap_or(res.disk_bytes),
            vcpus,
            memory_limit_bytes: res.limits.memory_bytes,
        })
    }
}

impl Devboxes {
    /// Record what a devbox used, just before its sandbox goes (see [`Devboxes::usage`]).
    pub(super) async fn record_usage(&self, id: &str, devbox: &Arc<Devbox>) {
        let u = measure(devbox.clone()).await;
        let as_i64 = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        let record = openloop_store::devbox_usage::UsageRecord {
            cpu_usage_ns: as_i64(u.cpu_usage_ns),
            memory_peak_bytes: as_i64(u.memory_peak_bytes),
            disk_used_bytes: as_i64(u.disk_used_bytes),
        };
        if let Err(e) = self.store.record_devbox_usage(id, record).await {
            tracing::warn!(devbox = %id, error = %e, "could not record the devbox's resource usage");
        }
    }
}

/// Read a devbox's cgroup and disk figures off the async threads.
async fn measure(devbox: Arc<Devbox>) -> openloop_sandbox::Usage {
    tokio::task::spawn_blocking(move || devbox.usage())
        .await
        .unwrap_or_default()
}

/// Milliseconds spent in statuses where the devbox is up, from its transitions (oldest
/// first) until `end`.
fn active_ms(transitions: &[Transition], end: i64) -> i64 {
    let mut total = 0;
    for (i, t) in transitions.iter().enumerate() {
        let until = transitions
            .get(i + 1)
            .map(|n| n.transition_time_ms)
            .unwrap_or(end);
        if !NOT_ACTIVE.contains(&t.status.as_str()) {
            total += (until - t.transition_time_ms).max(0);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(status: &str, at: i64) -> Transition {
        Transition {
            status: status.into(),
            transition_time_ms: at,
            failure_reason: None,
        }
    }

    #[test]
    fn suspended_and_ended_time_is_not_active() {
        let ts = [
            t("provisioning", 0),
            t("running", 100),
            t("suspended", 1_100),
            t("running", 5_000),
            t("shutdown", 6_000),
        ];
        assert_eq!(active_ms(&ts, 9_000), 100 + 1_000 + 1_000);
        // Still running: counts up to now.
        assert_eq!(active_ms(&ts[..2], 2_100), 2_100);
        assert_eq!(active_ms(&[], 5), 0);
    }
}
