//! Where an invocation's time goes: wall time of the spans on its path, per stage.
//!
//! Each stage of the path (authentication, request validation, each database statement,
//! queueing, slots, the cgroup, the hand-off to the forked process, the user's code, the
//! result, the response) is a `tracing` span with target [`TARGET`]. [`StageLayer`], installed
//! by the binary next to the log output (with its own filter, so log levels do not hide it),
//! records each such span's wall time from creation to close. `GET /v1/metrics/stages`
//! answers the figures (the benchmark prints them as its per-stage breakdown).
//!
//! Cheap enough to stay on: a span per stage and, on close, one short lock to push a number
//! into a fixed ring.

use openloop_sync::lock;
use serde::Serialize;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use utoipa::ToSchema;

pub use openloop_engine::stage::{span, TARGET};

/// Samples kept per stage (the most recent).
const RING: usize = 8192;

struct Samples {
    name: &'static str,
    /// Microseconds, most recent `RING`.
    ring: Vec<u32>,
    next: usize,
    count: u64,
    total_us: u64,
}

/// Stages in the order they were first seen (the order of the path).
static STAGES: LazyLock<Mutex<Vec<Samples>>> = LazyLock::new(|| Mutex::new(Vec::new()));

fn record(name: &'static str, us: u32) {
    let mut all = lock(&STAGES);
    let i = match all.iter().position(|s| s.name == name) {
        Some(i) => i,
        None => {
            all.push(Samples {
                name,
                ring: Vec::with_capacity(64),
                next: 0,
                count: 0,
                total_us: 0,
            });
            all.len() - 1
        }
    };
    let s = &mut all[i];
    if s.ring.len() < RING {
        s.ring.push(us);
    } else {
        s.ring[s.next] = us;
    }
    s.next = (s.next + 1) % RING;
    s.count += 1;
    s.total_us += u64::from(us);
}

/// One stage's figures since the last reset.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StageStat {
    pub stage: String,
    /// Spans closed.
    pub count: u64,
    /// Mean wall time, microseconds.
    pub mean_us: f64,
    /// Median and 99th percentile of the most recent 8,192, microseconds.
    pub p50_us: u32,
    pub p99_us: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StageStats {
    /// In the order the path first reached them.
    pub stages: Vec<StageStat>,
}

/// The figures of every stage seen since the last reset.
pub fn snapshot() -> StageStats {
    let all = lock(&STAGES);
    StageStats {
        stages: all
            .iter()
            .map(|s| {
                let mut sorted = s.ring.clone();
                sorted.sort_unstable();
                let at = |p: f64| {
                    sorted
                        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
                        .copied()
                        .unwrap_or(0)
                };
                StageStat {
                    stage: s.name.to_string(),
                    count: s.count,
                    mean_us: if s.count == 0 {
                        0.0
                    } else {
                        s.total_us as f64 / s.count as f64
                    },
                    p50_us: at(0.5),
                    p99_us: at(0.99),
                }
            })
            .collect(),
    }
}

/// Forget every figure (the benchmark resets before a measured series).
pub fn reset() {
    lock(&STAGES).clear();
}

/// Records the wall time of spans with target [`TARGET`]. Install it with a filter for that
/// target (see the binary's `main`), so it sees stage spans whatever the log level.
pub struct StageLayer;

struct Opened(Instant);

impl<S> Layer<S> for StageLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != TARGET {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened(Instant::now()));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if span.metadata().target() != TARGET {
            return;
        }
        let opened = span.extensions().get::<Opened>().map(|o| o.0);
        if let Some(at) = opened {
            let us = at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            record(span.metadata().name(), us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn spans_of_the_stage_target_are_timed() {
        let subscriber = tracing_subscriber::registry().with(StageLayer);
        tracing::subscriber::with_default(subscriber, || {
            reset();
            for _ in 0..3 {
                let _s =
                    tracing::info_span!(target: "openloop::stage", "unit_test_stage").entered();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _other = tracing::info_span!("not_a_stage").entered();
        });
        let stats = snapshot();
        let s = stats
            .stages
            .iter()
            .find(|s| s.stage == "unit_test_stage")
            .expect("recorded");
        assert_eq!(s.count, 3);
        assert!(s.p50_us >= 2000, "{s:?}");
        assert!(!stats.stages.iter().any(|s| s.stage == "not_a_stage"));
    }
}
