//! After a restart: runs that were running are failed (or queued again when their function
//! is retryable), and queued ones run.

use crate::invocations::Invocations;
use crate::EngineResult;
use std::sync::Arc;

impl Invocations {
    /// After a restart: runs that were running are failed, queued ones run.
    pub async fn recover(self: &Arc<Self>) -> EngineResult<()> {
        for id in self.store.invocation_ids_with_status("running").await? {
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
        let queued = self.store.invocation_ids_with_status("queued").await?;
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "resuming queued invocations");
        }
        for id in queued {
            self.spawn(id);
        }
        Ok(())
    }
}
