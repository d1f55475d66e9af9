//! Where models run: the training, evaluation and tagging loops, used by the
//! single-process commands (`atelier train | test | tag`), and the agent that
//! serves them to a coordinator as an `atelier worker` (`agent`: one lane per
//! device, each a gRPC session and a compute thread).
//!
//! Compute runs on the calling OS thread (never on the async runtime); the
//! runtime handle passed in only serves object-store I/O. The modules are
//! private; what other crates use is re-exported here.

mod agent;
mod completion;
mod dataset;
mod device;
mod error;
mod evaluate;
mod nvjpeg;
mod sampler;
mod scores;
mod tag;
mod targets;
mod train;

pub use agent::{
    run_agent, serve_health, train_setup, AgentOptions, AgentSummary, WorkerMetrics,
    DEFAULT_STALL_TIMEOUT,
};
pub use atelier_proto::PROTOCOL_VERSION;
pub use completion::CompletionEvent;
pub use device::parse_device;
pub use error::{Result, WorkerError};
pub use evaluate::{evaluate, load_model, EvalReport, EvaluateOptions, Layout, REPORT};
pub use nvjpeg::{NvJpegDecoder, NvJpegLibrary};
pub use scores::{ClassMetrics, ClassificationReport};
pub use tag::{similar, tag, Neighbour, TagOptions, TagSummary, EMBEDDING};
pub use train::{
    train, train_ranked, train_until, CheckpointCommit, MetricsLine, TrainEvent, TrainSetup,
    TrainSummary,
};
