//! The coordinator: takes jobs from users, plans them into tasks from Parquet
//! footers, leases the tasks to workers over gRPC, and keeps every job, task
//! and attempt in a SQLite file so that a restart resumes where it stopped.
//!
//! All state changes go through one event loop (`event_loop`) applying a pure
//! state machine (`state`); the gRPC services (`service`) only convert and
//! forward. The `atelier-coordinator` binary (`src/main.rs`) serves it
//! without libtorch in the process, unlike `atelier coordinator`.

pub mod command;
pub mod config;
pub mod error;
pub mod event_loop;
pub mod ids;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod records;
pub mod server;
pub mod service;
pub mod state;
pub mod store;

pub use atelier_proto::PROTOCOL_VERSION;
pub use config::{CoordinatorConfig, TlsIdentity};
pub use error::{CoordinatorError, Result};
pub use server::{serve, serve_with_metrics};
