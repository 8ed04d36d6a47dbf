//! The Openloop HTTP API and the services behind it.
//!
//! - [`config`]: the server's one typed configuration.
//! - [`server`]: start-up (recovery after a crash, warm processes) and the HTTP listener.
//! - [`listener`]: the HTTP listener: header deadline, connection cap, accept back-off.
//! - [`routes`]: thin axum handlers, one module per resource, and `/openapi.json`.
//! - [`model`]: the typed response bodies and statuses the document is generated from.
//! - [`services`]: the work behind them: deployments, invocations, devboxes.
//! - [`auth`]: API keys and per-invocation tokens.
//! - [`notify`]: change notifications that waiting requests and streams listen to.
//! - [`stages`]: wall time per stage of an invocation's path, from tracing spans.
//! - [`streams`]: Server-Sent Events that follow logs in the store (API and dashboard).
//! - [`numbers`]: numbers in requests as clients send them (floats, text), checked per field.
//! - [`error`] / [`extract`]: errors as `{"error": {"code", "message"}}` with the right status.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod listener;
pub mod model;
/// Change notifications live with the engine, which makes most of them.
pub use openloop_engine::notify;
pub mod numbers;
pub mod routes;
pub mod server;
pub mod services;
pub mod stages;
pub mod state;
pub mod streams;

pub use config::ServerConfig;
pub use server::{prepare, serve};
