//! The server's secrets key and sealing: ChaCha20-Poly1305 with a random nonce per value and
//! the secret's name as associated data, so a sealed value cannot be moved to another name.

use crate::config::SecretsKeySource;
use crate::error::{ApiError, ApiResult};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use openloop_store::secrets::{Sealed, SecretRecord};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Length of the key, in bytes.
pub const KEY_LEN: usize = 32;

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
        self.open_sealed(
            &rec.name,
            &Sealed {
                key_id: rec.key_id.clone(),
                nonce: rec.nonce.clone(),
                ciphertext: rec.ciphertext.clone(),
            },
        )
    }

    /// Open a value sealed with [`SecretKey::seal`] under `name` (the associated data). Other
    /// services keep values this way under names no secret can have (a secret's name holds
    /// only letters, digits and `_`), e.g. a repository's webhook secret as `webhook:<id>`.
    pub fn open_sealed(&self, name: &str, rec: &Sealed) -> ApiResult<String> {
        let unreadable = |reason: String| ApiError::SecretUnreadable {
            name: name.to_string(),
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
                    aad: name.as_bytes(),
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
