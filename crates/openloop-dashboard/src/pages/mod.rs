//! One module per page family. Handlers take a [`Session`](crate::session::Session), read
//! through the services and the store of `openloop-api`, and render with [`crate::layout`].

pub mod deployments;
pub mod devboxes;
pub mod functions;
pub mod invocations;
pub mod keys;
pub mod repositories;

/// Rows per page of every table.
pub const PAGE_SIZE: i64 = 50;
