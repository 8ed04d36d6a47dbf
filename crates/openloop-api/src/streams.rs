//! Server-Sent Events that follow something recorded in the store (an invocation's logs, a
//! deployment's build log). The API routes and the dashboard serve the same streams.

use crate::model::{DeploymentView, InvocationView};
use crate::notify::Notifier;
use crate::state::AppState;
use axum::response::sse::Event;
use futures::Stream;
use std::convert::Infallible;

/// Rows read per round of a followed stream.
pub const PAGE: i64 = 1000;

/// One round of a followed stream: new events with their cursor, and the final event once
/// the followed thing has finished.
pub struct Page {
    pub events: Vec<(i64, Result<Event, axum::Error>)>,
    pub end: Option<Result<Event, axum::Error>>,
}

/// Send what is new after the cursor, send `end` once finished, otherwise wait for a change
/// notification of `key` (subscribed before each read, so nothing is missed).
pub fn follow<F, Fut>(
    notifier: Notifier,
    key: String,
    mut after: i64,
    poll: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut(i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Page>> + Send,
{
    let mut poll = poll;
    async_stream(move |tx| async move {
        let mut sub = notifier.subscribe(&key);
        loop {
            let Some(page) = poll(after).await else {
                return;
            };
            let full = page.events.len() as i64 == PAGE;
            for (cursor, ev) in page.events {
                after = cursor;
                if tx.send(ev.unwrap_or_default()).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if let Some(end) = page.end {
                let _ = tx.send(end.unwrap_or_default()).await;
                return;
            }
            sub.changed().await;
        }
    })
}

/// A stream fed by a task through a channel.
pub fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// An invocation's log lines after `after_seq`: `log` events (an `InvocationLog` each, `id`
/// its sequence number), then one `end` event with the finished `InvocationView`. With
/// `with_status`, a `status` event (the `InvocationView`) also goes out first and whenever
/// the status changes, for pages that show it live.
pub fn invocation_logs(
    state: AppState,
    id: String,
    after_seq: i64,
    with_status: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The status last sent (only with `with_status`).
    let shown = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    follow(
        state.notifier.clone(),
        id.clone(),
        after_seq,
        move |after| {
            let (state, id, shown) = (state.clone(), id.clone(), shown.clone());
            async move {
                let inv = state.store.get_invocation(&id).await.ok()?;
                let logs = state.store.invocation_logs(&id, after, PAGE).await.ok()?;
                let view = || InvocationView::of(&inv).ok();
                let mut events = Vec::new();
                if with_status {
                    let mut last = openloop_sync::lock(&shown);
                    if last.as_deref() != Some(inv.status.as_str()) {
                        *last = Some(inv.status.clone());
                        events.push((after, Event::default().event("status").json_data(view()?)));
                    }
                }
                events.extend(logs.iter().map(|l| {
                    (
                        l.seq,
                        Event::default()
                            .event("log")
                            .id(l.seq.to_string())
                            .json_data(l),
                    )
                }));
                let end = match inv.is_finished() {
                    true => Some(Event::default().event("end").json_data(view()?)),
                    false => None,
                };
                Some(Page { events, end })
            }
        },
    )
}

/// A deployment's build log after line `after_seq`: `log` events (one line each), then one
/// `end` event with the `DeploymentView` once it is deployed or failed.
pub fn deployment_logs(
    state: AppState,
    id: String,
    after_seq: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    follow(
        state.notifier.clone(),
        id.clone(),
        after_seq,
        move |after| {
            let (state, id) = (state.clone(), id.clone());
            async move {
                let d = state.store.get_deployment(&id).await.ok()?;
                let lines = state.store.deployment_logs(&id, after, PAGE).await.ok()?;
                let events = lines
                    .iter()
                    .map(|l| {
                        (
                            l.seq,
                            Ok(Event::default()
                                .event("log")
                                .id(l.seq.to_string())
                                .data(l.line.clone())),
                        )
                    })
                    .collect();
                let end = match matches!(d.status.as_str(), "deployed" | "failed") {
                    true => Some(
                        Event::default()
                            .event("end")
                            .json_data(DeploymentView::of(&d).ok()?),
                    ),
                    false => None,
                };
                Some(Page { events, end })
            }
        },
    )
}
