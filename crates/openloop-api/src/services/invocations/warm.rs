//! Each deployment's warm process: started on demand in its jail, with its cgroup and the
//! network it is given.

use super::*;

/// Size of a warm process's own `/tmp` (each run mounts its own over it).
const WARM_TMP_BYTES: u64 = 64 << 20;
/// Processes a warm process holds beside the runs it forked: itself, its egress helper, and
/// the spare process of its next run.
const WARM_PIDS: u64 = 64;
/// Warm processes started by this server, to name each one's cgroup uniquely.
static WARM_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Invocations {
    /// The limits of a run's own cgroup.
    pub(super) fn run_limits(&self) -> Limits {
        Limits {
            memory_bytes: self.config.run_memory_mb << 20,
            pids: self.config.run_pids,
            cpu_shares: 1024,
        }
    }

    /// The warm process of a deployment, started if it is not running.
    pub async fn host_for(&self, dep: &Deployment) -> ApiResult<Arc<WarmHost>> {
        if let Some(h) = self.live_host(&dep.id) {
            return Ok(h);
        }
        let _guard = self.starting.lock().await;
        if let Some(h) = self.live_host(&dep.id) {
            return Ok(h);
        }
        let m = manifest_of(dep)?;
        let mut sandbox = PythonSandbox::new(&self.config.launcher, WARM_TMP_BYTES)
            .bind(Path::new(&m.venv), python::VENV, false)
            .bind(Path::new(&m.source_dir), python::APP, false)
            .bind(self.channels.socket_path(), python::ENGINE_SOCKET, false)
            .bind(&self.config.api_socket(), python::API_SOCKET, false);
        // Outbound through slirp4netns with the egress rules (the deployment's network policy,
        // or the defaults), and no network path to the host at all: the API is reached
        // through its socket.
        sandbox.network = Network::Outbound;
        if let Some(policy) = &m.network_policy {
            sandbox.egress = Some(self.network_policies.resolve(policy).await?);
        }
        let spec = HostSpec {
            deployment_id: dep.id.clone(),
            python: PathBuf::from(python::VENV).join("bin/python"),
            module_dir: Path::new(python::APP).join(&m.module_path),
            module_name: m.module_name.clone(),
            engine_socket: PathBuf::from(python::ENGINE_SOCKET),
            run_tmp_bytes: self.config.run_tmp_mb << 20,
            sandbox,
            // Unique per process: a restarted warm process never shares its predecessor's.
            cgroup_name: format!(
                "warm-{}-{}-{}",
                self.config.instance_tag(),
                dep.id,
                WARM_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            run_cgroup_prefix: format!("run-{}-", self.config.instance_tag()),
            run_limits: self.run_limits(),
            limits: Limits {
                memory_bytes: self.config.warm_memory_mb << 20,
                // A run's process stays in this cgroup until the server moves it into the
                // run's own (two processes each while it is being isolated).
                pids: WARM_PIDS + 2 * self.config.max_concurrent_runs as u64,
                cpu_shares: 1024,
            },
        };
        let host = WarmHost::start(spec, &self.channels)
            .await
            .map_err(|e| ApiError::Unavailable(format!("deployment {}: {e}", dep.id)))?;
        tracing::info!(deployment = %dep.id, pid = host.pid(), "warm process ready");
        lock(&self.hosts).insert(dep.id.clone(), (dep.project_name.clone(), host.clone()));
        Ok(host)
    }

    pub(super) fn live_host(&self, deployment_id: &str) -> Option<Arc<WarmHost>> {
        lock(&self.hosts)
            .get(deployment_id)
            .map(|(_, h)| h.clone())
            .filter(|h| h.is_alive())
    }
}
