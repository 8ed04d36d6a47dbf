//! Secrets: Runloop's `/v1/secrets`, sealed at rest, opened only to start a devbox or a run,
//! and redacted from everything a run, a build or a devbox command produces.
//!
//! - [`SecretKey`]: the server's key (32 bytes: `<data>/secrets.key`, mode 0600, or
//!   `OPENLOOP_SECRETS_KEY`), ChaCha20-Poly1305 with a random nonce per value and the secret's
//!   name as associated data, so a sealed value cannot be moved to another name.
//! - [`Secrets`]: create, read (never the value), update, delete, and [`Secrets::resolve`],
//!   which opens the secrets a devbox or a run is given.
//! - [`Redactor`]: replaces every value a run or devbox was given by `[REDACTED:<name>]`.
//!
//! Files: [`key`] (the key and sealing), [`redact`] (redaction); the service is here.

mod key;
mod redact;

pub use key::*;
pub use redact::*;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use openloop_store::secrets::SecretRecord;
use openloop_store::Store;
use serde::Serialize;

use std::collections::BTreeMap;

/// Longest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// `limit` of a list when none is given, and the most one page may hold (Runloop's figures).
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 5000;

/// A secret's name: letters, digits and underscores (Runloop's rule), at most 128.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An environment variable a secret may be given as: a shell identifier, not one of
/// Openloop's own (`OPENLOOP_…`).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !name.starts_with("OPENLOOP_")
}

/// Runloop's `SecretView`: never the value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    pub id: String,
    pub name: String,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

impl From<SecretRecord> for SecretView {
    fn from(r: SecretRecord) -> Self {
        SecretView {
            id: r.id,
            name: r.name,
            create_time_ms: r.create_time_ms,
            update_time_ms: r.update_time_ms,
        }
    }
}

/// Runloop's `SecretListView`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretListView {
    pub secrets: Vec<SecretView>,
    pub has_more: bool,
    pub total_count: i64,
}

/// Secrets opened for a devbox or a run: the environment to give it, and the redactor that
/// hides those values in whatever it produces.
#[derive(Debug, Default)]
pub struct Resolved {
    pub env: BTreeMap<String, String>,
    pub redactor: Redactor,
}

/// Which secret a name or an id designates.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Name(&'a str),
    Id(&'a str),
}

pub struct Secrets {
    store: Store,
    key: SecretKey,
}

impl Secrets {
    pub fn new(store: Store, key: SecretKey) -> Self {
        Secrets { store, key }
    }

    /// The server's secrets key, for services that seal values of their own with it
    /// ([`SecretKey::seal`] / [`SecretKey::open_sealed`] under a name no secret can have).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// At start-up: say so when stored secrets were sealed with another key (they stay
    /// listed, and using one fails with `secret_unreadable` naming it).
    pub async fn check_key(&self) -> ApiResult<()> {
        let others: Vec<String> = self
            .store
            .secret_key_ids()
            .await?
            .into_iter()
            .filter(|k| k != self.key.id())
            .collect();
        if !others.is_empty() {
            tracing::warn!(key_id = %self.key.id(), origin = %self.key.origin(), other_key_ids = ?others, "some stored secrets were sealed with another secrets key: they cannot be used until the server runs with that key or they are set again");
        }
        Ok(())
    }

