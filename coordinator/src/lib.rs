//! The coordinator: takes jobs from users, plans them into tasks from Parquet
//! footers, leases the tasks to workers over gRPC, and keeps every job, task
//! and attempt in a SQLite file so that a restart resumes where it stopped.
//!
//! All state changes go through one event loop (`event_loop`) applying a pure
//! state machine (`state`: the clock and new ids come from the caller). The
//! gRPC services (`service`) convert requests and run the submit flow:
//! reserve the job's place in the loop, plan it and prepare its output
//! (`plan`) outside the loop, then commit it. `store` keeps every record in
//! SQLite, `manifest` writes a finished tag job's manifest, `prometheus` the
//! metrics. The `atelier-coordinator` binary (`src/main.rs`) serves it
//! without libtorch in the process, unlike `atelier coordinator`. The
//! modules are private; what other crates use is re-exported here.

mod command;
mod config;
mod error;
mod event_loop;
mod ids;
mod manifest;
mod places;
mod plan;
mod prometheus;
mod records;
mod server;
mod service;
mod state;
mod store;

pub use atelier_proto::PROTOCOL_VERSION;
pub use command::{run, CoordinatorArgs};
pub use config::{CoordinatorConfig, TlsIdentity};
pub use error::{CoordinatorError, Result};
pub use plan::ShardSizing;
pub use server::{serve, serve_with_metrics};
