//! One run, from its slots to its recorded outcome: a token scoped to it, the deployment's
//! secrets, the hand-off to its warm process (`openloop_runner::run`), its logs, its
//! devboxes shut down, and the outcome recorded, redacted, and notified.

use crate::cluster::limits::freed_key;
use crate::invocations::{Invocations, Running};
use crate::logs::write_logs;
use crate::slots::{Permits, RunSlots};
use crate::stage::span;
use crate::{EngineError, EngineResult};
use openloop_runner::{run::RunOutcome, RunRequest};
use openloop_store::function_slots::SlotClaim;
use openloop_store::invocations::Invocation;
use openloop_sync::lock;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// How a run reaches its task.
pub(crate) struct Start {
    /// Its record, when this process just made it (not read back).
    pub record: Option<Invocation>,
    /// The slots it holds and the epoch it was recorded `running` under, when it already
    /// is (recorded so at admission, or claimed from the shared queue); else it is queued
    /// and its task takes slots and claims it.
    pub taken: Option<(Permits, i64)>,
}

impl Invocations {
    /// Run a queued invocation in the background; it outlives the request that made it.
    pub fn spawn(self: &Arc<Self>, id: String) {
        self.spawn_run(
            id,
            Start {
                record: None,
                taken: None,
            },
        )
    }

    /// Run an invocation in the background.
    pub(crate) fn spawn_run(self: &Arc<Self>, id: String, start: Start) {
        let this = Arc::clone(self);
        let queued = span("queue");
        tokio::spawn(async move {
            drop(queued);
            let mut epoch = start.taken.as_ref().map(|t| t.1);
            if let Err(e) = this.execute(&id, start, &mut epoch).await {
                tracing::error!(invocation = %id, error = %e, "invocation could not be run");
                let err = serde_json::json!({"type": "PlatformError", "message": e.to_string(), "traceback": null});
                let err = err.to_string();
                let _ = match epoch {
                    // Taken by this node: recorded only while it is still this node's.
                    Some(ep) => {
                        this.store
                            .finish_run(&id, this.node.owner_at(ep), "failure", None, Some(&err))
                            .await
                    }
                    // Never taken here: failed only while it is still queued (another node
                    // may have taken it meanwhile).
                    None => this.store.fail_queued(&id, &err).await,
                };
                this.notifier.invocation_changed(&id);
            }
        });
    }

    pub(crate) fn function_slots(&self, project: &str, function: &str) -> Option<Arc<Semaphore>> {
        let limit = self.config.max_concurrent_runs_per_function;
        if limit == 0 {
            return None;
        }
        let key = format!("{project}/{function}");
        Some(
            lock(&self.function_slots)
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone(),
        )
    }

