//! Secrets: Runloop's `/v1/secrets`, sealed at rest, opened only to start a devbox or a run,
//! and redacted from everything a run, a build or a devbox command produces.
//!
//! - [`SecretKey`]: the server's key (32 bytes: `<data>/secrets.key`, mode 0600, or
//!   `OPENLOOP_SECRETS_KEY`), ChaCha20-Poly1305 with a random nonce per value and the secret's
//!   name as associated data, so a sealed value cannot be moved to another name.
//! - [`Secrets`]: create, read (never the value), update, delete, and [`Secrets::resolve`],
//!   which opens the secrets a devbox or a run is given.
//! - [`Redactor`]: replaces every value a run or devbox was given by `[REDACTED:<name>]`.

use crate::auth::Principal;
use crate::config::SecretsKeySource;
use crate::error::{ApiError, ApiResult};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use openloop_store::secrets::{Sealed, SecretRecord};
use openloop_store::Store;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Length of the key, in bytes.
pub const KEY_LEN: usize = 32;
/// Longest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// `limit` of a list when none is given, and the most one page may hold (Runloop's figures).
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the secrets key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("the secrets key {origin} is not {KEY_LEN} bytes (raw, or base64 of {KEY_LEN} bytes)")]
    Malformed { origin: String },
}

/// The key that seals secrets. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    cipher: ChaCha20Poly1305,
    /// A hash of the key, stored beside each sealed value to tell keys apart.
    id: String,
    /// Where it came from, for error messages.
    origin: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8], origin: String) -> Result<SecretKey, SecretKeyError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretKeyError::Malformed { origin });
        }
        let mut h = Sha256::new();
        h.update(b"openloop secrets key id\0");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        Ok(SecretKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(bytes)),
            id,
            origin,
        })
    }

    /// Load the key from where the configuration says; a missing key file is created with 32
    /// random bytes and mode 0600.
    pub fn load(source: &SecretsKeySource) -> Result<SecretKey, SecretKeyError> {
        match source {
            SecretsKeySource::Base64(text) => {
                let origin = "from OPENLOOP_SECRETS_KEY".to_string();
                let bytes = B64
                    .decode(text.trim())
                    .map_err(|_| SecretKeyError::Malformed {
                        origin: origin.clone(),
                    })?;
                SecretKey::from_bytes(&bytes, origin)
            }
            SecretsKeySource::File(path) => Self::load_file(path),
        }
    }

    fn load_file(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let origin = format!("in {}", path.display());
        match std::fs::read(path) {
            Ok(bytes) => {
                warn_if_shared(path);
                if bytes.len() == KEY_LEN {
                    return SecretKey::from_bytes(&bytes, origin);
                }
                // Also accept the base64 form (as OPENLOOP_SECRETS_KEY takes it).
                let text = String::from_utf8_lossy(&bytes);
                let decoded = B64
                    .decode(text.trim())
                    .map_err(|_| SecretKeyError::Malformed {
                        origin: origin.clone(),
                    })?;
                SecretKey::from_bytes(&decoded, origin)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_LEN];
                rand::RngCore::fill_bytes(&mut OsRng, &mut bytes);
                create_private(path, &bytes).map_err(|source| SecretKeyError::Create {
                    path: path.display().to_string(),
                    source,
                })?;
                tracing::info!(path = %path.display(), "created a new secrets key");
                SecretKey::from_bytes(&bytes, origin)
            }
            Err(source) => Err(SecretKeyError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Seal `value` for the secret `name`.
    pub fn seal(&self, name: &str, value: &str) -> ApiResult<Sealed> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| ApiError::Internal(format!("sealing secret '{name}' failed")))?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Open a stored secret; a clear error, never garbage, when the key is not the one that
    /// sealed it or the record was altered.
    pub fn open(&self, rec: &SecretRecord) -> ApiResult<String> {
        let unreadable = |reason: String| ApiError::SecretUnreadable {
            name: rec.name.clone(),
            reason,
        };
        if rec.key_id != self.id {
            return Err(unreadable(format!(
                "it was sealed with another secrets key (key id {}); this server's key {} has id {}. Start the server with the key the secret was created with (--secrets-key-file or OPENLOOP_SECRETS_KEY), or set the secret again",
                rec.key_id, self.origin, self.id
            )));
        }
        let nonce = B64
            .decode(&rec.nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(|| unreadable("its stored nonce is corrupt".into()))?;
        let ciphertext = B64
            .decode(&rec.ciphertext)
            .map_err(|_| unreadable("its stored ciphertext is corrupt".into()))?;
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: rec.name.as_bytes(),
                },
            )
            .map_err(|_| {
                unreadable(format!(
                    "authentication failed with this server's secrets key ({}): the key is not the one that sealed it, or the stored record was altered",
                    self.origin
                ))
            })?;
        String::from_utf8(plain).map_err(|_| unreadable("its value is not UTF-8".into()))
    }
}

fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the secrets key file is readable by others than its owner; chmod 600 it");
        }
    }
}

fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

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

/// Replaces secret values by `[REDACTED:<name>]` in text, bytes and JSON.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes some pattern starts with.
    first: Vec<bool>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} patterns)", self.patterns.len())
    }
}

/// Lines of a multi-line value at least this long are redacted on their own too (output is
/// recorded line by line, so a multi-line value never appears whole in one record).
const MIN_LINE_PATTERN: usize = 8;

impl Redactor {
    /// From `(name, value)` pairs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut patterns: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in secrets {
            let marker = format!("[REDACTED:{name}]").into_bytes();
            let mut add = |needle: &str| {
                if !needle.is_empty() && !patterns.iter().any(|(n, _)| n == needle.as_bytes()) {
                    patterns.push((needle.as_bytes().to_vec(), marker.clone()));
                }
            };
            add(value);
            if value.contains('\n') {
                for line in value.lines() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().len() >= MIN_LINE_PATTERN {
                        add(line);
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut first = vec![false; 256];
        for (p, _) in &patterns {
            first[p[0] as usize] = true;
        }
        Redactor { patterns, first }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Redact `data`. With `more`, more data follows: a tail that could be the start of a
    /// value is held back. Returns the output and how many input bytes it consumed.
    pub fn redact_partial(&self, data: &[u8], more: bool) -> (Vec<u8>, usize) {
        if self.patterns.is_empty() {
            return (data.to_vec(), data.len());
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'scan: while i < data.len() {
            let b = data[i];
            if self.first[b as usize] {
                let rest = &data[i..];
                if more
                    && self
                        .patterns
                        .iter()
                        .any(|(p, _)| rest.len() < p.len() && p.starts_with(rest))
                {
                    return (out, i);
                }
                for (p, marker) in &self.patterns {
                    if rest.starts_with(p) {
                        out.extend_from_slice(marker);
                        i += p.len();
                        continue 'scan;
                    }
                }
            }
            out.push(b);
            i += 1;
        }
        (out, data.len())
    }

    pub fn redact_bytes(&self, data: &[u8]) -> Vec<u8> {
        self.redact_partial(data, false).0
    }

    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.patterns.is_empty() || !text.bytes().any(|b| self.first[b as usize]) {
            return Cow::Borrowed(text);
        }
        // Whole UTF-8 values replaced by ASCII in UTF-8 text leave it UTF-8.
        match String::from_utf8(self.redact_bytes(text.as_bytes())) {
            Ok(s) if s != text => Cow::Owned(s),
            Ok(_) => Cow::Borrowed(text),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    pub fn redact_string(&self, text: String) -> String {
        match self.redact_str(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        }
    }

    /// Every string in `v`, object keys included.
    pub fn redact_json(&self, v: Value) -> Value {
        if self.patterns.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.redact_string(s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.redact_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| (self.redact_string(k), self.redact_json(x)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Redacts one stream that arrives in pieces: what could be the start of a value waits for
/// the next piece.
#[derive(Default)]
pub struct StreamRedactor {
    carry: Vec<u8>,
}

impl StreamRedactor {
    pub fn push(&mut self, redactor: &Redactor, data: &[u8]) -> Vec<u8> {
        if redactor.is_empty() {
            return data.to_vec();
        }
        self.carry.extend_from_slice(data);
        let (out, used) = redactor.redact_partial(&self.carry, true);
        self.carry.drain(..used);
        out
    }

    pub fn finish(&mut self, redactor: &Redactor) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        redactor.redact_bytes(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
