use thiserror::Error;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

pub type Result<T, E = ProtoError> = std::result::Result<T, E>;

impl ProtoError {
    /// Malformed messages stay malformed when sent again; an unreachable
    /// coordinator may come back.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Unreachable { .. } => tonic::Code::Unavailable,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

impl From<ProtoError> for tonic::Status {
    fn from(error: ProtoError) -> Self {
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}
