//! The image pipeline that training and tagging share.
//!
//! Parquet row groups stream in with only the needed columns; `image_uri`
//! objects are fetched concurrently; decode, crop/resize and normalisation run
//! on dedicated OS threads; batches come out in input order as NCHW float
//! tensors. At most `prefetch` batches exist between the reader and the
//! consumer, whatever the catalogue size. A bad image becomes an
//! [`ItemError`] on its own row; the rest of its batch comes through.

mod batch;
mod decode;
mod error;
mod jpeg_header;
mod jpeg_rows;
mod loader;
mod on_device;
mod stats;
mod transform;

pub use batch::{normalize, Batch, BatchItem, EncodedImage, Pixels};
pub use decode::{decode, decode_for_crop, DecodeLimits, RgbImage};
pub use error::{ItemError, ItemFailure, PipelineError, Result};
pub use jpeg_header::{jpeg_header, JpegHeader};
pub use loader::{ImageLoader, ItemFilter, LoaderOptions};
pub use on_device::{CpuJpegDecoder, JpegDecoder};
pub use stats::{PipelineStats, StatsSnapshot};
pub use transform::{Augment, Crop, Normalization, RandomAffine, Transformer};
