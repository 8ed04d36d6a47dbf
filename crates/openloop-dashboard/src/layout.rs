//! The page shell and small view helpers shared by every page.

use crate::session::Session;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// The navigation bar's entries; the current one is highlighted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Deployments,
    Functions,
    Invocations,
    Devboxes,
    Keys,
    Repositories,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Deployments, "/ui/deployments", "Deployments"),
    (Nav::Functions, "/ui/projects", "Functions"),
    (Nav::Invocations, "/ui/invocations", "Invocations"),
    (Nav::Devboxes, "/ui/devboxes", "Devboxes"),
    (Nav::Keys, "/ui/keys", "API keys"),
    (Nav::Repositories, "/ui/repositories", "Repositories"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Openloop" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/ui/assets/app.css";
            script src="/ui/assets/app.js" defer {}
        }
    }
}

/// A page of a signed-in visitor: navigation bar, title, body.
pub fn page(session: &Session, nav: Nav, title: &str, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.topbar {
                    a.brand href="/ui/" { "Openloop" }
                    nav {
                        @for (entry, href, label) in NAV {
                            a href=(href) class=[(entry == nav).then_some("active")] { (label) }
                        }
                    }
                    form.signout method="post" action="/ui/logout" {
                        span.muted { "key " (session.key_name) }
                        (csrf(session))
                        button.link type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A status as a colored badge (`data-status` marks every status on a page).
pub fn status(s: &str) -> Markup {
    html! { span class={ "badge " (s) } data-status { (s) } }
}

/// The status of the thing a page is about: the script updates it live (`data-live-status`).
pub fn live_status(s: &str) -> Markup {
    html! { span class={ "badge " (s) } data-status data-live-status { (s) } }
}

/// A time (ms since the epoch) in UTC, with a machine-readable `datetime`.
pub fn time(ms: i64) -> Markup {
    let text = format_utc(ms);
    let iso = format!("{}Z", text.trim_end_matches(" UTC").replacen(' ', "T", 1));
    html! { time datetime=(iso) { (text) } }
}

pub fn time_opt(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { span.muted { "—" } },
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long from `start` to `end` (or to now, while running), for people.
pub fn duration(start: Option<i64>, end: Option<i64>) -> String {
    let Some(s) = start else {
        return "—".into();
    };
    let ms = end.unwrap_or_else(openloop_store::now_ms) - s;
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        ms => format!("{}m {:02}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// JSON, pretty-printed.
pub fn json(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// Text that is JSON if it parses, pretty-printed; as is otherwise.
pub fn json_text(text: &str) -> Markup {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => json(&v),
        Err(_) => html! { pre.json { (text) } },
    }
}

/// A link to the older page of a keyset-paged table, keeping the filters.
pub fn older_link(path: &str, filters: &[(&str, Option<&str>)], before: Option<&str>) -> Markup {
    let Some(before) = before else {
        return html! {};
    };
    let mut q: Vec<(&str, &str)> = filters
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (*k, v)))
        .collect();
    q.push(("before", before));
    let href = format!(
        "{path}?{}",
        serde_urlencoded::to_string(&q).unwrap_or_default()
    );
    html! { a.button href=(href) rel="next" { "Older →" } }
}

/// A short id for tables (the full id stays in the link and title).
pub fn short_id(id: &str) -> Markup {
    let short = match id.split_once('_') {
        Some((p, rest)) if rest.len() > 12 => format!("{p}_…{}", &rest[rest.len() - 8..]),
        _ => id.to_string(),
    };
    html! { code title=(id) { (short) } }
}

/// Nothing to show yet.
pub fn empty(text: &str) -> Markup {
    html! { p.empty.muted { (text) } }
}

/// A flash message above a page's content.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p class={ "notice " (kind) } role="status" { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_795_791_600_000), "2026-11-27 15:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Some(0), Some(250)), "250 ms");
        assert_eq!(duration(Some(0), Some(1500)), "1.50 s");
        assert_eq!(duration(Some(0), Some(125_000)), "2m 05s");
        assert_eq!(duration(None, Some(5)), "—");
    }
}