    fn check_value(value: &str) -> ApiResult<()> {
        if value.is_empty() {
            return Err(ApiError::BadRequest("`value` must not be empty".into()));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "`value` is over {MAX_VALUE_BYTES} bytes"
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::BadRequest(
                "`value` must not contain NUL characters (it becomes an environment variable)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub async fn create(&self, name: &str, value: &str) -> ApiResult<SecretView> {
        if !valid_secret_name(name) {
            return Err(ApiError::BadRequest(format!(
                "secret name {name:?} may only hold letters, digits and '_' (1 to {MAX_NAME_LEN} characters)"
            )));
        }
        Self::check_value(value)?;
        let sealed = self.key.seal(name, value)?;
        match self.store.insert_secret(name, &sealed).await {
            Err(openloop_store::StoreError::AlreadyExists(_)) => Err(ApiError::Conflict(format!(
                "a secret named '{name}' already exists; change its value with POST /v1/secrets/{name}"
            ))),
            other => Ok(other?.into()),
        }
    }

    async fn record(&self, which: Lookup<'_>) -> ApiResult<SecretRecord> {
        Ok(match which {
            Lookup::Name(n) => self.store.get_secret(n).await?,
            Lookup::Id(i) => self.store.get_secret_by_id(i).await?,
        })
    }

    pub async fn get(&self, which: Lookup<'_>) -> ApiResult<SecretView> {
        Ok(self.record(which).await?.into())
    }

    pub async fn update(&self, which: Lookup<'_>, value: &str) -> ApiResult<SecretView> {
        Self::check_value(value)?;
        // The name is the associated data, so the name is read first (by id).
        let name = match which {
            Lookup::Name(n) => n.to_string(),
            Lookup::Id(_) => self.record(which).await?.name,
        };
        let sealed = self.key.seal(&name, value)?;
        let rec = match which {
            Lookup::Name(n) => self.store.update_secret(n, false, &sealed).await?,
            Lookup::Id(i) => self.store.update_secret(i, true, &sealed).await?,
        };
        Ok(rec.into())
    }

    pub async fn delete(&self, which: Lookup<'_>) -> ApiResult<SecretView> {
        let rec = match which {
            Lookup::Name(n) => self.store.delete_secret(n, false).await?,
            Lookup::Id(i) => self.store.delete_secret(i, true).await?,
        };
        Ok(rec.into())
    }

    pub async fn list(
        &self,
        limit: Option<i64>,
        starting_after: Option<&str>,
    ) -> ApiResult<SecretListView> {
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let mut rows = self.store.list_secrets(starting_after, limit + 1).await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok(SecretListView {
            secrets: rows.into_iter().map(Into::into).collect(),
            has_more,
            total_count: self.store.count_secrets().await?,
        })
    }

    /// Open the secrets named by `wanted` (environment variable → secret name). An unknown
    /// name is a 404 naming it and the variable; nothing is opened unless all are found.
    pub async fn resolve(&self, wanted: &BTreeMap<String, String>) -> ApiResult<Resolved> {
        let mut env = BTreeMap::new();
        let mut named = Vec::new();
        for (var, name) in wanted {
            if !valid_env_name(var) {
                return Err(ApiError::BadRequest(format!(
                    "secrets: {var:?} is not a valid environment variable name (letters, digits and '_', not starting with a digit or OPENLOOP_)"
                )));
            }
            let rec = match self.store.get_secret(name).await {
                Ok(r) => r,
                Err(openloop_store::StoreError::NotFound(_)) => {
                    return Err(ApiError::NotFound(format!(
                        "secret '{name}' (for environment variable {var}) not found; create it with POST /v1/secrets"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            let value = self.key.open(&rec)?;
            named.push((rec.name, value.clone()));
            env.insert(var.clone(), value);
        }
        Ok(Resolved {
            env,
            redactor: Redactor::new(named.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        })
    }

    /// Like [`Secrets::resolve`], on behalf of `caller`: a run may only hand on the secrets its
    /// own deployment was given (its `runloop.toml` `[secrets]`); an API key may use any.
    pub async fn resolve_for(
        &self,
        caller: &Principal,
        wanted: &BTreeMap<String, String>,
    ) -> ApiResult<Resolved> {
        if let Some(run) = caller.invocation_id() {
            if !wanted.is_empty() {
                let inv = self.store.get_invocation(run).await?;
                let dep = self.store.get_deployment(&inv.deployment_id).await?;
                let manifest = crate::services::invocations::manifest_of(&dep)?;
                if let Some(name) = wanted
                    .values()
                    .find(|n| !manifest.secrets.values().any(|own| own == *n))
                {
                    return Err(ApiError::Forbidden(format!(
                        "a run may only give a devbox the secrets its deployment names in runloop.toml [secrets]; secret '{name}' is not one of them"
                    )));
                }
            }
        }
        self.resolve(wanted).await
    }

    /// Check that every secret a deployment names exists (at build time): the message names
    /// each missing one and its variable.
    pub async fn check_exist(&self, wanted: &BTreeMap<String, String>) -> ApiResult<()> {
        let mut missing = Vec::new();
        for (var, name) in wanted {
            match self.store.get_secret(name).await {
                Ok(_) => {}
                Err(openloop_store::StoreError::NotFound(_)) => {
                    missing.push(format!("'{name}' (for {var})"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(ApiError::BadRequest(format!(
            "runloop.toml [secrets]: no secret named {}; create it with POST /v1/secrets before deploying",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretsKeySource;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use openloop_store::secrets::Sealed;

    fn key() -> SecretKey {
        SecretKey::from_bytes(&[7u8; 32], "test".into()).unwrap()
    }

    fn record(name: &str, sealed: Sealed) -> SecretRecord {
        SecretRecord {
            id: "sec_1".into(),
            name: name.into(),
            key_id: sealed.key_id,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            create_time_ms: 0,
            update_time_ms: 0,
        }
    }

    #[test]
    fn seal_open_and_wrong_keys() {
        let k = key();
        let a = k.seal("db", "hunter2").unwrap();
        let b = k.seal("db", "hunter2").unwrap();
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per value");
        assert!(!a.ciphertext.contains("hunter2"));
        assert_eq!(k.open(&record("db", a.clone())).unwrap(), "hunter2");
        // Moved to another name: the associated data no longer matches.
        let moved = k.open(&record("other", a.clone())).unwrap_err().to_string();
        assert!(moved.contains("authentication failed"), "{moved}");
        // Another key.
        let other = SecretKey::from_bytes(&[8u8; 32], "elsewhere".into()).unwrap();
        let e = other
            .open(&record("db", a.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret 'db' cannot be decrypted") && e.contains("another secrets key"),
            "{e}"
        );
        // Same id (forged), wrong key: still an error, never garbage.
        let mut forged = record("db", a);
        forged.key_id = other.id().to_string();
        assert!(other.open(&forged).is_err());
        assert!(SecretKey::from_bytes(&[1u8; 5], "short".into()).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secrets.key");
        let k1 = SecretKey::load(&SecretsKeySource::File(p.clone())).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let k2 = SecretKey::load(&SecretsKeySource::File(p.clone())).unwrap();
        assert_eq!(k1.id(), k2.id());
        let b64 = B64.encode(std::fs::read(&p).unwrap());
        let k3 = SecretKey::load(&SecretsKeySource::Base64(b64)).unwrap();
        assert_eq!(k1.id(), k3.id());
        assert!(SecretKey::load(&SecretsKeySource::Base64("not base64!".into())).is_err());
    }

    #[test]
    fn redaction() {
        let r = Redactor::new([("short", "abc"), ("long", "abcdef")]);
        assert_eq!(
            r.redact_str("x abcdef y abc z"),
            "x [REDACTED:long] y [REDACTED:short] z"
        );
        assert_eq!(r.redact_str("nothing here"), "nothing here");
        let v = serde_json::json!({"abc": ["abcdef", 1, {"k": "zabcz"}]});
        assert_eq!(
            r.redact_json(v),
            serde_json::json!({"[REDACTED:short]": ["[REDACTED:long]", 1, {"k": "z[REDACTED:short]z"}]})
        );
        // Multi-line values: each long enough line on its own too.
        let pem = Redactor::new([("pem", "-----BEGIN-----\nAAAABBBBCCCC\n-----END-----")]);
        assert_eq!(pem.redact_str("line: AAAABBBBCCCC"), "line: [REDACTED:pem]");
        assert!(Redactor::new([("e", "")]).is_empty());
    }

    #[test]
    fn stream_redaction_across_pieces() {
        let r = Redactor::new([("s", "SECRET-VALUE")]);
        let mut s = StreamRedactor::default();
        let mut out = Vec::new();
        for piece in ["out SEC", "RET-VA", "LUE and SE", "CRET-VALUE", " end SECR"] {
            out.extend(s.push(&r, piece.as_bytes()));
        }
        out.extend(s.finish(&r));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "out [REDACTED:s] and [REDACTED:s] end SECR"
        );
        // Held back only while it could be a value.
        let mut s = StreamRedactor::default();
        assert_eq!(s.push(&r, b"plain S"), b"plain ");
        assert_eq!(s.push(&r, b"x"), b"Sx");
    }
}