    /// `epoch` is set once the run is this node's (the epoch it was taken under).
    async fn execute(&self, id: &str, start: Start, epoch: &mut Option<i64>) -> EngineResult<()> {
        let stopping = |_| EngineError::Unavailable("the server is stopping".into());
        let (queued, depth) = async {
            let queued = match start.record {
                Some(inv) => inv,
                None => self.store.get_invocation(id).await?,
            };
            let depth = self.depth_of(&queued).await?;
            EngineResult::Ok((queued, depth))
        }
        .instrument(span("read"))
        .await?;
        let function_slots = self.function_slots(&queued.project_name, &queued.function_name);
        let (permits, taken_under) = match start.taken {
            // Recorded as running with these slots (a cancel since then left its mark in
            // `running`, checked below before anything starts).
            Some(taken) => taken,
            None => loop {
                // Subscribed before the attempt, so a slot freed meanwhile is not missed.
                let mut freed = self.cluster_limit().map(|_| {
                    self.notifier
                        .subscribe(&freed_key(&queued.project_name, &queued.function_name))
                });
                let permits = Permits::take(&self.slots, function_slots.as_ref())
                    .instrument(span("slots"))
                    .await
                    .map_err(stopping)?;
                if self.queue.is_stopping() {
                    // Left queued: another node (or this one after its restart) runs it.
                    return Ok(());
                }
                let owner = self.node.owner();
                let claim = match self.cluster_limit() {
                    Some(limit) => {
                        self.store
                            .mark_running_within(
                                id,
                                &queued.project_name,
                                &queued.function_name,
                                owner,
                                limit,
                            )
                            .instrument(span("mark_running"))
                            .await?
                    }
                    None => {
                        if self
                            .store
                            .mark_invocation_running(id, owner)
                            .instrument(span("mark_running"))
                            .await?
                        {
                            SlotClaim::Taken
                        } else {
                            SlotClaim::NotQueued
                        }
                    }
                };
                match claim {
                    SlotClaim::Taken => break (permits, owner.epoch),
                    SlotClaim::Full => {
                        // Every slot of the function is held on some node: this node's slots
                        // go back while it waits for one.
                        drop(permits);
                        if let Some(f) = freed.as_mut() {
                            self.wait_for_freed_slot(f).await;
                        }
                    }
                    SlotClaim::NotQueued => {
                        // Canceled while queued, or taken by another node (or by this node's
                        // queue task, whose run of it may be in flight): only a cancel's mark
                        // is done with.
                        let mut running = lock(&self.running);
                        if matches!(running.get(id), Some(Running::CanceledEarly(_))) {
                            running.remove(id);
                        }
                        return Ok(());
                    }
                }
            },
        };
        *epoch = Some(taken_under);
        // Held until this returns, however it returns; lent to children while the run waits.
        let _in_flight = InFlight::enter(
            self,
            id,
            RunSlots::new(
                depth,
                queued.parent_invocation_id.clone(),
                self.slots.clone(),
                function_slots,
                permits,
            ),
        );
        self.notifier.invocation_changed(id);
        let inv = queued;
        let prepare = span("prepare");
        let dep = self
            .deployment(&inv.deployment_id)
            .instrument(prepare.clone())
            .await?;
        let host = self.host_for(&dep.dep).instrument(prepare.clone()).await?;
        // The deployment's secrets, read now: an update applies from the next run on. What the
        // run produces is stored with their values redacted.
        let given = self
            .ports
            .secrets
            .resolve(&dep.manifest.secrets)
            .instrument(prepare.clone())
            .await?;
        let redactor = given.redactor;
        let token = self.ports.tokens.issue(id);
        let mut env: BTreeMap<String, String> = given.env;
        env.extend([
            (
                "OPENLOOP_API_URL".to_string(),
                openloop_sandbox::python::API_URL.to_string(),
            ),
            ("OPENLOOP_TOKEN".to_string(), token.clone()),
            ("OPENLOOP_INVOCATION_ID".to_string(), id.to_string()),
        ]);
        let request: Value = serde_json::from_str(&inv.request).unwrap_or(Value::Null);
        {
            let mut running = lock(&self.running);
            if let Some(Running::CanceledEarly(_)) = running.remove(id) {
                // Canceled after it was marked running, before it reached its warm process:
                // it is recorded `canceled` already, and nothing of it may start.
                drop(running);
                self.ports.tokens.revoke(&token);
                self.notifier.invocation_changed(id);
                return Ok(());
            }
            running.insert(id.to_string(), Running::Host(host.clone()));
        }
        let (log_tx, log_rx) = openloop_runner::run::log_channel();
        let writer = tokio::spawn(write_logs(
            self.store.clone(),
            self.notifier.clone(),
            id.to_string(),
            log_rx,
            redactor.clone(),
        ));
        drop(prepare);
        let outcome = openloop_runner::run::run(
            &host,
            RunRequest {
                invocation_id: id.to_string(),
                function: inv.function_name.clone(),
                request,
                env,
                cgroup_name: format!("run-{}-{id}", self.config.instance_tag),
                limits: self.run_limits(),
                log_limits: self.config.run_logs,
            },
            log_tx,
        )
        .instrument(span("run"))
        .await;
        let _ = writer.instrument(span("logs_flush")).await;
        lock(&self.running).remove(id);
        self.ports.tokens.revoke(&token);
        if let Err(e) = self
            .ports
            .devboxes
            .shutdown_for_invocation(id)
            .instrument(span("devboxes"))
            .await
        {
            tracing::warn!(invocation = %id, error = %e, "could not shut down the run's devboxes");
        }
        let finish = span("finish");
        let owner = self.node.owner_at(taken_under);
        let (status, result, error) = match outcome {
            RunOutcome::Success(v) => ("success", Some(redactor.redact_json(v).to_string()), None),
            RunOutcome::Failure(e) => ("failure", None, Some(redactor.redact_json(e).to_string())),
        };
        let recorded = self
            .store
            .finish_run(id, owner, status, result.as_deref(), error.as_deref())
            .instrument(finish)
            .await?;
        if !recorded && self.node.epoch() != taken_under {
            tracing::warn!(invocation = %id, epoch = taken_under, "the run's outcome is not recorded: this node lost its lease meanwhile and another node took the run over");
        }
        self.notifier.invocation_changed(id);
        self.slot_freed(&inv.project_name, &inv.function_name);
        Ok(())
    }
}

/// A run in the table of runs in flight. Dropped when `execute` returns, however it returns:
/// the run leaves the table (and its parent's children) and its slots go back.
struct InFlight<'a> {
    table: &'a Mutex<HashMap<String, Arc<RunSlots>>>,
    queue: &'a crate::cluster::queue::QueueState,
    id: String,
    run: Arc<RunSlots>,
}

impl<'a> InFlight<'a> {
    fn enter(invocations: &'a Invocations, id: &str, run: Arc<RunSlots>) -> Self {
        let table = &invocations.in_flight;
        lock(table).insert(id.to_string(), run.clone());
        InFlight {
            table,
            queue: &invocations.queue,
            id: id.to_string(),
            run,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        {
            let mut m = lock(self.table);
            m.remove(&self.id);
            if let Some(parent) = self.run.parent.as_deref().and_then(|p| m.get(p)) {
                parent.remove_child(&self.id);
            }
        }
        self.run.end();
        // A slot is free: a run queued on another node may take it.
        self.queue.slot_freed();
    }
}
