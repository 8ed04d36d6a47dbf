//! Network policies, as Runloop's API has them (`/v1/network-policies`), and the egress rules
//! a sandbox gets from one.
//!
//! A policy is applied when a sandbox starts: a devbox created with
//! `launch_parameters.network_policy_id`, or a deployment's warm process when the
//! deployment's `runloop.toml` names one (`[network] policy = "…"`). Changing a policy applies
//! to sandboxes started afterwards.

use crate::error::{ApiError, ApiResult};
use openloop_sandbox::egress::{self, CidrRule, EgressPolicy, PortRule, Protocol};
use openloop_store::network_policies::NetworkPolicyRecord;
use openloop_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use utoipa::ToSchema;

/// A port rule as Runloop's client sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct PortRuleView {
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub enum ProtocolView {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// A CIDR allow rule as Runloop's client sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AllowedCidr {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortRuleView>>,
}

/// The egress rules of a policy (`NetworkPolicyView.egress`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Egress {
    pub allow_all: bool,
    pub allow_devbox_to_devbox: bool,
    /// Runloop's gateways and mirrors: accepted and kept for compatibility; Openloop runs none
    /// of them, so they open nothing.
    pub allow_agent_gateway: bool,
    pub allow_mcp_gateway: bool,
    pub allow_runloop_mirrors: bool,
    pub allowed_cidrs: Vec<AllowedCidr>,
    pub allowed_hostnames: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NetworkPolicyView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
    pub egress: Egress,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NetworkPolicyListView {
    pub network_policies: Vec<NetworkPolicyView>,
    pub has_more: bool,
    pub total_count: i64,
}

/// `POST /v1/network-policies`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateNetworkPolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(flatten)]
    pub rules: EgressChange,
}

/// `POST /v1/network-policies/{id}`: every field optional.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateNetworkPolicy {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(flatten)]
    pub rules: EgressChange,
}

/// The egress fields of a create or update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct EgressChange {
    #[serde(default)]
    pub allow_all: Option<bool>,
    #[serde(default)]
    pub allow_devbox_to_devbox: Option<bool>,
    #[serde(default)]
    pub allow_agent_gateway: Option<bool>,
    #[serde(default)]
    pub allow_mcp_gateway: Option<bool>,
    #[serde(default)]
    pub allow_runloop_mirrors: Option<bool>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<AllowedCidr>>,
    #[serde(default)]
    pub allowed_hostnames: Option<Vec<String>>,
}

impl EgressChange {
    fn apply(self, mut e: Egress) -> Egress {
        let set = |field: &mut bool, v: Option<bool>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut e.allow_all, self.allow_all);
        set(&mut e.allow_devbox_to_devbox, self.allow_devbox_to_devbox);
        set(&mut e.allow_agent_gateway, self.allow_agent_gateway);
        set(&mut e.allow_mcp_gateway, self.allow_mcp_gateway);
        set(&mut e.allow_runloop_mirrors, self.allow_runloop_mirrors);
        if let Some(c) = self.allowed_cidrs {
            e.allowed_cidrs = c;
        }
        if let Some(h) = self.allowed_hostnames {
            e.allowed_hostnames = h;
        }
        // As Runloop documents: allow_all implies devbox-to-devbox traffic.
        if e.allow_all {
            e.allow_devbox_to_devbox = true;
        }
        e
    }
}

const MAX_RULES: usize = 1000;

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 256 {
        return Err(ApiError::BadRequest(
            "name: a network policy needs a name of 1 to 256 characters".into(),
        ));
    }
    Ok(())
}

/// A hostname pattern: `example.com` or `*.example.com`, letters, digits, `-` and dots.
fn check_hostname(h: &str) -> Result<(), String> {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "allowed_hostnames: '{h}' is not a hostname or a '*.'-prefixed wildcard"
        ))
    }
}

fn check(e: &Egress) -> ApiResult<()> {
    if e.allowed_cidrs.len() > MAX_RULES || e.allowed_hostnames.len() > MAX_RULES {
        return Err(ApiError::BadRequest(format!(
            "a network policy holds at most {MAX_RULES} CIDRs and {MAX_RULES} hostnames"
        )));
    }
    for c in &e.allowed_cidrs {
        egress::check_cidr(&c.cidr)
            .map_err(|m| ApiError::BadRequest(format!("allowed_cidrs: {m}")))?;
        for p in c.ports.iter().flatten() {
            let end = p.end_port.unwrap_or(p.port);
            if !(1..=65535).contains(&p.port) || end < p.port || end > 65535 {
                return Err(ApiError::BadRequest(format!(
                    "allowed_cidrs: {}: ports must be 1 to 65535 with end_port >= port",
                    c.cidr
                )));
            }
        }
    }
    for h in &e.allowed_hostnames {
        check_hostname(h).map_err(ApiError::BadRequest)?;
    }
    Ok(())
}

