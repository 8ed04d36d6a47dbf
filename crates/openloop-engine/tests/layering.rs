//! The engine stays below HTTP: checked from the manifests.

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
