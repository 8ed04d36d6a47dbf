//! The dashboard over plain HTTP: signing in, sessions, CSRF, sign-out, revoked keys, and
//! the invocation table's filters and keyset pages. (The browser journey is `tests/ui/`.)

mod common;

use common::ui::{client, form_value, redirected_to_login, set_cookie, Ui};
use common::{Db, Server};
use openloop_store::invocations::Invocation;
use reqwest::header::{COOKIE, LOCATION};
use std::collections::HashSet;

async fn sessions_keys_and_csrf(db: Db) {
    let Some(server) = Server::start(db).await else {
        return;
    };
    let anon = client();
    // Every page needs a session; the way back is kept in `next`.
    for page in [
        "/ui/deployments",
        "/ui/projects",
        "/ui/invocations",
        "/ui/invocations/inv_x",
        "/ui/devboxes",
        "/ui/keys",
        "/ui/invocations/live",
    ] {
        let r = anon
            .get(format!("{}{page}", server.url))
            .send()
            .await
            .unwrap();
        assert!(redirected_to_login(&r), "{page}: {}", r.status());
    }
    let r = anon
        .get(format!("{}/ui/keys", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/login?next=%2Fui%2Fkeys");
    // The sign-in page and the assets are public.
    let r = anon
        .get(format!("{}/ui/assets/app.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));

    // A wrong key: 401, no session.
    let (status, body) = Ui::sign_in(&server, "ol_not_a_key").await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("not valid or has been revoked"), "{body}");
    // A sign-in post without the form's own cookie (another site posting it): refused.
    let r = anon
        .post(format!("{}/ui/login", server.url))
        .form(&[("key", server.key.as_str()), ("login_token", "oll_forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "openloop_session").is_none());

    let admin = Ui::sign_in(&server, &server.key).await.unwrap();
    for page in [
        "/ui/deployments",
        "/ui/projects",
        "/ui/invocations",
        "/ui/devboxes",
        "/ui/keys",
    ] {
        let r = admin.get(page).await;
        assert_eq!(r.status(), 200, "{page}");
        let html = r.text().await.unwrap();
        assert!(html.contains("href=\"/ui/repositories\""), "{page}: no nav");
        assert!(html.contains("Sign out"), "{page}");
    }
    // Unknown things are 404 pages, bad filters 400, never 500.
    assert_eq!(admin.get("/ui/invocations/inv_nope").await.status(), 404);
    assert_eq!(admin.get("/ui/devboxes/dbx_nope").await.status(), 404);
    assert_eq!(admin.get("/ui/projects/nope").await.status(), 404);
    assert_eq!(
        admin.get("/ui/invocations?status=bogus").await.status(),
        400
    );

    // CSRF: a state-changing form without the session's token changes nothing.
    let keys_before = server.get_json("/v1/keys").await["keys"]
        .as_array()
        .unwrap()
        .len();
    let r = admin.post("/ui/keys", &[("name", "forged")]).await;
    assert_eq!(r.status(), 403);
    let r = admin
        .post("/ui/keys", &[("name", "forged"), ("csrf", "olc_wrong")])
        .await;
    assert_eq!(r.status(), 403);
    let keys: Vec<String> = server.get_json("/v1/keys").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), keys_before);
    assert!(!keys.contains(&"forged".to_string()));

    // With the token: the key is made, its secret shown once on the page the form leads to
    // (a reload shows it no more and makes no second key), never in a URL.
    let csrf = admin.csrf().await;
    let r = admin
        .post("/ui/keys", &[("name", "second"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 303);
    let shown_at = r.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(shown_at.starts_with("/ui/keys?created="), "{shown_at}");
    let r = admin.get(&shown_at).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    let secret = html
        .split("id=\"new-key-secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the new secret is shown")
        .to_string();
    assert!(secret.starts_with("ol_"), "{secret}");
    assert!(!shown_at.contains(&secret));
    let reload = admin.get(&shown_at).await.text().await.unwrap();
    assert!(!reload.contains(&secret) && reload.contains("already been shown"));
    let named_second = server.get_json("/v1/keys").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "second")
        .count();
    assert_eq!(named_second, 1);
    assert!(!admin
        .get("/ui/keys")
        .await
        .text()
        .await
        .unwrap()
        .contains(&secret));
    let r = server
        .http
        .get(format!("{}/v1/keys", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A session of that key ends when the key is revoked (through the API here).
    let second = Ui::sign_in(&server, &secret).await.unwrap();
    assert_eq!(second.get("/ui/keys").await.status(), 200);
    let id = server.get_json("/v1/keys").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "second")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server
        .post(&format!("/v1/keys/{id}/revoke"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(redirected_to_login(&second.get("/ui/keys").await));
    assert!(Ui::sign_in(&server, &secret).await.is_err());

    // The session's own key cannot revoke itself (as in the API); unknown pages are pages.
    let admin_id = server.get_json("/v1/keys").await["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let csrf = admin.csrf().await;
    let r = admin
        .post(&format!("/ui/keys/{admin_id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(admin.get("/ui/keys").await.status(), 200);
    let r = admin.get("/ui/no/such/page").await;
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // Sign-out ends the session: the old cookie is worth nothing afterwards.
    let csrf = admin.csrf().await;
    let r = admin.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert!(redirected_to_login(&admin.get("/ui/keys").await));

    // `next` never leaves the dashboard.
    let page = anon
        .get(format!("{}/ui/login", server.url))
        .send()
        .await
        .unwrap();
    let (login, _) = set_cookie(&page, "openloop_login").unwrap();
    let token = form_value(&page.text().await.unwrap(), "login_token");
    let r = anon
        .post(format!("{}/ui/login", server.url))
        .header(COOKIE, &login)
        .form(&[
            ("key", server.key.as_str()),
            ("login_token", &token),
            ("next", "https://elsewhere.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/invocations");
}

#[tokio::test]
async fn sessions_keys_and_csrf_sqlite() {
    sessions_keys_and_csrf(Db::Sqlite).await;
}

#[tokio::test]
async fn sessions_keys_and_csrf_postgres() {
    sessions_keys_and_csrf(Db::Postgres).await;
}

/// Ids of the invocation rows on a page.
fn row_ids(html: &str) -> Vec<String> {
    html.split("href=\"/ui/invocations/inv_")
        .skip(1)
        .map(|r| format!("inv_{}", r.split('"').next().unwrap()))
        .collect()
}

async fn invocation_pages(db: Db) {
    let Some(server) = Server::start(db).await else {
        return;
    };
    let database_url = server.database_url.clone().unwrap_or_else(|| {
        openloop_store::Store::sqlite_url(&server.data.path().join("openloop.db"))
    });
    let store = openloop_store::Store::connect(&database_url).await.unwrap();
    // 130 runs: f1/f2 of project p, statuses in turn; newest last.
    let statuses = ["success", "failure", "canceled"];
    let all: Vec<Invocation> = (0..130)
        .map(|i| Invocation {
            id: openloop_store::new_id("inv"),
            project_name: "p".into(),
            function_name: if i % 2 == 0 { "f1" } else { "f2" }.into(),
            deployment_id: "dpl_x".into(),
            status: statuses[i % 3].into(),
            request: "{}".into(),
            result: None,
            error: None,
            parent_invocation_id: None,
            created_at_ms: i as i64,
            started_at_ms: None,
            ended_at_ms: None,
        })
        .collect();
    store.insert_invocations(&all).await.unwrap();
    let ui = Ui::sign_in(&server, &server.key).await.unwrap();

    // Each filter, followed through every page: newest first, no row twice, none missed.
    for (query, keep) in [
        (
            "",
            Box::new(|_: &Invocation| true) as Box<dyn Fn(&Invocation) -> bool>,
        ),
        (
            "status=failure",
            Box::new(|i: &Invocation| i.status == "failure"),
        ),
        (
            "project=p&function=f1",
            Box::new(|i: &Invocation| i.function_name == "f1"),
        ),
        (
            "project=p&function=f2&status=success",
            Box::new(|i: &Invocation| i.function_name == "f2" && i.status == "success"),
        ),
        (
            "function=f1&status=canceled",
            Box::new(|i: &Invocation| i.function_name == "f1" && i.status == "canceled"),
        ),
        ("project=q", Box::new(|_: &Invocation| false)),
    ] {
        let expected: Vec<String> = all
            .iter()
            .rev()
            .filter(|i| keep(i))
            .map(|i| i.id.clone())
            .collect();
        let mut seen = Vec::new();
        let mut path = format!("/ui/invocations?{query}");
        loop {
            let r = ui.get(&path).await;
            assert_eq!(r.status(), 200, "{path}");
            let html = r.text().await.unwrap();
            let rows = row_ids(&html);
            assert!(rows.len() <= 50, "{path}: {} rows", rows.len());
            seen.extend(rows);
            match html
                .split("rel=\"next\"")
                .next()
                .and_then(|h| h.rsplit("href=\"").next())
            {
                Some(next) if html.contains("rel=\"next\"") => {
                    path = next.split('"').next().unwrap().replace("&amp;", "&");
                }
                _ => break,
            }
        }
        assert_eq!(seen, expected, "filter {query:?}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    }
}

#[tokio::test]
async fn invocation_pages_sqlite() {
    invocation_pages(Db::Sqlite).await;
}

#[tokio::test]
async fn invocation_pages_postgres() {
    invocation_pages(Db::Postgres).await;
}

/// Connecting a repository from the dashboard shows its webhook and secret once; removing it
/// disconnects it.
#[tokio::test]
async fn repositories_page_connects_and_removes() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin.git");
    let ok = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&origin)
        .status()
        .unwrap();
    assert!(ok.success());
    let ui = Ui::sign_in(&server, &server.key).await.unwrap();
    let csrf = ui.csrf().await;
    let url = origin.to_str().unwrap();
    // Without the CSRF token nothing is connected.
    let r = ui
        .post("/ui/repositories", &[("url", url), ("name", "agent")])
        .await;
    assert_eq!(r.status(), 403);
    // A bad project name: the form again with the reason.
    let r = ui
        .post(
            "/ui/repositories",
            &[("url", url), ("name", "no spaces"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("may only hold letters"));
    assert!(server.get_json("/v1/repositories").await["repositories"]
        .as_array()
        .unwrap()
        .is_empty());

    let r = ui
        .post(
            "/ui/repositories",
            &[
                ("url", url),
                ("name", "agent"),
                ("branch", "trunk"),
                ("poll_seconds", ""),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let shown_at = r.headers()[LOCATION].to_str().unwrap().to_string();
    let r = ui.get(&shown_at).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    let secret = html
        .split("id=\"new-webhook-secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the secret is shown")
        .to_string();
    let repos = server.get_json("/v1/repositories").await;
    let repo = &repos["repositories"][0];
    assert_eq!(repo["branch"], "trunk");
    assert_eq!(repo["name"], "agent");
    let id = repo["id"].as_str().unwrap().to_string();
    assert!(html.contains(&format!("/v1/repositories/{id}/webhook")));
    let again = ui.get("/ui/repositories").await.text().await.unwrap();
    assert!(again.contains(&id) && !again.contains(&secret));

    let r = ui
        .post(&format!("/ui/repositories/{id}/remove"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 303);
    assert!(server.get_json("/v1/repositories").await["repositories"]
        .as_array()
        .unwrap()
        .is_empty());
}
