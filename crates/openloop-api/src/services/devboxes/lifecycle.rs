//! A devbox's life after it starts: activity and the idle timer (shut down or suspend once
//! idle), waiting for a status, shutdown (one, a run's, all), and recovery after a restart.

use super::*;

/// Run devboxes' teardowns left to the background at most at once (see
/// [`Devboxes::shutdown_for_invocation`]); past this, a run's end tears its devboxes down itself.
const MAX_PENDING_TEARDOWNS: usize = 16;

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

    /// Take a devbox out of service at once: its tunnel's URL answers 404, and no request
    /// finds its sandbox live (a command, a file operation, a suspend or a snapshot is refused).
    /// Nothing here awaits, so no caller can be cancelled between this and [`finish_stop`].
    ///
    /// [`finish_stop`]: Self::finish_stop
    fn take_out_of_service(&self, id: &str) -> Option<Arc<Live>> {
        self.tunnels.remove(id);
        lock(&self.live).remove(id)
    }

    /// The rest of stopping a devbox taken out of service (its final resource use recorded
    /// already): its sandbox shut down (everything in it killed, its layer and cgroups
    /// removed), then its executions ended and forgotten, its output removed, its quota
    /// released.
    async fn finish_stop(&self, id: &str, live: Option<Arc<Live>>) {
        if let Some(l) = live {
            l.devbox.shutdown().await;
        }
        let gone: Vec<Arc<Execution>> = {
            let mut m = lock(&self.executions);
            let ids: Vec<String> = m
                .values()
                .filter(|e| e.devbox_id == id)
                .map(|e| e.id.clone())
                .collect();
            ids.iter().filter_map(|e| m.remove(e)).collect()
        };
        // Killed outside the map's lock (a kill takes the execution's own locks).
        for x in &gone {
            x.kill();
        }
        if !gone.is_empty() {
            lock(&self.by_command_id).retain(|(d, _), _| d != id);
        }
        let dir = self.output_dir(id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(devbox = %id, error = %e, "could not remove the devbox's execution output");
            }
        }
        self.release(id);
        // Its lifecycle lock is no longer needed (a holder keeps its own handle).
        lock(&self.ops).remove(id);
    }

    pub(super) async fn stop(&self, id: &str) {
        let live = self.take_out_of_service(id);
        if let Some(l) = &live {
            self.record_usage(id, &l.devbox).await;
        }
        self.finish_stop(id, live).await;
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
    /// of service (no command, file operation, lifecycle operation or tunnel reaches it) and
    /// recorded `shutdown`. The rest of [`stop`](Self::stop), its sandbox's teardown (about
    /// 10 ms a devbox, half of the seed example's run), finishes in a task that holds the
    /// devbox's lifecycle lock (later operations on it wait, then find it shut down) and the
    /// snapshot gate for reading (a snapshot or blueprint under its overlay is not deleted
    /// before it is unmounted). [`shutdown_all`] waits for those tasks; while
    /// [`MAX_PENDING_TEARDOWNS`] are unfinished, or once the server is stopping, a teardown
    /// happens here instead, so a stream of runs cannot pile up sandboxes that no run or
    /// quota counts any more.
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
            let one = op.lock_owned().await;
            let gate = self.snapshot_gate.clone().read_owned().await;
            // Read now: the record says `shutdown` before a background teardown looks.
            let running = lock(&self.live).get(&id).cloned();
            let suspended = running.is_none()
                && matches!(self.store.get_devbox(&id).await, Ok(r) if r.status == "suspended");
            // Its final resource use, recorded here rather than by the teardown: the database
            // writes on this run's path would otherwise wait for the teardown's.
            if let Some(l) = &running {
                self.record_usage(&id, &l.devbox).await;
            }
            let live = self.take_out_of_service(&id);
            let this = self.me.upgrade();
            let background = {
                let mut pending = lock(&self.teardowns);
                pending.retain(|t| !t.is_finished());
                match this {
                    Some(this)
                        if pending.len() < MAX_PENDING_TEARDOWNS
                            && !self.closing.load(Ordering::SeqCst) =>
                    {
                        let id = id.clone();
                        pending.push(tokio::spawn(async move {
                            this.finish_shutdown(&id, live, suspended).await;
                            drop(gate);
                            drop(one);
                        }));
                        None
                    }
                    _ => Some((live, gate, one)),
                }
            };
            if let Some((live, gate, one)) = background {
                self.finish_shutdown(&id, live, suspended).await;
                drop(gate);
                drop(one);
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
        }
        Ok(())
    }

    /// [`finish_stop`](Self::finish_stop) for a shutdown; a suspended devbox's kept disk goes
    /// too.
    async fn finish_shutdown(&self, id: &str, live: Option<Arc<Live>>, suspended: bool) {
        self.finish_stop(id, live).await;
        if suspended {
            self.remove_devbox_dir(id).await;
        }
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
        self.closing.store(true, Ordering::SeqCst);
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
        // Teardowns of runs that ended before `closing` was set (later ones happen inline).
        loop {
            let pending: Vec<tokio::task::JoinHandle<()>> =
                lock(&self.teardowns).drain(..).collect();
            if pending.is_empty() {
                break;
            }
            for t in pending {
                let _ = t.await;
            }
        }
    }
}
