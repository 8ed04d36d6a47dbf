//! The work behind the handlers.

pub mod deployments;
pub mod devboxes;
pub mod ports;
/// The run engine is its own crate (`openloop-engine`); the API reaches it through this.
pub mod invocations {
    pub use openloop_engine::{manifest_of, EngineError, Invocations, Loaded, Reply};
}
pub mod network_policies;
pub mod repositories;
pub mod secrets;
