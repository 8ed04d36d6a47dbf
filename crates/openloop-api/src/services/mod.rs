//! The work behind the handlers.

pub mod deployments;
pub mod devboxes;
pub mod invocations;
pub mod network_policies;
pub mod repositories;
pub mod secrets;
pub mod slots;
