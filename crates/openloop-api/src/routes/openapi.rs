//! `/openapi.json`: the OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types (`utoipa`), never written by hand.
//!
//! On top of what the annotations say, every operation gets the Bearer requirement (unless it
//! is public) and the error responses, all with the one error body `ErrorBody`.

use crate::error::{ErrorBody, ErrorDetail};
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Openloop API",
        description = "Deploy Python functions and invoke them over HTTP; devboxes follow Runloop's public devbox API. \
                       Every error is `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerScheme),
    tags(
        (name = "server", description = "Health and this document"),
        (name = "functions", description = "Invoking functions and reading invocations"),
        (name = "deployments", description = "Building repositories into deployments"),
        (name = "devboxes", description = "Runloop's devbox API"),
        (name = "blueprints", description = "Runloop's blueprints: Dockerfiles built once into devbox layers"),
        (name = "keys", description = "API keys"),
        (name = "repositories", description = "Push-to-deploy: connected git repositories and their webhooks"),
    ),
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`openloop keys create`) or a run's token"))
                    .build(),
            ),
        );
    }
}

/// Statuses every operation may answer with an error body, and what they mean.
const ERRORS: &[(&str, &str)] = &[
    ("400", "The request is malformed or invalid"),
    ("401", "No valid API key or token"),
    ("403", "The credential may not do this"),
    ("404", "No such resource"),
    ("409", "The resource is not in a state that allows this"),
    ("413", "The request body is too large"),
    ("429", "A quota is used up"),
    ("500", "An internal error (details in the server log)"),
    (
        "503",
        "The server cannot do this now (stopping, or a dependency is down)",
    ),
];

/// Errors even a public operation may answer with.
const PUBLIC_ERRORS: &[&str] = &["500", "503"];

/// The document as a JSON value (built once).
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(build)
}

fn build() -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.merge(super::documented_routes().into_openapi());
    let mut v = serde_json::to_value(&doc).unwrap_or_else(|e| {
        // Only a bug in a type's schema can cause this; the document then says so.
        tracing::error!(error = %e, "the OpenAPI document could not be serialized");
        json!({"openapi": "3.1.0", "info": {"title": "Openloop API", "version": "0"}, "paths": {}})
    });
    let error_response = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    if let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(op) = op.as_object_mut() else {
                    continue;
                };
                // Unique operation ids: the handler's name within its tag (`devboxes_create`).
                let tag = op
                    .get("tags")
                    .and_then(|t| t.get(0))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let (Some(tag), Some(id)) = (tag, op.get("operationId").and_then(Value::as_str))
                {
                    let id = format!("{tag}_{id}");
                    op.insert("operationId".into(), Value::String(id));
                }
                let public = op.contains_key("security");
                if !public {
                    op.insert("security".into(), json!([{"bearer": []}]));
                }
                let responses = op
                    .entry("responses")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                let Some(responses) = responses else {
                    continue;
                };
                for (status, description) in ERRORS {
                    if public && !PUBLIC_ERRORS.contains(status) {
                        continue;
                    }
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
    v
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "server",
    security(()),
    responses((status = 200, description = "This document", body = Object, content_type = "application/json")),
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(spec()),
    )
}

#[cfg(test)]
mod tests {
    use super::spec;
    use std::collections::BTreeSet;

    /// Every route's method and path, from the `#[utoipa::path]` annotations each route
    /// was registered with: `routes!` registers the handler with axum and its operation
    /// with the document in one call.
    fn registered() -> BTreeSet<(String, String)> {
        let api = super::super::documented_routes().into_openapi();
        let v = serde_json::to_value(&api.paths).expect("paths serialize");
        let mut out = BTreeSet::new();
        for (path, item) in v.as_object().cloned().unwrap_or_default() {
            for method in item.as_object().expect("path item").keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    /// Every line of this crate's sources that adds a route to a router directly: such a
    /// route would bypass `routes!` and be served undocumented.
    fn routes_in_source() -> Vec<String> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let needles = [
            concat!(".", "route("),
            concat!(".", "route_service("),
            concat!(".", "nest("),
            concat!(".", "nest_service("),
            concat!("axum::Router::", "new()"),
            concat!(" Router::", "new()"),
            concat!("(Router::", "new()"),
        ];
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read source");
            for line in text.lines() {
                let code = line.trim();
                if code.starts_with("//") {
                    continue;
                }
                if needles.iter().any(|n| code.contains(n)) {
                    found.push(format!("{}: {code}", f.display()));
                }
            }
        }
        found
    }

