use atelier_catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model specification: {0}")]
    Spec(String),
    #[error("weights do not fit the model: {0}")]
    Weights(String),
    /// A weights file that cannot be read as safetensors (truncated, overwritten).
    #[error("unreadable weights file: {0}")]
    Corrupt(String),
    #[error("checkpoint {url}: {reason}")]
    Checkpoint { url: String, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Catalog(e) => e.is_retryable(),
            ModelError::Io { .. } => true,
            _ => false,
        }
    }
}
