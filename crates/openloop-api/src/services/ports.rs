//! The API's services as the run engine sees them (`openloop_engine::ports`): run tokens,
//! a run's devboxes, secrets and network policies, each behind the narrow trait the engine
//! asks for. Their errors pass through the engine unchanged ([`EngineError::Port`]) and come
//! back out as the same [`ApiError`].

use crate::auth::Tokens;
use crate::error::ApiError;
use crate::services::devboxes::Devboxes;
use crate::services::network_policies::NetworkPolicies;
use crate::services::secrets::{Redactor, Secrets};
use openloop_engine::ports::{self, BoxFuture, RunSecrets};
use openloop_engine::{EngineError, EngineResult};
use openloop_sandbox::egress::EgressPolicy;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

fn port(e: ApiError) -> EngineError {
    EngineError::Port(Box::new(e))
}

impl ports::RunTokens for Tokens {
    fn issue(&self, invocation_id: &str) -> String {
        Tokens::issue(self, invocation_id)
    }
    fn revoke(&self, token: &str) {
        Tokens::revoke(self, token)
    }
}

impl ports::RunDevboxes for Devboxes {
    fn shutdown_for_invocation<'a>(
        &'a self,
        invocation_id: &'a str,
    ) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async move {
            Devboxes::shutdown_for_invocation(self, invocation_id)
                .await
                .map_err(port)
        })
    }
}

impl ports::Redact for Redactor {
    fn redact_json(&self, v: Value) -> Value {
        Redactor::redact_json(self, v)
    }
    fn redact_string(&self, text: String) -> String {
        Redactor::redact_string(self, text)
    }
}

impl ports::Secrets for Secrets {
    fn resolve<'a>(
        &'a self,
        wanted: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, EngineResult<RunSecrets>> {
        Box::pin(async move {
            let given = Secrets::resolve(self, wanted).await.map_err(port)?;
            Ok(RunSecrets {
                env: given.env,
                redactor: Arc::new(given.redactor),
            })
        })
    }
}

impl ports::NetworkPolicies for NetworkPolicies {
    fn resolve<'a>(&'a self, id_or_name: &'a str) -> BoxFuture<'a, EngineResult<EgressPolicy>> {
        Box::pin(async move {
            NetworkPolicies::resolve(self, id_or_name)
                .await
                .map_err(port)
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Validation(m) => ApiError::Validation(m),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::CallDepthExceeded {
                target,
                depth,
                limit,
            } => ApiError::CallDepthExceeded {
                target,
                depth,
                limit,
            },
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            EngineError::Internal(m) => ApiError::Internal(m),
            EngineError::Store(e) => e.into(),
            EngineError::Port(e) => match e.downcast::<ApiError>() {
                Ok(api) => *api,
                Err(other) => ApiError::Internal(other.to_string()),
            },
        }
    }
}
