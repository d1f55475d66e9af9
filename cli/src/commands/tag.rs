//! `atelier tag`: single-process bulk tagging into Parquet.

use atelier_proto::InferenceOptions;
use atelier_worker::{tag, TagOptions};
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
    #[command(flatten)]
    pub columns: atelier_proto::CatalogColumns,
    /// Output prefix for the tag Parquet files.
    #[arg(long)]
    pub out: String,
    /// Replace existing output under --out.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// How `tag` and `test` run a model on this machine.
#[derive(Debug, Clone, Args)]
pub struct InferenceArgs {
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub options: InferenceOptions,
}

impl Default for InferenceArgs {
    fn default() -> Self {
        Self {
            threads: None,
            device: "cpu".into(),
            options: InferenceOptions::default(),
        }
    }
}

impl InferenceArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(super::all_cores)
    }
}

pub fn run(args: &TagArgs, handle: &Handle) -> anyhow::Result<()> {
    args.columns.check().map_err(anyhow::Error::msg)?;
    let catalog = handle.block_on(atelier_catalog::Catalog::open_mapped(
        &args.catalog,
        &args.columns,
    ))?;
    let bar = progress::bar(catalog.num_rows() as u64, "tag");
    let summary = tag(
        &TagOptions {
            checkpoints: args.checkpoint.clone(),
            catalog: args.catalog.clone(),
            columns: args.columns.clone(),
            out: args.out.clone(),
            threads: args.inference.threads(),
            device: args.inference.device.clone(),
            overwrite: args.overwrite,
            inference: args.inference.options.clone(),
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
