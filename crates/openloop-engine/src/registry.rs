//! The registry of warm processes: each deployment's, started on demand in its jail with
//! its cgroup and the network it is given; and the deployments' parsed manifests, which
//! never change once deployed.

use crate::invocations::{manifest_of, Invocations, Loaded};
use crate::{EngineError, EngineResult};
use openloop_runner::{HostSpec, WarmHost};
use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::jail::Network;
use openloop_sandbox::python::{self, PythonSandbox};
use openloop_store::deployments::Deployment;
use openloop_sync::lock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size of a warm process's own `/tmp` (each run mounts its own over it).
const WARM_TMP_BYTES: u64 = 64 << 20;
/// Processes a warm process holds beside the runs it forked: itself, its egress helper, and
/// the two spare processes of its next runs.
const WARM_PIDS: u64 = 64;
/// Warm processes started by this server, to name each one's cgroup uniquely.
static WARM_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Invocations {
    fn cache(&self, dep: &Deployment) -> EngineResult<Arc<Loaded>> {
        let loaded = Arc::new(Loaded {
            manifest: manifest_of(dep)?,
            dep: dep.clone(),
        });
        if dep.status == "deployed" {
            lock(&self.loaded).insert(dep.id.clone(), loaded.clone());
        }
        Ok(loaded)
    }

    /// A deployed deployment and its manifest (from memory after the first read).
    pub(crate) async fn deployment(&self, id: &str) -> EngineResult<Arc<Loaded>> {
        let cached = lock(&self.loaded).get(id).cloned();
        if let Some(l) = cached {
            return Ok(l);
        }
        self.cache(&self.store.get_deployment(id).await?)
    }

    /// The deployment serving a project, if any.
    pub(crate) async fn active_deployment(
        &self,
        project: &str,
    ) -> EngineResult<Option<Arc<Loaded>>> {
        let known = lock(&self.active).get(project).cloned();
        if let Some(id) = known {
            return self.deployment(&id).await.map(Some);
        }
        let Some(dep) = self.store.active_deployment(project).await? else {
            return Ok(None);
        };
        lock(&self.active).insert(project.to_string(), dep.id.clone());
        self.cache(&dep).map(Some)
    }

    /// Make `dep` the one warm process of its project. Older processes of the project leave
    /// the table now and stop when their last run ends (runs hold their own reference).
    pub async fn activate(&self, dep: &Deployment) -> EngineResult<()> {
        self.host_for(dep).await?;
        lock(&self.active).insert(dep.project_name.clone(), dep.id.clone());
        lock(&self.hosts).retain(|id, (project, _)| id == &dep.id || project != &dep.project_name);
        Ok(())
    }

    /// The limits of a run's own cgroup.
    pub(crate) fn run_limits(&self) -> Limits {
        Limits {
            memory_bytes: self.config.run_memory_mb << 20,
            pids: self.config.run_pids,
            cpu_shares: 1024,
        }
    }

    /// The warm process of a deployment, started if it is not running.
    pub async fn host_for(&self, dep: &Deployment) -> EngineResult<Arc<WarmHost>> {
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
            .bind(&self.config.api_socket, python::API_SOCKET, false);
        // Outbound through slirp4netns with the egress rules (the deployment's network policy,
        // or the defaults), and no network path to the host at all: the API is reached
        // through its socket.
        sandbox.network = Network::Outbound;
        if let Some(policy) = &m.network_policy {
            sandbox.egress = Some(self.ports.network_policies.resolve(policy).await?);
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
                self.config.instance_tag,
                dep.id,
                WARM_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            run_cgroup_prefix: format!("run-{}-", self.config.instance_tag),
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
            .map_err(|e| EngineError::Unavailable(format!("deployment {}: {e}", dep.id)))?;
        tracing::info!(deployment = %dep.id, pid = host.pid(), "warm process ready");
        lock(&self.hosts).insert(dep.id.clone(), (dep.project_name.clone(), host.clone()));
        Ok(host)
    }

    pub(crate) fn live_host(&self, deployment_id: &str) -> Option<Arc<WarmHost>> {
        lock(&self.hosts)
            .get(deployment_id)
            .map(|(_, h)| h.clone())
            .filter(|h| h.is_alive())
    }
}
