use atelier_catalog::CatalogError;
use atelier_models::ModelError;
use atelier_pipeline::PipelineError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("{0}")]
    Data(String),
    #[error("cancelled")]
    Cancelled,
    #[error("coordinator: {}", atelier_proto::error_text::one_line(.0))]
    Coordinator(#[from] tonic::Status),
    #[error(transparent)]
    Protocol(#[from] atelier_proto::ProtoError),
    #[error("collective: {0}")]
    Collective(#[from] atelier_collective::CollectiveError),
    /// The GPU failed work already queued on it (a CUDA error).
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Catalog(e) => e.is_retryable(),
            WorkerError::Pipeline(e) => e.is_retryable(),
            WorkerError::Model(e) => e.is_retryable(),
            WorkerError::Coordinator(status) => matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
            ),
            WorkerError::Protocol(e) => e.is_retryable(),
            WorkerError::Collective(e) => e.is_retryable(),
            // Another worker's GPU, or this one after a restart, may do it.
            WorkerError::Device(_) => true,
            _ => false,
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            WorkerError::Catalog(e) => e.grpc_code(),
            WorkerError::Pipeline(e) => e.grpc_code(),
            WorkerError::Model(e) => e.grpc_code(),
            WorkerError::Torch(_) | WorkerError::Device(_) => Code::Internal,
            WorkerError::InvalidOptions(_) | WorkerError::Data(_) => Code::InvalidArgument,
            WorkerError::Cancelled => Code::Cancelled,
            WorkerError::Coordinator(status) => status.code(),
            WorkerError::Protocol(e) => e.grpc_code(),
            WorkerError::Collective(e) if e.is_retryable() => Code::Unavailable,
            WorkerError::Collective(_) => Code::FailedPrecondition,
        }
    }
}
