//! Driving the dashboard over plain HTTP as a browser does: the sign-in form, the session
//! cookie, CSRF fields.

use super::Server;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of a cookie the response sets, with its attributes.
pub fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            (pair.to_string(), attrs.to_string())
        })
}

pub fn form_value(html: &str, name: &str) -> String {
    html.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        .to_string()
}

pub struct Ui {
    pub url: String,
    pub http: reqwest::Client,
    pub cookie: String,
}

impl Ui {
    /// Sign in with `key` through the form, as a browser does.
    pub async fn sign_in(server: &Server, key: &str) -> Result<Ui, (u16, String)> {
        let http = client();
        let page = http
            .get(format!("{}/ui/login", server.url))
            .send()
            .await
            .unwrap();
        let (login, _) = set_cookie(&page, "openloop_login").expect("sign-in cookie");
        let token = form_value(&page.text().await.unwrap(), "login_token");
        let r = http
            .post(format!("{}/ui/login", server.url))
            .header(COOKIE, &login)
            .form(&[("key", key), ("login_token", &token), ("next", "/ui/keys")])
            .send()
            .await
            .unwrap();
        match set_cookie(&r, "openloop_session") {
            Some((pair, attrs)) if r.status() == 303 => {
                assert_eq!(r.headers()[LOCATION], "/ui/keys");
                for a in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
                    assert!(attrs.contains(a), "session cookie lacks {a}: {attrs}");
                }
                Ok(Ui {
                    url: server.url.clone(),
                    http,
                    cookie: pair,
                })
            }
            _ => Err((r.status().as_u16(), r.text().await.unwrap())),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn csrf(&self) -> String {
        form_value(&self.get("/ui/keys").await.text().await.unwrap(), "csrf")
    }
}

pub fn redirected_to_login(r: &reqwest::Response) -> bool {
    r.status() == 303
        && r.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/ui/login")
}
