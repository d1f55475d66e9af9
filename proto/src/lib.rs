//! The `atelier.v1` wire protocol between users, the coordinator and workers.
//!
//! Only the protocol version lives here so far; the services arrive with the
//! coordinator and worker (see the README's roadmap).

/// Bumped on every incompatible change; workers send it when they register.
pub const PROTOCOL_VERSION: u32 = 1;