fn view(r: NetworkPolicyRecord) -> ApiResult<NetworkPolicyView> {
    let egress: Egress = serde_json::from_str(&r.egress)
        .map_err(|e| ApiError::Internal(format!("network policy {} is unreadable: {e}", r.id)))?;
    Ok(NetworkPolicyView {
        id: r.id,
        name: r.name,
        description: r.description,
        create_time_ms: r.create_time_ms,
        update_time_ms: r.update_time_ms,
        egress,
    })
}

fn encode(e: &Egress) -> ApiResult<String> {
    serde_json::to_string(e).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The rules a sandbox enforces for `egress`; allowed hostnames are resolved at `resolver`.
pub fn sandbox_policy(e: &Egress, resolver: Option<SocketAddr>) -> EgressPolicy {
    EgressPolicy {
        allow_all: e.allow_all,
        allowed_hostnames: e.allowed_hostnames.clone(),
        resolver,
        allowed_cidrs: e
            .allowed_cidrs
            .iter()
            .map(|c| CidrRule {
                cidr: c.cidr.clone(),
                ports: c
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| PortRule {
                        port: p.port as u16,
                        end_port: p.end_port.map(|e| e as u16),
                        protocol: p.protocol.map(|p| match p {
                            ProtocolView::Tcp => Protocol::Tcp,
                            ProtocolView::Udp => Protocol::Udp,
                        }),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub struct NetworkPolicies {
    store: Store,
    /// Where sandboxes' allowed hostnames are resolved (`--dns-upstream`; the host's resolver
    /// when unset).
    resolver: Option<SocketAddr>,
}

impl NetworkPolicies {
    pub fn new(store: Store, resolver: Option<SocketAddr>) -> Self {
        NetworkPolicies { store, resolver }
    }

    pub async fn create(&self, req: CreateNetworkPolicy) -> ApiResult<NetworkPolicyView> {
        check_name(&req.name)?;
        let egress = req.rules.apply(Egress::default());
        check(&egress)?;
        let r = self
            .store
            .insert_network_policy(&req.name, req.description.as_deref(), &encode(&egress)?)
            .await?;
        view(r)
    }

    pub async fn get(&self, id: &str) -> ApiResult<NetworkPolicyView> {
        view(self.store.get_network_policy(id).await?)
    }

    pub async fn update(&self, id: &str, req: UpdateNetworkPolicy) -> ApiResult<NetworkPolicyView> {
        let current = self.get(id).await?;
        let name = req.name.unwrap_or(current.name);
        check_name(&name)?;
        let description = req.description.or(current.description);
        let egress = req.rules.apply(current.egress);
        check(&egress)?;
        let r = self
            .store
            .update_network_policy(id, &name, description.as_deref(), &encode(&egress)?)
            .await?;
        view(r)
    }

    pub async fn delete(&self, id: &str) -> ApiResult<NetworkPolicyView> {
        view(self.store.delete_network_policy(id).await?)
    }

    pub async fn list(
        &self,
        id: Option<&str>,
        name: Option<&str>,
        limit: Option<i64>,
        starting_after: Option<&str>,
    ) -> ApiResult<NetworkPolicyListView> {
        let limit = limit.unwrap_or(20).clamp(1, 5000);
        let mut rows = self
            .store
            .list_network_policies(id, name, starting_after, limit + 1)
            .await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(NetworkPolicyListView {
            network_policies: rows.into_iter().map(view).collect::<ApiResult<_>>()?,
            has_more,
            total_count: self.store.count_network_policies().await?,
        })
    }

    /// The sandbox rules of the policy with this id, or else of the newest with this name.
    pub async fn resolve(&self, id_or_name: &str) -> ApiResult<EgressPolicy> {
        let policy = match self.store.get_network_policy(id_or_name).await {
            Ok(r) => view(r)?,
            Err(StoreError::NotFound(_)) => {
                let named = self.store.network_policies_named(id_or_name).await?;
                match named.into_iter().next() {
                    Some(r) => view(r)?,
                    None => {
                        return Err(ApiError::NotFound(format!(
                            "no network policy with the id or name '{id_or_name}'; create it with POST /v1/network-policies"
                        )))
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        Ok(sandbox_policy(&policy.egress, self.resolver))
    }
}
