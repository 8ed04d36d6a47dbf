//! Connecting, listing, showing and removing repositories: the checks of a connection's URL,
//! branch and poll interval, and its view with the webhook URL where this server is reached.

use super::{
    sealing_name, webhook, CreateRepository, CreatedRepository, Repositories, RepositoryList,
    RepositoryView,
};
use crate::error::{ApiError, ApiResult};
use crate::services::deployments::valid_project_name;
use axum::http::HeaderMap;
use openloop_store::repositories::{NewRepository, RepositoryRecord};
use std::sync::Arc;

/// Longest `poll_seconds` (a week).
pub const MAX_POLL_SECONDS: u64 = 7 * 24 * 3600;
/// The branch a connection deploys when none is given.
pub const DEFAULT_BRANCH: &str = "main";

/// A branch name git would accept (`git check-ref-format`'s rules, a little stricter).
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && b.bytes()
            .all(|c| c.is_ascii_graphic() && !b"~^:?*[\\".contains(&c))
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("/.")
        && !b.contains("@{")
        && b != "@"
}

/// A repository URL or path: no control characters, and never anything git could take for
/// an option.
fn check_url(url: &str) -> ApiResult<()> {
    if url.is_empty() || url.len() > 2048 {
        return Err(ApiError::BadRequest(
            "`url` must be a git URL or a repository's path on the server (at most 2048 characters)".into(),
        ));
    }
    if url.starts_with('-') || url.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "`url` may not start with '-' or hold control characters".into(),
        ));
    }
    Ok(())
}

/// Where this server is reached, as the caller reached it: the `Host` header (and
/// `X-Forwarded-Proto` from a proxy), else the listen address.
pub fn base_url(headers: &HeaderMap, listen: std::net::SocketAddr) -> String {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = match text("x-forwarded-proto").map(str::trim) {
        Some("https") => "https",
        _ => "http",
    };
    let host = text("host").map(str::trim).filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
    });
    match host {
        Some(h) => format!("{scheme}://{h}"),
        None => {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{scheme}://{addr}")
        }
    }
}

impl Repositories {
    fn view(rec: &RepositoryRecord, base: &str) -> RepositoryView {
        RepositoryView {
            id: rec.id.clone(),
            name: rec.project_name.clone(),
            url: rec.url.clone(),
            branch: rec.branch.clone(),
            poll_seconds: rec.poll_seconds.map(|s| s.max(0) as u64),
            webhook_url: format!("{base}/v1/repositories/{}/webhook", rec.id),
            last_commit: rec.last_commit.clone(),
            last_deployment_id: rec.last_deployment_id.clone(),
            created_at_ms: rec.created_at_ms,
        }
    }

    /// Connect a repository; `base` is this server's URL as the caller reached it.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRepository,
        base: &str,
    ) -> ApiResult<CreatedRepository> {
        let url = req.url.trim();
        check_url(url)?;
        if !valid_project_name(&req.name) {
            return Err(ApiError::BadRequest(format!(
                "project name {:?} may only hold letters, digits, '_', '-' and '.'",
                webhook::printable(&req.name, 100)
            )));
        }
        let branch = req.branch.as_deref().unwrap_or(DEFAULT_BRANCH).trim();
        let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        if !valid_branch(branch) {
            return Err(ApiError::BadRequest(format!(
                "branch {:?} is not a valid git branch name",
                webhook::printable(branch, 100)
            )));
        }
        let min = self.config.repo_min_poll_seconds;
        if let Some(s) = req.poll_seconds {
            if !(min..=MAX_POLL_SECONDS).contains(&s) {
                return Err(ApiError::BadRequest(format!(
                    "`poll_seconds` must be between {min} and {MAX_POLL_SECONDS} (omit it for webhooks only)"
                )));
            }
        }
        let id = openloop_store::new_id("repo");
        let secret = openloop_store::keys::new_secret("olwh_");
        let sealed = self.secrets.key().seal(&sealing_name(&id), &secret)?;
        let rec = self
            .store
            .insert_repository(&NewRepository {
                id: &id,
                project_name: &req.name,
                url,
                branch,
                poll_seconds: req.poll_seconds.map(|s| s as i64),
                secret: &sealed,
            })
            .await?;
        tracing::info!(repository = %rec.id, project = %rec.project_name, branch = %rec.branch, poll_seconds = ?rec.poll_seconds, "repository connected");
        self.start_poller(&rec);
        Ok(CreatedRepository {
            repository: Self::view(&rec, base),
            webhook_secret: secret,
        })
    }

    pub async fn list(&self, base: &str) -> ApiResult<RepositoryList> {
        Ok(RepositoryList {
            repositories: self
                .store
                .list_repositories()
                .await?
                .iter()
                .map(|r| Self::view(r, base))
                .collect(),
        })
    }

    pub async fn get(&self, id: &str, base: &str) -> ApiResult<RepositoryView> {
        Ok(Self::view(&self.store.get_repository(id).await?, base))
    }

    /// Remove a connection and its deliveries, and stop its poller; returns what it was.
    pub async fn delete(&self, id: &str, base: &str) -> ApiResult<RepositoryView> {
        let rec = self.store.delete_repository(id).await?;
        self.stop_poller(id);
        tracing::info!(repository = %id, "repository disconnected");
        Ok(Self::view(&rec, base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature-x", "v2_fix", "a.b"] {
            assert!(valid_branch(ok), "{ok}");
        }
        for bad in [
            "", "-x", "/a", "a/", ".a", "a.", "a..b", "a//b", "a/.b", "x.lock", "a b", "a~1", "a^",
            "a:b", "a?", "a*", "a[", "a\\b", "@", "a@{1}", "a\nb",
        ] {
            assert!(!valid_branch(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        assert!(check_url("https://github.com/o/r.git").is_ok());
        assert!(check_url("/srv/git/r.git").is_ok());
        assert!(check_url("git@github.com:o/r.git").is_ok());
        assert!(check_url("--upload-pack=touch /tmp/x").is_err());
        assert!(check_url("a\nb").is_err());
        assert!(check_url("").is_err());
        assert!(check_url(&"a".repeat(3000)).is_err());
    }

    #[test]
    fn base_urls() {
        let listen: std::net::SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(base_url(&h, listen), "http://127.0.0.1:8700");
        assert_eq!(
            base_url(&h, "0.0.0.0:9000".parse().unwrap()),
            "http://127.0.0.1:9000"
        );
        h.insert("host", HeaderValue::from_static("deploy.example.com:8443"));
        assert_eq!(base_url(&h, listen), "http://deploy.example.com:8443");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&h, listen), "https://deploy.example.com:8443");
        h.insert("host", HeaderValue::from_static("[::1]:8700"));
        assert_eq!(base_url(&h, listen), "https://[::1]:8700");
        // A Host that is not a host falls back to the listen address.
        h.insert("host", HeaderValue::from_static("evil.com/x?y"));
        assert_eq!(base_url(&h, listen), "https://127.0.0.1:8700");
    }
}
