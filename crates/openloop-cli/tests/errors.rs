//! Bad input gets a JSON error with the right status; keys are required and revocable.

mod common;

use common::{fixture, Db, Server};
use serde_json::{json, Value};

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("errors are JSON");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("test_agent"));
    let h = &server.http;
    let url = |p: &str| format!("{}{p}", server.url);

    // Health needs no key; everything else does.
    assert_eq!(h.get(url("/health")).send().await.unwrap().status(), 200);
    let (s, code, msg) = error_of(h.get(url("/v1/functions")).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (401, "unauthorized"));
    assert!(msg.contains("Authorization: Bearer"), "{msg}");
    let (s, _, _) = error_of(
        h.get(url("/v1/functions"))
            .bearer_auth("ol_wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _, _) = error_of(
        h.post(url("/v1/functions/test_agent/echo/invoke_sync"))
            .json(&json!({"request": {"text": "a"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    // The API's document is public (issue 8): no key needed, and it says which need one.
    let resp = h.get(url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let invoke = &doc["paths"]["/v1/functions/{project}/{function}/invoke_sync"]["post"];
    assert!(invoke.is_object());
    assert_eq!(invoke["security"], json!([{"bearer": []}]));

    // Unknown names: 404.
    for (path, needle) in [
        ("/v1/functions/nope/echo/invoke_sync", "project 'nope'"),
        (
            "/v1/functions/test_agent/nope/invoke_sync",
            "function 'nope'",
        ),
    ] {
        let (s, code, msg) = error_of(
            server
                .post(path)
                .json(&json!({"request": {}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((s, code.as_str()), (404, "not_found"), "{path}");
        assert!(msg.contains(needle), "{msg}");
    }
    let (s, _, _) = error_of(
        server
            .get("/v1/functions/invocations/inv_nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = error_of(
        server
            .get("/v1/functions/invocations/inv_nope/logs")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = error_of(server.get("/v1/devboxes/dbx_nope").send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, _, _) = error_of(server.get("/v1/no/such/endpoint").send().await.unwrap()).await;
    assert_eq!(s, 404);

    // Malformed JSON, wrong shapes, a body over the limit.
    let invoke = "/v1/functions/test_agent/echo/invoke_sync";
    for body in [
        "{\"request\": ",
        "not json",
        "[1,2]",
        "{\"request\": 5}",
        "{}",
    ] {
        let r = server
            .post(invoke)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (s, _, msg) = error_of(r).await;
        assert_eq!(s, 400, "{body}: {msg}");
    }
    let big = format!(
        "{{\"request\": {{\"text\": \"{}\"}}}}",
        "a".repeat(11 << 20)
    );
    // The server answers before reading the whole body and closes that connection, so the
    // oversized request goes on a connection of its own (as curl would send it).
    let r = reqwest::Client::new()
        .post(format!("{}{invoke}", server.url))
        .bearer_auth(&server.key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, code, _) = error_of(r).await;
    assert_eq!((s, code.as_str()), (413, "payload_too_large"));

    // The server is still fine afterwards.
    let (code, inv) = server
        .invoke_sync("test_agent", "echo", json!({"text": "ok"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(inv["result"]["text"], "ok");
}

#[tokio::test]
async fn keys_are_hashed_listed_and_revocable() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let admin_key = server.data.path().join("admin-key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&admin_key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let keys = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .arg("keys")
            .arg("--data-dir")
            .arg(server.data.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let secret = keys(&["create", "--name", "ci"]).trim().to_string();
    assert!(secret.starts_with("ol_"));
    let ok = server
        .http
        .get(format!("{}/v1/functions", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let listing = keys(&["list"]);
    assert!(
        listing.contains("ci") && listing.contains("admin"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "secrets are never listed");

    // Only the hash is stored.
    let db = std::fs::read(server.data.path().join("openloop.db")).unwrap();
    let wal = std::fs::read(server.data.path().join("openloop.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret is in the database"
        );
    }

    keys(&["revoke", "ci"]);
    let denied = server
        .http
        .get(format!("{}/v1/functions", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // Keys over the API too.
    let r = server
        .post("/v1/keys")
        .json(&json!({"name": "via-api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["key"]["id"].as_str().unwrap();
    let s2 = created["secret"].as_str().unwrap();
    // A key cannot revoke itself (the last key would lock everyone out).
    let own = server
        .http
        .post(format!("{}/v1/keys/{id}/revoke", server.url))
        .bearer_auth(s2)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 409);
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["error"]["code"], "conflict");
    assert_eq!(
        server
            .http
            .get(format!("{}/v1/keys", server.url))
            .bearer_auth(s2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server
            .post(&format!("/v1/keys/{id}/revoke"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server
            .http
            .get(format!("{}/v1/keys", server.url))
            .bearer_auth(s2)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}
