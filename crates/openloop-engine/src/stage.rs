//! The spans that time each stage of an invocation's path (`openloop_api::stages` collects
//! them; the runner's own stages use the same target).

/// The target of every stage span.
pub const TARGET: &str = "openloop::stage";

/// A stage span named `name`. (Span names are static metadata, so each stage has its own
/// call site here.)
pub fn span(name: &'static str) -> tracing::Span {
    macro_rules! stages {
        ($($n:literal),+ $(,)?) => {
            match name {
                $($n => tracing::info_span!(target: "openloop::stage", $n),)+
                _ => tracing::info_span!(target: "openloop::stage", "other", stage = name),
            }
        };
    }
    stages!(
        "auth",
        "validate",
        "insert",
        "queue",
        "read",
        "slots",
        "mark_running",
        "prepare",
        "run",
        "logs_flush",
        "devboxes",
        "finish",
        "wait",
        "respond",
        "invoke_sync",
    )
}
