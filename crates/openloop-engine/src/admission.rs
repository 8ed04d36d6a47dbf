//! Admission: checking a new invocation (its deployment, function, call depth and request
//! schema) and recording it, running at once when a slot is free, else queued.

use crate::invocations::Invocations;
use crate::lifecycle::Start;
use crate::notify::{ANY_INVOCATION, QUEUED};
use crate::slots::Permits;
use crate::stage::span;
use crate::{EngineError, EngineResult};
use openloop_store::invocations::{Commit, Invocation};
use openloop_store::now_ms;
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

/// When the caller of [`Invocations::submit`] is answered, which decides how its record is
/// committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// With the record as created (`invoke_async`, the dashboard's form): it is committed as
    /// durably as the database commits anything ([`Commit::Durable`]) before `submit` returns.
    Recorded,
    /// With the run's outcome (`invoke_sync`): on PostgreSQL the record reaches the disk with
    /// the outcome's commit, which comes before the answer ([`Commit::Deferred`]), unless
    /// `flush_run_start` is set. Until then the record is in PostgreSQL's memory: visible to
    /// every node and safe from an Openloop crash, but not from a crash of PostgreSQL or its
    /// machine, which would lose the record of a run in flight (its caller gets an error).
    Finished,
}

impl Invocations {
    /// Check and record a new invocation, then queue it. Returns it as created.
    pub async fn submit(
        self: &Arc<Self>,
        project: &str,
        function: &str,
        request: Value,
        parent: Option<String>,
        reply: Reply,
    ) -> EngineResult<Invocation> {
        let commit = match reply {
            Reply::Finished if !self.config.flush_run_start => Commit::Deferred,
            _ => Commit::Durable,
        };
        let loaded = self.active_deployment(project).await?.ok_or_else(|| {
            EngineError::NotFound(format!(
                "project '{project}' not found: it has no successful deployment (deploy it with `openloop deploy`)"
            ))
        })?;
        let (dep, manifest) = (&loaded.dep, &loaded.manifest);
        let Some(spec) = manifest.function(function) else {
            let names: Vec<&str> = manifest.functions.iter().map(|f| f.name.as_str()).collect();
            return Err(EngineError::NotFound(format!(
                "function '{function}' not found in project '{project}'; it has: {}",
                names.join(", ")
            )));
        };
        if !request.is_object() {
            return Err(EngineError::Validation(
                "`request` must be a JSON object of the function's parameters".into(),
            ));
        }
        if let Some(caller) = &parent {
            let depth = self.depth_of_run(caller).await? + 1;
            if depth > self.config.max_call_depth {
                return Err(EngineError::CallDepthExceeded {
                    target: format!("{project}/{function}"),
                    depth,
                    limit: self.config.max_call_depth,
                });
            }
        }
        // A request whose JSON types decide it is valid as it stands; any other is checked by
        // pydantic in the deployment's warm process (a round trip), and a violation answers
        // 400 with nothing recorded.
        // The warm process is started (or found) either way: a deployment whose process cannot
        // start answers that now, not with a failed run.
        let host = self.host_for(dep).await?;
        if !spec.plainly_valid(&request) {
            let errors = host
                .validate(function, &request)
                .instrument(span("validate"))
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            if !errors.is_empty() {
                let text: Vec<String> = errors
                    .iter()
                    .map(|e| format!("request.{}: {}", e.field, e.message))
                    .collect();
                return Err(EngineError::Validation(format!(
                    "the request does not match the schema of {project}/{function}: {}",
                    text.join("; ")
                )));
            }
        }
        // With a slot free now, the run is recorded as running at once (one statement, not
        // an insert and then an update); otherwise it waits in the queue for one.
        let mut permits =
            Permits::try_take(&self.slots, self.function_slots(project, function).as_ref());
        let created_at_ms = now_ms();
        let inv = Invocation {
            id: openloop_store::new_id("inv"),
            project_name: project.to_string(),
            function_name: function.to_string(),
            deployment_id: dep.id.clone(),
            status: if permits.is_some() {
                "running"
            } else {
                "queued"
            }
            .into(),
            request: request.to_string(),
            result: None,
            error: None,
            parent_invocation_id: parent,
            created_at_ms,
            started_at_ms: permits.as_ref().map(|_| created_at_ms),
            ended_at_ms: None,
        };
        let owner = self.node.owner();
        let mut inv = inv;
        match (permits.is_some(), self.cluster_limit()) {
            // In a cluster with a per-function limit, the database decides (every node's runs
            // of the function count).
            (true, Some(limit)) => {
                let running = self
                    .store
                    .insert_invocation_within(&inv, owner, limit, commit)
                    .instrument(span("insert"))
                    .await?;
                if !running {
                    permits = None;
                    inv.status = "queued".into();
                    inv.started_at_ms = None;
                }
            }
            _ => {
                self.store
                    .insert_invocation(&inv, permits.as_ref().map(|_| owner), commit)
                    .instrument(span("insert"))
                    .await?
            }
        }
        self.notifier.notify(ANY_INVOCATION);
        if permits.is_none() {
            // Queued: any node with a free slot may take it (cluster mode).
            self.notifier.notify(QUEUED);
        }
        if let Some(caller) = inv
            .parent_invocation_id
            .as_deref()
            .and_then(|p| self.run_slots(p))
        {
            caller.add_child(&inv.id);
        }
        self.spawn_run(
            inv.id.clone(),
            Start {
                record: Some(inv.clone()),
                taken: permits.map(|p| (p, owner.epoch)),
            },
        );
        Ok(inv)
    }
}
