use atelier_catalog::CatalogError;
use atelier_proto::{JobId, ProtoError, TaskId, WorkerId};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("catalogue rejected: {0}")]
    BadCatalog(#[source] CatalogError),
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("worker {0} is not registered (the coordinator may have restarted); register again")]
    UnknownWorker(WorkerId),
    #[error("worker speaks protocol version {worker}, the coordinator {coordinator}; upgrade the older side")]
    ProtocolMismatch { worker: u32, coordinator: u32 },
    #[error("lease {task_id} attempt {attempt} is no longer held: {reason}")]
    StaleLease {
        task_id: TaskId,
        attempt: u32,
        reason: String,
    },
    /// Not `#[source]`: the message carries the cause once (rusqlite's
    /// errors chain to SQLite's, which say the same again).
    #[error("state store {path}: {error}")]
    Store {
        path: String,
        error: rusqlite::Error,
    },
    #[error("state store {path} is held by another process, most likely a coordinator already running on it; one coordinator per --state")]
    StateInUse { path: String },
    #[error("state record {id} cannot be read: {source}")]
    Record {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("output {url}: {reason}")]
    Output { url: String, reason: String },
    /// Committing a finished job's output met the store; whether trying
    /// again later may succeed is the store error's to say (an outage may
    /// end, a missing permission will not).
    #[error("{what} {source}")]
    Commit {
        what: String,
        #[source]
        source: CatalogError,
    },
    /// Two jobs writing one place would interleave their parts or
    /// checkpoints; a retried submit (a CronJob's) meets the first one here.
    #[error("job {job} is still writing {url}; follow it with `atelier status {job} --watch`, or cancel it first")]
    DestinationBusy { job: JobId, url: String },
    /// `--overwrite` there would delete what a running job reads.
    #[error("job {job} reads {url}; write elsewhere, or cancel it first")]
    InputInUse { job: JobId, url: String },
    /// Another submit into the same place is being planned; it becomes a
    /// job in moments, and then the same spec again follows it.
    #[error("another submit is preparing {url}; submit again in a moment")]
    DestinationReserved { url: String },
    /// A rank's checkpoint commit into the place is in flight; it ends in
    /// moments.
    #[error("a checkpoint is being committed to {url}; submit again in a moment")]
    CheckpointCommitting { url: String },
    /// Not `#[source]`: the message carries the cause, and a cause chain
    /// would print it twice.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

impl CoordinatorError {
    /// Whether the same request can succeed later without being changed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::BadCatalog(e) | Self::Commit { source: e, .. } => e.is_retryable(),
            Self::ShuttingDown
            | Self::Output { .. }
            | Self::Store { .. }
            | Self::DestinationReserved { .. }
            | Self::CheckpointCommitting { .. } => true,
            _ => false,
        }
    }

    /// The object store failed transiently (unreachable, throttling): the
    /// same work can be done again once it is back.
    pub fn is_store_outage(&self) -> bool {
        matches!(self, Self::Commit { source, .. } if source.is_retryable())
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument(_) | Self::BadCatalog(_) => Code::InvalidArgument,
            Self::JobNotFound(_) | Self::UnknownWorker(_) => Code::NotFound,
            Self::ProtocolMismatch { .. } | Self::StaleLease { .. } => Code::FailedPrecondition,
            Self::Output { .. } => Code::FailedPrecondition,
            Self::Commit { .. } => Code::Unavailable,
            Self::DestinationBusy { .. } | Self::InputInUse { .. } => Code::AlreadyExists,
            Self::DestinationReserved { .. } | Self::CheckpointCommitting { .. } => {
                Code::Unavailable
            }
            Self::ShuttingDown => Code::Unavailable,
            Self::Store { .. }
            | Self::StateInUse { .. }
            | Self::Record { .. }
            | Self::Io { .. }
            | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ProtoError> for CoordinatorError {
    fn from(error: ProtoError) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}
