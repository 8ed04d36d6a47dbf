//! Secrets, on both databases: `/v1/secrets` through Runloop's own client, values never in a
//! response nor in clear in the database, devbox and deployment environments, redaction of
//! everything a run produces, and a clear error when the server's key is not the one that
//! sealed them.

mod common;

use base64::Engine;
use common::{fixture, Db, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MARKER: &str = "[REDACTED:agent_token]";

fn sha256(v: &str) -> String {
    hex::encode(Sha256::digest(v.as_bytes()))
}

/// A value no test output could hold by chance.
fn fresh_value(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sv-{tag}-{n:x}-Zq9")
}

/// GET `path` and return the body as text (to search for a value in whatever the API returns).
async fn get_text(server: &Server, path: &str) -> String {
    let r = server.get(path).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.text().await.unwrap()
}

/// Every place an invocation's record or output can be read: none may hold `value`.
async fn assert_not_in_invocation(server: &Server, id: &str, value: &str) {
    for path in [
        format!("/v1/functions/invocations/{id}"),
        format!("/v1/functions/invocations/{id}/logs"),
        format!("/v1/functions/invocations/{id}/logs/stream"),
        "/v1/functions/invocations?limit=1000".to_string(),
    ] {
        let text = get_text(server, &path).await;
        assert!(
            !text.contains(value),
            "{path} holds the secret's value: {text}"
        );
    }
}

/// Run Runloop's client through `/v1/secrets` and devbox secrets; it leaves `agent_token`
/// holding `value`.
async fn runloop_client_check(server: &Server, value: &str) {
    common::run_client_check(
        server,
        "runloop_secrets_check.py",
        &[("SECRET_VALUE", value)],
        "all secret calls worked",
    )
    .await;
}

/// The database's own bytes (SQLite) or rows (PostgreSQL) hold no value in clear.
async fn assert_no_cleartext(server: &Server, values: &[&str]) {
    match &server.database_url {
        None => {
            let mut seen = 0;
            let mut names = false;
            for f in ["openloop.db", "openloop.db-wal"] {
                let Ok(bytes) = std::fs::read(server.data.path().join(f)) else {
                    continue;
                };
                seen += 1;
                for v in values {
                    assert!(
                        !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                        "{f} holds a secret's value in clear"
                    );
                }
                // The names are there (only the values are sealed): the search sees the rows.
                names |= bytes.windows(11).any(|w| w == b"agent_token");
            }
            assert!(seen > 0, "no SQLite file found");
            assert!(
                names,
                "the secrets' rows were not found in the SQLite files"
            );
        }
        Some(url) => {
            use sqlx::{Connection, Row};
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            // Every text column of every table, as one dump.
            let tables: Vec<String> = sqlx::query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            assert!(tables.iter().any(|t| t == "secrets"), "{tables:?}");
            for t in tables {
                let rows = sqlx::query(&format!("SELECT CAST(t AS TEXT) FROM \"{t}\" t"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                for r in rows {
                    let text: String = r.get(0);
                    for v in values {
                        assert!(
                            !text.contains(v),
                            "table {t} holds a secret's value: {text}"
                        );
                    }
                }
            }
        }
    }
}

async fn update_secret(server: &Server, name: &str, value: &str) {
    let r = server
        .post(&format!("/v1/secrets/{name}"))
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "update secret {name}: {status} {text}");
    assert!(!text.contains(value), "{text}");
}

/// A `fingerprint` run fails, and its error message contains `text`.
async fn fingerprint_fails_naming(server: &Server, text: &str) {
    let (_, inv) = server
        .invoke_sync("secrets_agent", "fingerprint", json!({}))
        .await;
    assert_eq!(inv["status"], "failure", "{inv}");
    assert!(
        inv["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(text),
        "{inv}"
    );
}

async fn secrets(db: Db) {
    // On PostgreSQL the key comes from the environment, as for servers sharing one database.
    let env_key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let env: Vec<(&str, &str)> = match db {
        Db::Sqlite => vec![],
        Db::Postgres => vec![("OPENLOOP_SECRETS_KEY", env_key.as_str())],
    };
    let Some(mut server) = Server::start_with(db, &env).await else {
        return;
    };
    let key_file = server.data.path().join("secrets.key");
    match db {
        Db::Sqlite => {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&key_file).expect("the key file was created");
            assert_eq!(meta.len(), 32);
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        Db::Postgres => assert!(!key_file.exists(), "the key came from the environment"),
    }
    let value = fresh_value("a");

    // A deployment naming a secret that does not exist fails, naming it.
    let (ok, out, err) = server.deploy_cli(&fixture("secrets_agent"), &[]);
    assert!(!ok, "deployed without its secret:\n{out}\n{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("no secret named 'agent_token' (for AGENT_TOKEN)"),
        "{text}"
    );

    // CRUD and devbox secrets through Runloop's client; it leaves agent_token = value.
    runloop_client_check(&server, &value).await;

    // Values are refused where they cannot work, and never echoed.
    let r = server
        .post("/v1/secrets")
        .json(&json!({"name": "empty", "value": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = server
        .post("/v1/secrets/no_such/delete")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r: Value = server
        .post("/v1/secrets/no_such")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret 'no_such' not found"),
        "{r}"
    );

    // Deployed now; runs get AGENT_TOKEN.
    server.deploy_ok(&fixture("secrets_agent"));
    let (code, inv) = server
        .invoke_sync("secrets_agent", "fingerprint", json!({}))
        .await;
    assert_eq!(code, 200, "{inv}");
    assert_eq!(
        inv["result"],
        json!({"present": true, "sha256": sha256(&value)}),
        "{inv}"
    );

    // Printed, logged and returned: stored redacted.
    let (_, inv) = server
        .invoke_sync("secrets_agent", "leak", json!({"fail": false}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(
        inv["result"],
        json!({"value": MARKER, "nested": [MARKER, {"k": format!("<{MARKER}>")}], MARKER: "as a key"}),
    );
    let id = inv["id"].as_str().unwrap().to_string();
    let messages = server.log_messages(&id).await;
    for expect in [
        format!("printed {MARKER}"),
        format!("on stderr {MARKER}"),
        format!("logged {MARKER}"),
    ] {
        assert!(
            messages.iter().any(|m| m.contains(&expect)),
            "{expect:?} not in {messages:?}"
        );
    }
    assert_not_in_invocation(&server, &id, &value).await;

    // Raised: the error's message and traceback are redacted.
    let (_, inv) = server
        .invoke_sync("secrets_agent", "leak", json!({"fail": true}))
        .await;
    assert_eq!(inv["status"], "failure", "{inv}");
    assert_eq!(inv["error"]["type"], "RuntimeError", "{inv}");
    assert_eq!(
        inv["error"]["message"],
        format!("failed with {MARKER}"),
        "{inv}"
    );
    let id = inv["id"].as_str().unwrap().to_string();
    assert_not_in_invocation(&server, &id, &value).await;

    // A run hands its deployment's secret on to a devbox; no other secret.
    let (_, inv) = server
        .invoke_sync(
            "secrets_agent",
            "devbox_with_secret",
            json!({"secret_name": "agent_token"}),
        )
        .await;
    assert_eq!(
        inv["result"],
        json!({"sha256": sha256(&value), "echoed": MARKER}),
        "{inv}"
    );
    let (_, inv) = server
        .invoke_sync(
            "secrets_agent",
            "devbox_with_secret",
            json!({"secret_name": "other_secret"}),
        )
        .await;
    assert_eq!(inv["status"], "failure", "{inv}");
    let message = inv["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("secret 'other_secret' is not one of them"),
        "{inv}"
    );

    // Secrets are read at each run's start: an update applies to the next run.
    let second = fresh_value("b");
    update_secret(&server, "agent_token", &second).await;
    let (_, inv) = server
        .invoke_sync("secrets_agent", "fingerprint", json!({}))
        .await;
    assert_eq!(inv["result"]["sha256"], sha256(&second), "{inv}");
    let (_, inv) = server
        .invoke_sync("secrets_agent", "leak", json!({"fail": false}))
        .await;
    assert_eq!(inv["result"]["value"], MARKER, "{inv}");
    let id = inv["id"].as_str().unwrap().to_string();
    assert_not_in_invocation(&server, &id, &second).await;

    // Build logs never held a value (the build is not given secrets at all).
    let deps = server.get_json("/v1/deployments").await;
    for d in deps["deployments"].as_array().unwrap() {
        let text = get_text(
            &server,
            &format!("/v1/deployments/{}/logs", d["id"].as_str().unwrap()),
        )
        .await;
        assert!(!text.contains(&value) && !text.contains(&second), "{text}");
    }

    // Nowhere in the database in clear.
    assert_no_cleartext(&server, &[&value, &second]).await;

    // Restarted with another key: names still list, using a value fails clearly, naming the
    // secret and the key, never with garbage.
    server.kill9();
    match db {
        Db::Sqlite => std::fs::write(&key_file, [7u8; 32]).unwrap(),
        Db::Postgres => server.set_env(
            "OPENLOOP_SECRETS_KEY",
            &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        ),
    }
    server.spawn().await;
    let listed = server.get_json("/v1/secrets").await;
    assert_eq!(listed["total_count"], 2, "{listed}");
    let r = server
        .post("/v1/devboxes")
        .json(&json!({"secrets": {"X": "agent_token"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "secret_unreadable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("secret 'agent_token' cannot be decrypted")
            && message.contains("another secrets key"),
        "{body}"
    );
    fingerprint_fails_naming(&server, "secret 'agent_token' cannot be decrypted").await;
    // Set again under the new key, it works again.
    update_secret(&server, "agent_token", &value).await;
    let (_, inv) = server
        .invoke_sync("secrets_agent", "fingerprint", json!({}))
        .await;
    assert_eq!(inv["result"]["sha256"], sha256(&value), "{inv}");

    // Deleted: the next run fails naming it, and a new deploy is refused.
    let r = server
        .post("/v1/secrets/agent_token/delete")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    fingerprint_fails_naming(
        &server,
        "secret 'agent_token' (for environment variable AGENT_TOKEN) not found",
    )
    .await;
}

#[tokio::test]
async fn secrets_on_sqlite() {
    secrets(Db::Sqlite).await;
}

#[tokio::test]
async fn secrets_on_postgres() {
    secrets(Db::Postgres).await;
}
