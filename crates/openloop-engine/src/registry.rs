//! The registry of warm processes: each deployment's, started on demand in its jail with
//! its cgroup and the network it is given; and the deployments' parsed manifests, which
//! never change once deployed.

use crate::invocations::{manifest_of, Invocations, Loaded};
use crate::{EngineError, EngineResult};
use openloop_deploy::Manifest;
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
/// the six spare processes of its next runs (each two processes while it is prepared).
const WARM_PIDS: u64 = 64;
/// Memory each run's process leaves charged to its warm process's cgroup: the pages it
/// copied while it was forked and isolated, before the server moved it into its run cgroup
/// (measured here at about 2.3 MB: CPython's after-fork work, the run's set-up, registering).
/// Neither cgroup v1 (charge moving is gone from current kernels) nor v2 moves those charges
/// with the process, so without this allowance a few hundred runs at once would push the
/// warm process past its own limit and the kernel would kill it, failing every run.
const RUN_START_BYTES: u64 = 4 << 20;
/// Warm processes started by this server, to name each one's cgroup uniquely.
static WARM_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Invocations {
    async fn cache(&self, dep: &Deployment) -> EngineResult<Arc<Loaded>> {
        let loaded = Arc::new(Loaded {
            manifest: self.local_manifest(dep).await?,
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
        self.cache(&self.store.get_deployment(id).await?).await
    }

    /// A deployment's manifest as this node runs it. A deployment another node of the
    /// cluster built is built here first (once; see [`crate::ports::Builds`]): its stored
    /// manifest names that node's paths.
    async fn local_manifest(&self, dep: &Deployment) -> EngineResult<Manifest> {
        let m = manifest_of(dep)?;
        if !self.built_elsewhere(dep, &m) {
            return Ok(m);
        }
        let _one_at_a_time = self.materializing.lock().await;
        if let Some(l) = lock(&self.loaded).get(&dep.id).cloned() {
            return Ok(l.manifest.clone());
        }
        tracing::info!(deployment = %dep.id, built_by = ?dep.node_id, "building a deployment another node built");
        self.ports.builds.local_manifest(dep).await
    }

    fn built_elsewhere(&self, dep: &Deployment, m: &Manifest) -> bool {
        self.node.clustered()
            && dep.status == "deployed"
            && !(dep.node_id.as_deref() == Some(self.node.id())
                && Path::new(&m.venv).exists()
                && Path::new(&m.source_dir).exists())
    }

    /// Start the warm processes of the live deployments this node built, after a restart.
    /// (A deployment another node built is built here on its first run, not before.)
    pub async fn warm_up(&self) {
        let deps = match self.store.active_deployments().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the live deployments");
                return;
            }
        };
        for d in deps {
            if self.node.clustered() && d.node_id.as_deref() != Some(self.node.id()) {
                continue;
            }
            if let Err(e) = self.host_for(&d).await {
                tracing::warn!(deployment = %d.id, error = %e, "could not start the warm process");
            }
        }
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
        self.cache(&dep).await.map(Some)
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
        let cached = lock(&self.loaded).get(&dep.id).cloned();
        let m = match cached {
            Some(l) => l.manifest.clone(),
            None => self.local_manifest(dep).await?,
        };
        let mut sandbox = PythonSandbox::new(&self.config.launcher, WARM_TMP_BYTES)
            .with_venv_interpreter(Path::new(&m.venv))
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
                memory_bytes: (self.config.warm_memory_mb << 20)
                    + RUN_START_BYTES * (self.config.max_concurrent_runs as u64 + 16),
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
