//! The gRPC edges: wire messages in, domain values to the event loop, wire out.

pub mod auth;
pub mod jobs;
mod watch;
pub mod workers;
