//! After a restart: runs that were running are failed (or queued again when their function
//! is retryable), and queued ones run.

use crate::invocations::Invocations;
use crate::EngineResult;
use std::sync::Arc;

/// What a previous server process left: the invocations it was running and those still
/// queued, read before this process takes any request (so that no run of its own is among
/// them).
pub struct Leftovers {
    running: Vec<String>,
    queued: Vec<String>,
}

impl Invocations {
    /// The invocations a previous process left, to hand to [`Invocations::recover`]. Read
    /// before the server serves: recovery itself waits for the warm processes, and runs
    /// submitted meanwhile (recorded `running` at once when a slot is free) are not leftovers.
    pub async fn leftovers(&self) -> EngineResult<Leftovers> {
        Ok(Leftovers {
            running: self.store.invocation_ids_with_status("running").await?,
            queued: self.store.invocation_ids_with_status("queued").await?,
        })
    }

    /// After a restart: runs that were running are failed (or queued again when retryable),
    /// queued ones run.
    pub async fn recover(self: &Arc<Self>, left: Leftovers) -> EngineResult<()> {
        let mut queued = left.queued;
        for id in left.running {
            let inv = self.store.get_invocation(&id).await?;
            let retryable = match self.deployment(&inv.deployment_id).await {
                Ok(l) => l
                    .manifest
                    .function(&inv.function_name)
                    .map(|f| f.retryable)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if retryable && self.store.requeue_invocation(&id).await? {
                tracing::info!(invocation = %id, "re-queued a retryable run cut short by the restart");
                queued.push(id);
                continue;
            }
            let err = serde_json::json!({
                "type": "ServerRestarted",
                "message": "the server stopped while this invocation was running; invoke it again (or mark the function retryable)",
                "traceback": null,
            });
            self.store
                .finish_invocation(&id, "failure", None, Some(&err.to_string()))
                .await?;
        }
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "resuming queued invocations");
        }
        for id in queued {
            self.spawn(id);
        }
        Ok(())
    }
}
