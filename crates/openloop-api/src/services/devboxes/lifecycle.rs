//! A devbox's life after it starts: activity and the idle timer (shut down or suspend once
//! idle), waiting for a status, shutdown (one, a run's, all), and recovery after a restart.

use super::*;

impl Devboxes {
    /// Push the idle deadline of a devbox out by its keep-alive time.
    pub(super) fn touch(&self, live: &Live) {
        if live.keep_alive_ms > 0 {
            live.idle_deadline_ms
                .store(now_ms() + live.keep_alive_ms, Ordering::SeqCst);
            live.rearm.notify_one();
        }
    }

    /// Follow a live devbox: shut it down when idle past its deadline, and record a
    /// failure when its sandbox dies on its own (for example the agent was killed).
    pub(super) fn watch(self: &Arc<Self>, id: String, live: Arc<Live>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let deadline = live.idle_deadline_ms.load(Ordering::SeqCst);
                let sleep = async {
                    if deadline == 0 {
                        std::future::pending::<()>().await
                    }
                    let wait = (deadline - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await
                };
                tokio::select! {
                    reason = live.devbox.exited() => {
                        // Still this sandbox's devbox (not suspended meanwhile, nor resumed
                        // with a new sandbox under the same id).
                        let current = lock(&this.live)
                            .get(&id)
                            .is_some_and(|l| Arc::ptr_eq(l, &live));
                        if current {
                            let (code, message) = if live.devbox.oom_killed() {
                                ("out_of_memory", "the devbox ran out of memory".to_string())
                            } else {
                                ("execution_failed", reason)
                            };
                            this.stop(&id).await;
                            let _ = this.fail(&id, code, &message).await;
                        }
                        return;
                    }
                    _ = live.rearm.notified() => continue,
                    _ = sleep => {
                        if now_ms() < live.idle_deadline_ms.load(Ordering::SeqCst) {
                            continue;
                        }
                        if this.has_running_execution(&id) {
                            this.touch(&live);
                            continue;
                        }
                        match live.on_idle {
                            OnIdle::Suspend => {
                                let _ = this.suspend_now(&id, "suspended after being idle past its idle time").await;
                            }
                            OnIdle::Shutdown => {
                                let _ = this.shutdown(&id, live.idle_reason, "idle past its keep-alive time").await;
                            }
                        }
                        return;
                    }
                }
            }
        });
    }

    /// Wait until the devbox's status is one of `statuses`; `None` when `within` passed first.
    pub async fn wait_for_status(
        &self,
        id: &str,
        statuses: &[DevboxStatus],
        within: Duration,
    ) -> ApiResult<Option<DevboxView>> {
        let mut sub = self.notifier.subscribe(id);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rec = self.store.get_devbox(id).await?;
            if statuses.iter().any(|s| s.as_str() == rec.status) {
                return Ok(Some(self.view_of(&rec).await?));
            }
            if tokio::time::timeout_at(deadline, sub.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// Take a devbox out of service: no tunnel, no live sandbox, no executions (callers that
    /// hold one keep it), no quota; its final resource use is recorded. What is left, the
    /// slow part, is returned: [`Teardown::run`] shuts its sandbox down.
    pub(super) async fn detach(&self, id: &str) -> Teardown {
        // Its tunnel's URL answers 404 from now on.
        self.tunnels.remove(id);
        let live = lock(&self.live).remove(id);
        if let Some(l) = &live {
            self.record_usage(id, &l.devbox).await;
        }
        let executions: Vec<Arc<Execution>> = {
            let mut m = lock(&self.executions);
            let ids: Vec<String> = m
                .values()
                .filter(|e| e.devbox_id == id)
                .map(|e| e.id.clone())
                .collect();
            ids.iter().filter_map(|e| m.remove(e)).collect()
        };
        if !executions.is_empty() {
            lock(&self.by_command_id).retain(|(d, _), _| d != id);
        }
        self.release(id);
        // Its lifecycle lock is no longer needed (a holder keeps its own handle).
        lock(&self.ops).remove(id);
        Teardown {
            id: id.to_string(),
            devbox: live.map(|l| l.devbox.clone()),
            executions,
            output_dir: self.output_dir(id),
        }
    }

    /// Take a devbox out of service and shut its sandbox down.
    pub(super) async fn stop(&self, id: &str) {
        self.detach(id).await.run().await;
    }

    /// Shut a devbox down: kill everything in it, remove its layer and cgroups (a suspended
    /// devbox: its kept disk).
    pub async fn shutdown(&self, id: &str, reason: &str, message: &str) -> ApiResult<()> {
        let op = self.op_lock(id);
        let _one = op.lock().await;
        self.stop(id).await;
        if matches!(self.store.get_devbox(id).await, Ok(r) if r.status == "suspended") {
            self.remove_devbox_dir(id).await;
        }
        self.set_status(
            id,
            StatusChange {
                status: "shutdown",
                shutdown_reason: Some(reason),
                message: Some(message),
                ..Default::default()
            },
        )
        .await
    }

    /// Shut down every devbox a run created. The run's caller is waiting for its result, so
    /// only what makes each devbox gone for everyone happens before this returns: it is out
    /// of service (no command, file operation or tunnel reaches it) and recorded `shutdown`.
    /// Killing its sandbox and removing its layer, cgroups and output (about 10 ms a devbox,
    /// half of the seed example's run) finish in the background; [`shutdown_all`] waits for
    /// them, and a crash meanwhile leaves what a crash always leaves, cleaned at the next start.
    ///
    /// [`shutdown_all`]: Self::shutdown_all
    pub async fn shutdown_for_invocation(&self, invocation_id: &str) -> ApiResult<()> {
        // Every devbox being created or live is in `owners` (none outlives this process): a
        // run that holds none, the common case, costs no database round trip at its end.
        let run = Owner::Run(invocation_id.to_string());
        if !lock(&self.owners).values().any(|o| *o == run) {
            return Ok(());
        }
        for id in self.store.devbox_ids_of_invocation(invocation_id).await? {
            let op = self.op_lock(&id);
            // Held until the teardown is done: no lifecycle operation overlaps it.
            let one = op.lock_owned().await;
            let teardown = self.detach(&id).await;
            if teardown.devbox.is_none() {
                if let Ok(r) = self.store.get_devbox(&id).await {
                    if r.status == "suspended" {
                        self.remove_devbox_dir(&id).await;
                    }
                }
            }
            self.set_status(
                &id,
                StatusChange {
                    status: "shutdown",
                    shutdown_reason: Some("api_shutdown"),
                    message: Some("the invocation that created it ended"),
                    ..Default::default()
                },
            )
            .await?;
            let task = tokio::spawn(async move {
                teardown.run().await;
                drop(one);
            });
            let mut pending = lock(&self.teardowns);
            pending.retain(|t| !t.is_finished());
            pending.push(task);
        }
        Ok(())
    }

    /// After a restart: no sandbox survives, so clean their remains and records; suspended
    /// devboxes keep their disks and stay suspended. Unfinished snapshots are failed.
    pub async fn recover(&self) -> ApiResult<()> {
        let keep = self.keep_suspended().await?;
        let dir = self.config.devbox_dir();
        let ids = tokio::task::spawn_blocking(move || {
            openloop_sandbox::devbox::clean_leftovers_except(&dir, &keep)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !ids.is_empty() {
            tracing::info!(
                count = ids.len(),
                "removed devboxes left by a previous server process"
            );
        }
        self.store
            .shut_down_live_devboxes(
                "the server restarted; running devboxes do not survive a restart (suspended ones do)",
                self.config.scope(),
            )
            .await?;
        self.recover_snapshots().await?;
        self.recover_blueprints().await?;
        let outputs = self.config.exec_output_dir();
        if let Err(e) = tokio::fs::remove_dir_all(&outputs).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = %outputs.display(), "could not remove old execution output");
            }
        }
        Ok(())
    }

    pub async fn shutdown_all(&self) {
        let warm: Vec<Arc<Devbox>> = lock(&self.warm).drain(..).collect();
        for d in warm {
            d.shutdown().await;
        }
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            let _ = self
                .shutdown(&id, "api_shutdown", "the server stopped")
                .await;
        }
        let pending: Vec<tokio::task::JoinHandle<()>> = lock(&self.teardowns).drain(..).collect();
        for t in pending {
            let _ = t.await;
        }
    }
}

/// What is left of a devbox taken out of service ([`Devboxes::detach`]).
pub(super) struct Teardown {
    id: String,
    /// Its sandbox, if it was live.
    devbox: Option<Arc<Devbox>>,
    /// Its executions, taken out of the table (those still running end with the sandbox).
    executions: Vec<Arc<Execution>>,
    output_dir: PathBuf,
}

impl Teardown {
    /// Shut the sandbox down (kill everything in it, remove its layer and cgroups), then
    /// end the commands that did not end with it and remove their output.
    pub(super) async fn run(self) {
        if let Some(d) = &self.devbox {
            d.shutdown().await;
        }
        // Killed outside the table's lock (a kill takes the execution's own locks).
        for x in &self.executions {
            x.kill();
        }
        if let Err(e) = tokio::fs::remove_dir_all(&self.output_dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(devbox = %self.id, error = %e, "could not remove the devbox's execution output");
            }
        }
    }
}
