use std::fmt;

use atelier_catalog::CatalogError;

/// Why one item produced no image. Carried per item; never fails a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("no image: both image and image_uri are null")]
    NoImage,
    #[error("unsupported image format (leading bytes {0})")]
    UnsupportedFormat(String),
    #[error("image header claims {width}x{height} pixels, over the limit of {limit}")]
    TooLarge {
        width: u64,
        height: u64,
        limit: String,
    },
    #[error("corrupt {format} image: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("image object is {bytes} bytes, over the limit of {limit}")]
    TooManyBytes { bytes: u64, limit: u64 },
    /// The object itself is missing, forbidden or unaddressable. A store that
    /// is down or throttling fails the batch instead, so the task is retried.
    #[error("cannot fetch {uri}: {reason}")]
    Fetch { uri: String, reason: String },
}

impl ItemError {
    /// A short stable code for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemError::Empty => "empty",
            ItemError::NoImage => "no_image",
            ItemError::UnsupportedFormat(_) => "unsupported_format",
            ItemError::TooLarge { .. } => "too_large",
            ItemError::TooManyBytes { .. } => "too_many_bytes",
            ItemError::Corrupt { .. } => "corrupt",
            ItemError::Fetch { .. } => "fetch",
        }
    }
}

/// An item that could not be processed, named by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    pub item_id: String,
    pub error: ItemError,
}

impl fmt::Display for ItemFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {}: {}", self.item_id, self.error)
    }
}

/// Failures of the pipeline as a whole (as opposed to one item).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("invalid pipeline options: {0}")]
    InvalidOptions(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] tch::TchError),
    #[error("pipeline worker failed: {0}")]
    Worker(String),
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

impl PipelineError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Catalog(e) => e.is_retryable(),
            _ => false,
        }
    }
}
