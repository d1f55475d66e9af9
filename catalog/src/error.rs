/// Every way a catalogue operation fails. Each variant names the file, URL or
/// column at fault so that the message alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid catalogue url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("object store error at {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },

    #[error("not found: {url}")]
    NotFound { url: String },

    /// An HTTP server or the network failed (throttling, 5xx, a reset, a
    /// stalled body) on every try; a later attempt may succeed.
    #[error("fetching {url}: {reason} (gave up after {tries} tries)")]
    Http {
        url: String,
        reason: String,
        tries: u32,
    },

    #[error("{url} holds no Parquet files")]
    Empty { url: String },

    #[error("{file} is not a Parquet file: {reason}")]
    NotParquet { file: String, reason: String },

    #[error("{file}: {problem}")]
    Schema { file: String, problem: String },

    #[error("Parquet file {file}: {source}")]
    Parquet {
        file: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("arrow error: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {reason}")]
    Csv { path: String, reason: String },

    #[error("{url} already holds a catalogue; pass --overwrite to replace it")]
    AlreadyExists { url: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

impl CatalogError {
    /// Whether trying the same operation again may succeed (transient store faults).
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Store { source, .. } => store_error_is_transient(source),
            CatalogError::Http { .. } => true,
            // The async reader and writer wrap store errors as External.
            CatalogError::Parquet {
                source: parquet::errors::ParquetError::External(inner),
                ..
            } => inner
                .downcast_ref::<object_store::Error>()
                .is_some_and(store_error_is_transient),
            CatalogError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
            ),
            _ => false,
        }
    }

    pub fn store(url: impl Into<String>, source: object_store::Error) -> Self {
        let url = url.into();
        match source {
            object_store::Error::NotFound { .. } => CatalogError::NotFound { url },
            source => CatalogError::Store { url, source },
        }
    }
}

fn store_error_is_transient(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}
