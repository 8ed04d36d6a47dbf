//! What a devbox has used (Runloop's `DevboxResourceUsageView`): its allotment times the time
//! it was up, as Runloop counts it, and what it really used while it runs, from its cgroups
//! (CPU time, memory now and at its peak) and its own disk.

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
        let measured = lock(&self.live)
            .get(id)
            .filter(|l| l.devbox.exit_reason().is_none())
            .map(|l| l.devbox.clone());
        let measured = match measured {
            Some(d) => tokio::task::spawn_blocking(move || d.usage())
                .await
                .unwrap_or_default(),
            None => openloop_sandbox::Usage::default(),
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
