//! `atelier tag`: single-process bulk tagging into Parquet.

use atelier_worker::evaluate::Layout;
use atelier_worker::tag::{tag, TagOptions};
use clap::Args;
use tokio::runtime::Handle;

use crate::progress;

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Checkpoint prefix; give it twice to combine a classifier and a captioner.
    #[arg(long, required = true)]
    pub checkpoint: Vec<String>,
    #[arg(long)]
    pub catalog: String,
    /// Output prefix for the tag Parquet files.
    #[arg(long)]
    pub out: String,
    /// Replace existing output under --out.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// How `tag` and `test` run a model.
#[derive(Debug, Clone, Args)]
pub struct InferenceArgs {
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Beam width for captions (1: greedy decoding).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// Convolutions in channels-last memory order.
    #[arg(long)]
    pub channels_last: bool,
    /// Run the backbone in bfloat16 (heads and captioner stay float).
    #[arg(long)]
    pub bf16: bool,
    /// Decode JPEGs on the GPU (nvJPEG) instead of the CPU's cores; needs a CUDA device.
    #[arg(long)]
    pub gpu_decode: bool,
}

impl Default for InferenceArgs {
    fn default() -> Self {
        Self {
            batch_size: 64,
            threads: None,
            device: "cpu".into(),
            beams: 1,
            channels_last: false,
            bf16: false,
            gpu_decode: false,
        }
    }
}

impl InferenceArgs {
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
    }

    pub fn layout(&self) -> Layout {
        Layout {
            channels_last: self.channels_last,
            bf16: self.bf16,
            gpu_decode: self.gpu_decode,
        }
    }
}

pub fn run(args: &TagArgs, handle: &Handle) -> anyhow::Result<()> {
    let catalog = handle.block_on(atelier_catalog::Catalog::open(&args.catalog))?;
    let bar = progress::bar(catalog.num_rows() as u64, "tag");
    let summary = tag(
        &TagOptions {
            checkpoints: args.checkpoint.clone(),
            catalog: args.catalog.clone(),
            out: args.out.clone(),
            batch_size: args.inference.batch_size,
            threads: args.inference.threads(),
            device: args.inference.device.clone(),
            beams: args.inference.beams,
            overwrite: args.overwrite,
            layout: args.inference.layout(),
        },
        handle,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    println!(
        "tagged {} items ({} with errors) in {:.1}s, {:.1} items/s, into {} files under {}",
        summary.items,
        summary.errors,
        summary.seconds,
        summary.items as f64 / summary.seconds.max(1e-9),
        summary.files.len(),
        args.out
    );
    if let Some(line) = crate::commands::stages::describe(&summary.stages) {
        println!("{line}");
    }
    Ok(())
}
