//! How a worker runs the models when tagging and evaluating: the options of
//! `atelier tag`, `atelier test` and `atelier submit tag`.

use serde::{Deserialize, Serialize};

use super::names::EmbeddingPrecision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct InferenceOptions {
    /// Items per forward pass.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = InferenceOptions::DEFAULT.batch_size))]
    pub batch_size: usize,
    /// Beam width for captions (1: greedy decoding).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = InferenceOptions::DEFAULT.beams))]
    pub beams: usize,
    /// Run the backbone in bfloat16 (heads and captioner stay float).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = InferenceOptions::DEFAULT.bf16, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub bf16: bool,
    /// Convolutions in channels-last memory order (the same results, faster
    /// oneDNN/cuDNN kernels).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = InferenceOptions::DEFAULT.channels_last, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub channels_last: bool,
    /// Decode JPEGs on the GPU (nvJPEG) instead of the CPU's cores, on
    /// devices that have one.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = InferenceOptions::DEFAULT.gpu_decode, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub gpu_decode: bool,
    /// Also write each item's image embedding (the pooled backbone
    /// features, L2-normalised) in an `embedding` column, for finding
    /// similar products; `float16` halves its size.
    #[cfg_attr(feature = "cli", arg(long, num_args = 0..=1, default_missing_value = "float32"))]
    pub embeddings: Option<EmbeddingPrecision>,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub fetch: FetchOptions,
}

/// How images are read: the size cap, and how hard one image host (a
/// shop's CDN behind `http(s)://` image URIs) is pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct FetchOptions {
    /// The largest encoded image read, inline or fetched, in bytes; a bigger
    /// one becomes the item's error (`too_many_bytes`) and is never read
    /// whole into memory.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = FetchOptions::DEFAULT.max_image_bytes))]
    pub max_image_bytes: u64,
    /// Requests in flight to one image host, per worker process.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = FetchOptions::DEFAULT.fetch_per_host))]
    pub fetch_per_host: u32,
}

impl FetchOptions {
    /// A product photo is rarely over a few MiB, and 64 MiB holds a 16384²
    /// JPEG; 16 requests per host keep a CDN's per-client limits unmet while
    /// a worker's decode threads stay fed.
    pub const DEFAULT: Self = Self {
        max_image_bytes: 64 * 1024 * 1024,
        fetch_per_host: 16,
    };

    pub fn check(&self) -> Result<(), String> {
        if self.max_image_bytes == 0 {
            return Err("--max-image-bytes must be positive".into());
        }
        if self.fetch_per_host == 0 {
            return Err("--fetch-per-host must be positive".into());
        }
        Ok(())
    }
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl InferenceOptions {
    /// Channels-last is on: it gives the same tags as the plain layout,
    /// 1.40x faster on a CPU (BENCHMARKS.md, "Inference layouts"). bf16 is
    /// off although it is 1.8x faster where the CPU has bf16 instructions:
    /// it changes about one tag in 500, and a default must give the same
    /// tags on every worker a job lands on, whatever its processor.
    pub const DEFAULT: Self = Self {
        batch_size: 64,
        beams: 1,
        bf16: false,
        channels_last: true,
        gpu_decode: false,
        embeddings: None,
        fetch: FetchOptions::DEFAULT,
    };

    pub fn check(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("--batch-size must be positive".into());
        }
        if self.beams == 0 {
            return Err("--beams must be positive (1: greedy decoding)".into());
        }
        self.fetch.check()
    }
}

impl Default for InferenceOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}
