//! Where models run. The training, evaluation and tagging loops here are used
//! by the single-process commands (`atelier train | test | tag`) and, later, by
//! the gRPC worker.
//!
//! Compute runs on the calling OS thread (never on the async runtime); the
//! runtime handle passed in only serves object-store I/O.

pub mod agent;
pub mod completion;
pub mod dataset;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod metrics;
pub mod nvjpeg;
pub mod sampler;
pub mod tag;
pub mod targets;
pub mod train;

pub use atelier_proto::PROTOCOL_VERSION;
pub use error::{Result, WorkerError};
