//! The event streams pages follow. The log tails are the API's own streams
//! (`openloop_api::streams`); the tables get a `changed` event and fetch their rows again,
//! so the rows are always rendered by the same code as the page.

use crate::error::UiResult;
use crate::session::Session;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use openloop_api::notify::{ANY_DEPLOYMENT, ANY_INVOCATION};
use openloop_api::state::AppState;
use openloop_api::streams;
use serde::Deserialize;
use std::convert::Infallible;

type BoxStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<BoxStream>>;

fn sse(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Events {
    Sse::new(Box::pin(s) as BoxStream).keep_alive(KeepAlive::default())
}

/// `changed` whenever anything notified under `key` (coalesced by the page's script).
fn changes(state: &AppState, key: &'static str) -> Events {
    let notifier = state.notifier.clone();
    sse(streams::async_stream(move |tx| async move {
        let mut sub = notifier.subscribe(key);
        loop {
            tokio::select! {
                _ = sub.changed() => {}
                _ = tx.closed() => return,
            }
            if tx
                // Browsers drop events without data: the data names what changed.
                .send(Event::default().event("changed").data(key))
                .await
                .is_err()
            {
                return;
            }
        }
    }))
}

pub async fn invocations_changed(State(state): State<AppState>, _: Session) -> Events {
    changes(&state, ANY_INVOCATION)
}

pub async fn deployments_changed(State(state): State<AppState>, _: Session) -> Events {
    changes(&state, ANY_DEPLOYMENT)
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: i64,
}

/// An invocation's status and log lines after the ones the page already shows.
pub async fn invocation_log(
    State(state): State<AppState>,
    _: Session,
    Path(id): Path<String>,
    Query(q): Query<After>,
) -> UiResult<Events> {
    state.store.get_invocation(&id).await?;
    Ok(sse(streams::invocation_logs(state, id, q.after, true)))
}

/// A deployment's build log after the lines the page already shows.
pub async fn deployment_log(
    State(state): State<AppState>,
    _: Session,
    Path(id): Path<String>,
    Query(q): Query<After>,
) -> UiResult<Events> {
    state.store.get_deployment(&id).await?;
    Ok(sse(streams::deployment_logs(state, id, q.after)))
}
