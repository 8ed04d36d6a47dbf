//! The crate graph keeps the layers ARCHITECTURE.md states: checked from the manifests.

use std::path::Path;

fn dependencies(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().expect("a valid manifest");
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_dashboard_is_a_view_and_the_api_does_not_know_it() {
    // The dashboard reads through the API's services and the store's functions: it writes no
    // SQL of its own, so every query stays in one crate with its indexes.
    let ui = dependencies("openloop-dashboard");
    assert!(ui.contains(&"openloop-api".to_string()));
    assert!(!ui.contains(&"sqlx".to_string()), "{ui:?}");
    // The API is HTTP and services; the UI is mounted by the binary, never by the API.
    for krate in [
        "openloop-api",
        "openloop-store",
        "openloop-runner",
        "openloop-sandbox",
    ] {
        assert!(
            !dependencies(krate).contains(&"openloop-dashboard".to_string()),
            "{krate} depends on the dashboard"
        );
    }
}

#[test]
fn sandboxes_and_runner_know_nothing_of_the_database_or_http() {
    for krate in ["openloop-sandbox", "openloop-runner"] {
        let deps = dependencies(krate);
        for banned in ["openloop-store", "sqlx", "axum", "hyper", "openloop-api"] {
            assert!(
                !deps.contains(&banned.to_string()),
                "{krate} depends on {banned}"
            );
        }
    }
}

#[test]
fn the_engine_knows_nothing_of_http_devboxes_or_auth() {
    // What the engine needs from devboxes, auth, secrets and network policies reaches it
    // through the narrow traits of `openloop_engine::ports`, implemented by `openloop-api`:
    // so the engine can be driven (and, in a cluster, coordinated) without the HTTP layer.
    let deps = dependencies("openloop-engine");
    for banned in [
        "openloop-api",
        "openloop-dashboard",
        "axum",
        "hyper",
        "utoipa",
    ] {
        assert!(
            !deps.contains(&banned.to_string()),
            "openloop-engine depends on {banned}"
        );
    }
    assert!(dependencies("openloop-api").contains(&"openloop-engine".to_string()));
}
