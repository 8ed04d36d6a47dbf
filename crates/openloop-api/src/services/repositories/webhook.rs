//! Webhook deliveries: which forge sent one, whether its signature is right, and the push
//! it reports. Pure functions of the headers, the body and the secret.
//!
//! - GitHub: `X-GitHub-Event`, `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
//! - Gitea / Forgejo: `X-Gitea-Event` / `X-Forgejo-Event`, `X-Gitea-Signature` /
//!   `X-Forgejo-Signature: <hex HMAC-SHA256 of the body>`. (Gitea also sends GitHub's
//!   headers; its own are looked for first.)
//! - GitLab: `X-Gitlab-Event: Push Hook`, `X-Gitlab-Token: <the secret itself>`.
//!
//! Every comparison with the secret is in constant time.

use super::Provider;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest event name kept from a header (it is recorded before the signature is checked).
const MAX_EVENT_LEN: usize = 64;
/// Longest ref kept in a delivery record.
const MAX_REF_LEN: usize = 255;

/// What the headers say about a delivery, before anything is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub provider: Provider,
    /// The event's name as sent (`push`, `ping`, `Push Hook`, …), made printable and short.
    pub event: Option<String>,
    credential: Credential,
}

#[derive(Clone, PartialEq, Eq)]
enum Credential {
    /// Hex of an HMAC-SHA256 of the body (any `sha256=` prefix removed), and its header.
    Hmac { header: &'static str, hex: String },
    /// GitLab's token: the secret itself.
    Token(String),
    /// No credential header; the one expected.
    Missing(&'static str),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A GitLab token is the secret itself: never printed.
        match self {
            Credential::Hmac { header, .. } => write!(f, "Hmac({header})"),
            Credential::Token(_) => f.write_str("Token(..)"),
            Credential::Missing(h) => write!(f, "Missing({h})"),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Printable ASCII, at most `max` characters (header values are sent by anyone).
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Tell the provider from the headers, with the event and the credential it sent.
pub fn envelope(headers: &HeaderMap) -> Envelope {
    let hmac = |provider: Provider, event: &str, signatures: &[&'static str]| {
        let credential = signatures
            .iter()
            .find_map(|h| {
                header(headers, h).map(|v| Credential::Hmac {
                    header: h,
                    hex: v.strip_prefix("sha256=").unwrap_or(v).to_string(),
                })
            })
            .unwrap_or(Credential::Missing(signatures[0]));
        Envelope {
            provider,
            event: header(headers, event).map(|e| printable(e, MAX_EVENT_LEN)),
            credential,
        }
    };
    if header(headers, "x-forgejo-event").is_some() {
        return hmac(
            Provider::Forgejo,
            "x-forgejo-event",
            &["X-Forgejo-Signature", "X-Gitea-Signature"],
        );
    }
    if header(headers, "x-gitea-event").is_some() {
        return hmac(Provider::Gitea, "x-gitea-event", &["X-Gitea-Signature"]);
    }
    if let Some(event) = header(headers, "x-gitlab-event") {
        return Envelope {
            provider: Provider::Gitlab,
            event: Some(printable(event, MAX_EVENT_LEN)),
            credential: header(headers, "x-gitlab-token")
                .map(|t| Credential::Token(t.to_string()))
                .unwrap_or(Credential::Missing("X-Gitlab-Token")),
        };
    }
    if header(headers, "x-github-event").is_some() {
        return hmac(Provider::Github, "x-github-event", &["X-Hub-Signature-256"]);
    }
    Envelope {
        provider: Provider::Unknown,
        event: None,
        credential: Credential::Missing("X-Hub-Signature-256"),
    }
}

/// Check the delivery's credential against the connection's secret. `Err` says why it is
/// refused (never quoting the secret or the expected signature).
pub fn verify(envelope: &Envelope, secret: &str, body: &[u8]) -> Result<(), String> {
    match &envelope.credential {
        Credential::Missing(_) if envelope.provider == Provider::Unknown => Err(
            "not a webhook delivery Openloop knows: expected the headers of GitHub (X-GitHub-Event, X-Hub-Signature-256), Gitea or Forgejo (X-Gitea-Event / X-Forgejo-Event and their signature) or GitLab (X-Gitlab-Event, X-Gitlab-Token)"
                .into(),
        ),
        Credential::Missing(h) => Err(format!(
            "the delivery is not signed (no {h} header): set the webhook's secret to the one shown when the repository was connected"
        )),
        Credential::Hmac { header, hex } => {
            let signature = hex::decode(hex)
                .ok()
                .filter(|s| s.len() == 32)
                .ok_or_else(|| format!("{header} is not a hex HMAC-SHA256"))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|_| "the webhook secret cannot key an HMAC".to_string())?;
            mac.update(body);
            // `verify_slice` compares in constant time.
            mac.verify_slice(&signature).map_err(|_| {
                format!("{header} does not match the body signed with this repository's webhook secret")
            })
        }
        Credential::Token(token) => {
            // Digests of equal length, compared in constant time: neither the secret's
            // contents nor its length leak through timing.
            let given = Sha256::digest(token.as_bytes());
            let expected = Sha256::digest(secret.as_bytes());
            if bool::from(given.ct_eq(&expected)) {
                Ok(())
            } else {
                Err("X-Gitlab-Token is not this repository's webhook secret".into())
            }
        }
    }
}

/// What an authenticated delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// GitHub's `ping` when a webhook is set up.
    Ping,
    /// A push: the ref it updated and the commit it now points at (`None`: the ref was
    /// deleted).
    Push {
        git_ref: String,
        commit: Option<String>,
    },
    /// Any other event (answered and ignored).
    Other(String),
}

impl Envelope {
    fn is_push(&self) -> bool {
        match self.provider {
            Provider::Gitlab => self.event.as_deref() == Some("Push Hook"),
            _ => self.event.as_deref() == Some("push"),
        }
    }
}

/// Read an authenticated delivery's event. `content_type` tells GitHub's form-encoded
/// payloads (`payload=<json>`) from JSON ones. `Err` says what is malformed.
pub fn parse(
    envelope: &Envelope,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, String> {
    let event = envelope.event.clone().unwrap_or_default();
    if envelope.provider == Provider::Github && event == "ping" {
        return Ok(Event::Ping);
    }
    if !envelope.is_push() {
        return Ok(Event::Other(event));
    }
    let form =
        content_type.is_some_and(|c| c.trim().starts_with("application/x-www-form-urlencoded"));
    let payload: Value = if form {
        let json = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or("a form-encoded delivery without a `payload` field")?;
        serde_json::from_str(&json)
    } else {
        serde_json::from_slice(body)
    }
    .map_err(|e| format!("the push payload is not JSON: {e}"))?;
    let git_ref = payload["ref"]
        .as_str()
        .ok_or("the push payload has no `ref`")?;
    let git_ref = printable(git_ref, MAX_REF_LEN);
    // GitLab names the pushed head `checkout_sha` (null when the branch was deleted);
    // `after` is the ref's new value everywhere.
    let after = match envelope.provider {
        Provider::Gitlab if payload.get("checkout_sha").is_some_and(|c| !c.is_null()) => {
            &payload["checkout_sha"]
        }
        _ => &payload["after"],
    };
    let after = after
        .as_str()
        .ok_or("the push payload has no `after` commit")?;
    if !is_commit_id(after) {
        return Err(format!(
            "the push payload's commit {:?} is not a hex commit id",
            printable(after, 80)
        ));
    }
    let deleted = payload["deleted"].as_bool() == Some(true) || after.bytes().all(|b| b == b'0');
    Ok(Event::Push {
        git_ref,
        commit: (!deleted).then(|| after.to_ascii_lowercase()),
    })
}

/// A full SHA-1 or SHA-256 commit id.
pub fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "olwh_test-secret";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn push_body(git_ref: &str, after: &str) -> Vec<u8> {
        serde_json::json!({"ref": git_ref, "before": SHA, "after": after})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn github_push_signed_and_tampered() {
        let body = push_body("refs/heads/main", SHA);
        let sig = format!("sha256={}", sign(SECRET, &body));
        let env = envelope(&headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", &sig),
        ]));
        assert_eq!(env.provider, Provider::Github);
        assert_eq!(env.event.as_deref(), Some("push"));
        assert_eq!(verify(&env, SECRET, &body), Ok(()));
        assert_eq!(
            parse(&env, Some("application/json"), &body),
            Ok(Event::Push {
                git_ref: "refs/heads/main".into(),
                commit: Some(SHA.into())
            })
        );
        // Another secret, another body, a truncated or non-hex signature: refused.
        assert!(verify(&env, "other", &body).is_err());
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(verify(&env, SECRET, &tampered).is_err());
        for bad in [&sig[..sig.len() - 2], "sha256=zz", "", "sha1=abc"] {
            let env = envelope(&headers(&[
                ("x-github-event", "push"),
                ("x-hub-signature-256", bad),
            ]));
            assert!(verify(&env, SECRET, &body).is_err(), "{bad:?}");
        }
        // No signature at all.
        let env = envelope(&headers(&[("x-github-event", "push")]));
        let err = verify(&env, SECRET, &body).unwrap_err();
        assert!(err.contains("X-Hub-Signature-256"), "{err}");
        assert!(!err.contains(SECRET));
    }

    #[test]
    fn github_ping_and_other_events() {
        let body = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
        let sig = format!("sha256={}", sign(SECRET, body));
        let env = envelope(&headers(&[
            ("x-github-event", "ping"),
            ("x-hub-signature-256", &sig),
        ]));
        assert_eq!(verify(&env, SECRET, body), Ok(()));
        assert_eq!(parse(&env, None, body), Ok(Event::Ping));
        let env = envelope(&headers(&[
            ("x-github-event", "issues"),
            ("x-hub-signature-256", &sig),
        ]));
        assert_eq!(parse(&env, None, body), Ok(Event::Other("issues".into())));
    }

    #[test]
    fn github_form_encoded_payload() {
        let json = String::from_utf8(push_body("refs/heads/main", SHA)).unwrap();
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &json)
            .finish();
        let sig = format!("sha256={}", sign(SECRET, body.as_bytes()));
        let env = envelope(&headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", &sig),
        ]));
        assert_eq!(verify(&env, SECRET, body.as_bytes()), Ok(()));
        assert_eq!(
            parse(
                &env,
                Some("application/x-www-form-urlencoded"),
                body.as_bytes()
            ),
            Ok(Event::Push {
                git_ref: "refs/heads/main".into(),
                commit: Some(SHA.into())
            })
        );
        assert!(parse(&env, Some("application/x-www-form-urlencoded"), b"x=1").is_err());
    }

    #[test]
    fn gitea_and_forgejo() {
        let body = push_body("refs/heads/main", SHA);
        let sig = sign(SECRET, &body);
        // Gitea also sends GitHub's headers; its own win.
        let env = envelope(&headers(&[
            ("x-gitea-event", "push"),
            ("x-gitea-signature", &sig),
            ("x-github-event", "push"),
            ("x-hub-signature-256", "sha256=00"),
        ]));
        assert_eq!(env.provider, Provider::Gitea);
        assert_eq!(verify(&env, SECRET, &body), Ok(()));
        assert!(matches!(parse(&env, None, &body), Ok(Event::Push { .. })));
        let env = envelope(&headers(&[
            ("x-gitea-event", "push"),
            ("x-gitea-signature", &sign("x", &body)),
        ]));
        assert!(verify(&env, SECRET, &body).is_err());
        let env = envelope(&headers(&[
            ("x-forgejo-event", "push"),
            ("x-forgejo-signature", &sig),
        ]));
        assert_eq!(env.provider, Provider::Forgejo);
        assert_eq!(verify(&env, SECRET, &body), Ok(()));
        // Forgejo's Gitea-compatible signature header is enough.
        let env = envelope(&headers(&[
            ("x-forgejo-event", "push"),
            ("x-gitea-signature", &sig),
        ]));
        assert_eq!(verify(&env, SECRET, &body), Ok(()));
        let env = envelope(&headers(&[("x-forgejo-event", "push")]));
        assert!(verify(&env, SECRET, &body)
            .unwrap_err()
            .contains("X-Forgejo-Signature"));
    }

    #[test]
    fn gitlab_token_and_checkout_sha() {
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let body = serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main",
            "before": SHA, "after": other, "checkout_sha": other,
        })
        .to_string();
        let env = envelope(&headers(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", SECRET),
        ]));
        assert_eq!(env.provider, Provider::Gitlab);
        assert!(
            !format!("{env:?}").contains(SECRET),
            "the token is never printed"
        );
        assert_eq!(verify(&env, SECRET, body.as_bytes()), Ok(()));
        assert_eq!(
            parse(&env, None, body.as_bytes()),
            Ok(Event::Push {
                git_ref: "refs/heads/main".into(),
                commit: Some(other.into())
            })
        );
        for bad in ["wrong", &SECRET[..SECRET.len() - 1], &format!("{SECRET}x")] {
            let env = envelope(&headers(&[
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", bad),
            ]));
            assert!(verify(&env, SECRET, body.as_bytes()).is_err(), "{bad}");
        }
        let env = envelope(&headers(&[("x-gitlab-event", "Push Hook")]));
        assert!(verify(&env, SECRET, body.as_bytes()).is_err());
        // A deleted branch: checkout_sha null, after all zeros.
        let deleted = serde_json::json!({
            "ref": "refs/heads/main", "after": "0".repeat(40), "checkout_sha": null,
        })
        .to_string();
        let env = envelope(&headers(&[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", SECRET),
        ]));
        assert_eq!(
            parse(&env, None, deleted.as_bytes()),
            Ok(Event::Push {
                git_ref: "refs/heads/main".into(),
                commit: None
            })
        );
        let env = envelope(&headers(&[
            ("x-gitlab-event", "Tag Push Hook"),
            ("x-gitlab-token", SECRET),
        ]));
        assert!(matches!(
            parse(&env, None, body.as_bytes()),
            Ok(Event::Other(_))
        ));
    }

    #[test]
    fn deletions_and_malformed_payloads() {
        let env = Envelope {
            provider: Provider::Github,
            event: Some("push".into()),
            credential: Credential::Missing("x"),
        };
        let zeros = push_body("refs/heads/main", &"0".repeat(40));
        assert!(matches!(
            parse(&env, None, &zeros),
            Ok(Event::Push { commit: None, .. })
        ));
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"ref": 1, "after": "x"}"#,
            br#"{"ref": "refs/heads/main"}"#,
            br#"{"ref": "refs/heads/main", "after": "abc"}"#,
            br#"{"ref": "refs/heads/main", "after": "../../etc/passwd0000000000000000000000000"}"#,
        ] {
            assert!(
                parse(&env, None, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_senders_and_hostile_headers() {
        let env = envelope(&HeaderMap::new());
        assert_eq!(env.provider, Provider::Unknown);
        assert!(verify(&env, SECRET, b"{}").is_err());
        let long = "e".repeat(1000);
        let env = envelope(&headers(&[("x-github-event", &long)]));
        assert_eq!(env.event.as_ref().map(String::len), Some(MAX_EVENT_LEN));
        let mut h = HeaderMap::new();
        h.insert(
            "x-github-event",
            HeaderValue::from_bytes(b"pu\xffsh").unwrap(),
        );
        // A value that is not text counts as absent.
        assert_eq!(envelope(&h).provider, Provider::Unknown);
        assert_eq!(printable("a\tb\u{7f}é", 10), "a?b??");
    }
}
