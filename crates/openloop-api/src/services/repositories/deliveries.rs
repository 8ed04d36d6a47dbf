//! A connection's deliveries: recording one (a refused one with its error), and listing
//! them.

use super::{webhook, DeliveryList, DeliveryOutcome, DeliveryView, Provider, Repositories};
use crate::error::{ApiError, ApiResult};
use openloop_store::repositories::{
    DeliveryRecord, NewDelivery, RepositoryRecord, DELIVERIES_KEPT,
};

impl Repositories {
    /// A repository's deliveries, newest first (at most `limit`, at most 100).
    pub async fn deliveries(&self, id: &str, limit: Option<i64>) -> ApiResult<DeliveryList> {
        self.store.get_repository(id).await?;
        let limit = limit.unwrap_or(DELIVERIES_KEPT).clamp(1, DELIVERIES_KEPT);
        Ok(DeliveryList {
            deliveries: self
                .store
                .list_deliveries(id, limit)
                .await?
                .into_iter()
                .map(DeliveryView::of)
                .collect::<ApiResult<_>>()?,
        })
    }

    /// Record a delivery.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record(
        &self,
        repo: &RepositoryRecord,
        provider: Provider,
        event: Option<&str>,
        git_ref: Option<&str>,
        commit: Option<&str>,
        outcome: DeliveryOutcome,
        message: &str,
        deployment_id: Option<&str>,
    ) -> ApiResult<DeliveryRecord> {
        Ok(self
            .store
            .insert_delivery(&NewDelivery {
                repository_id: &repo.id,
                provider: provider.as_str(),
                event,
                git_ref,
                commit_sha: commit,
                outcome: outcome.as_str(),
                message,
                deployment_id,
            })
            .await?)
    }

    /// Record a delivery that is refused (`Rejected`) or cannot be handled (`Failed`), and
    /// give back its error. A failure to record is logged; the error stands.
    pub(super) async fn refuse(
        &self,
        repo: &RepositoryRecord,
        envelope: &webhook::Envelope,
        outcome: DeliveryOutcome,
        error: ApiError,
    ) -> ApiError {
        let message = error.to_string();
        if let Err(e) = self
            .record(
                repo,
                envelope.provider,
                envelope.event.as_deref(),
                None,
                None,
                outcome,
                &message,
                None,
            )
            .await
        {
            tracing::error!(repository = %repo.id, error = %e, "could not record a refused delivery");
        }
        error
    }
}
