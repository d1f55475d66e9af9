//! How a worker runs the models when tagging and evaluating: the options of
//! `atelier tag`, `atelier test` and `atelier submit tag`.

use serde::{Deserialize, Serialize};

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
    };

    pub fn check(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("--batch-size must be positive".into());
        }
        if self.beams == 0 {
            return Err("--beams must be positive (1: greedy decoding)".into());
        }
        Ok(())
    }
}

impl Default for InferenceOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}
