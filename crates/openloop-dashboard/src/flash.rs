//! One-time messages across a redirect. A form that creates a secret (an API key, a webhook)
//! answers with a redirect to a page that shows the secret once: reloading that page shows
//! it no more and sends no form again, and the secret never appears in a URL (only the
//! message's random id does, and only its own session can read it).
//!
//! Held in this process's memory for a few minutes: a secret not shown by then is gone (the
//! key or connection stays; make a new one).

use openloop_sync::lock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a message waits to be shown.
const TTL: Duration = Duration::from_secs(300);
/// At most this many wait at once (the oldest go first).
const CAP: usize = 1024;

struct Entry {
    key_id: String,
    at: Instant,
    value: Value,
}

static MESSAGES: LazyLock<Mutex<HashMap<String, Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Keep `value` for the next page of the session signed in with `key_id`; returns its id.
pub fn put(key_id: &str, value: Value) -> String {
    let id = openloop_store::keys::new_secret("");
    let mut m = lock(&MESSAGES);
    m.retain(|_, e| e.at.elapsed() < TTL);
    while m.len() >= CAP {
        let Some(oldest) = m.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) else {
            break;
        };
        m.remove(&oldest);
    }
    m.insert(
        id.clone(),
        Entry {
            key_id: key_id.to_string(),
            at: Instant::now(),
            value,
        },
    );
    id
}

/// The message `id`, once, if it belongs to `key_id`'s session and has not expired.
pub fn take(key_id: &str, id: &str) -> Option<Value> {
    let mut m = lock(&MESSAGES);
    match m.get(id) {
        Some(e) if e.key_id == key_id && e.at.elapsed() < TTL => m.remove(id).map(|e| e.value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_once_and_only_to_its_session() {
        let id = put("key_a", Value::from("secret"));
        assert_eq!(take("key_b", &id), None);
        assert_eq!(take("key_a", &id), Some(Value::from("secret")));
        assert_eq!(take("key_a", &id), None);
    }
}