    /// The one route besides `/health` and `/openapi.json` that needs no key: a forge
    /// holds none, and each delivery is authenticated by its signature.
    const WEBHOOK: &str = "/v1/repositories/{id}/webhook";

    #[test]
    fn every_route_is_in_the_document() {
        let doc = spec();
        let registered = registered();
        assert!(
            registered.len() >= 39,
            "only {} routes registered",
            registered.len()
        );
        let mut ids = BTreeSet::new();
        for (method, path) in &registered {
            let id = doc["paths"][path][method.to_lowercase()]["operationId"].as_str();
            assert!(
                id.is_some_and(|id| ids.insert(id.to_string())),
                "{method} {path}: operationId missing or not unique ({id:?})"
            );
        }
        for (method, path) in &registered {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} is not in /openapi.json");
            assert!(
                op["responses"]["200"].is_object() || op["responses"]["201"].is_object(),
                "{method} {path} documents no success response"
            );
            if path == WEBHOOK {
                // Public, authenticated by the delivery's signature: says so, and documents
                // its refusals.
                assert_eq!(op["security"], serde_json::json!([{}]), "{path}");
                for status in ["400", "401", "404", "413", "500"] {
                    assert_eq!(
                        op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} lacks the {status} error shape"
                    );
                }
            } else if !matches!(path.as_str(), "/health" | "/openapi.json") {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path} does not require the key"
                );
                for status in ["400", "401", "404", "500"] {
                    assert_eq!(
                        op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} lacks the {status} error shape"
                    );
                }
            }
            // Path parameters are all declared.
            for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true)
                });
                assert!(
                    declared,
                    "{method} {path} does not declare path parameter {name}"
                );
            }
        }
        // Nothing is served that was not registered through `routes!`.
        let bypass = routes_in_source();
        assert!(
            bypass.is_empty(),
            "routes registered without `utoipa_axum::routes!` (so missing from /openapi.json): {bypass:#?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = spec();
        assert_eq!(doc["openapi"], "3.1.0");
        // An independent OpenAPI 3.1 parser (oas3) reads it, with every operation.
        let text = serde_json::to_string(doc).expect("serialize");
        let parsed = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
        let version = parsed.validate_version().expect("a valid OpenAPI version");
        assert_eq!((version.major, version.minor), (3, 1));
        assert_eq!(parsed.operations().count(), registered().len());
        for (path, method, op) in parsed.operations() {
            for p in &op.parameters {
                p.resolve(&parsed).unwrap_or_else(|e| {
                    panic!("{method} {path}: a parameter does not resolve: {e}")
                });
            }
            if let Some(body) = &op.request_body {
                body.resolve(&parsed)
                    .unwrap_or_else(|e| panic!("{method} {path}: the body does not resolve: {e}"));
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        // Every `$ref` points at a schema that exists.
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r.to_string());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(doc, &mut all);
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "$ref {r} points nowhere"
            );
        }
    }

    #[test]
    fn statuses_are_enums() {
        let schemas = &spec()["components"]["schemas"];
        for (name, values) in [
            (
                "InvocationStatus",
                &["queued", "running", "success", "failure", "canceled"][..],
            ),
            (
                "DeploymentStatus",
                &["queued", "building", "deployed", "failed"][..],
            ),
            ("ExecutionStatus", &["queued", "running", "completed"][..]),
        ] {
            let listed: Vec<&str> = schemas[name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} is not an enum"))
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert_eq!(listed, values, "{name}");
        }
        assert!(schemas["DevboxStatus"]["enum"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "running")));
    }
}
