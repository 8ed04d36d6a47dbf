//! Deploying a pushed commit of a connection (reported by a webhook or seen by polling)
//! through `Deployments::create`, recorded as a delivery either way it ends.

use super::{DeliveryOutcome, Provider, Repositories};
use crate::error::ApiResult;
use crate::services::deployments::CreateDeployment;
use openloop_store::repositories::{DeliveryRecord, RepositoryRecord};

impl Repositories {
    /// Deploy `commit` of `git_ref` for a connection and record the delivery.
    pub(super) async fn deploy(
        &self,
        repo: &RepositoryRecord,
        provider: Provider,
        event: Option<&str>,
        git_ref: &str,
        commit: &str,
    ) -> ApiResult<DeliveryRecord> {
        let created = self
            .deployments
            .create(CreateDeployment {
                source: repo.url.clone(),
                git_ref: Some(commit.to_string()),
                name: Some(repo.project_name.clone()),
            })
            .await;
        let dep = match created {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(repository = %repo.id, commit, error = %e, "push-to-deploy could not create the deployment");
                let message = format!("the deployment could not be created: {e}");
                if let Err(e) = self
                    .record(
                        repo,
                        provider,
                        event,
                        Some(git_ref),
                        Some(commit),
                        DeliveryOutcome::Failed,
                        &message,
                        None,
                    )
                    .await
                {
                    tracing::error!(repository = %repo.id, error = %e, "could not record a failed delivery");
                }
                return Err(e);
            }
        };
        self.store
            .set_repository_deployment(&repo.id, commit, &dep.id)
            .await?;
        tracing::info!(repository = %repo.id, provider = provider.as_str(), commit, deployment = %dep.id, "push-to-deploy: deploying");
        let message = format!(
            "deploying commit {} of {git_ref} to project {} as deployment {}",
            &commit[..12.min(commit.len())],
            repo.project_name,
            dep.id
        );
        self.record(
            repo,
            provider,
            event,
            Some(git_ref),
            Some(commit),
            DeliveryOutcome::Deployed,
            &message,
            Some(&dep.id),
        )
        .await
    }
}
