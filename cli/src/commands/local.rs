//! `atelier local`: the main job on one machine with local files.
//!
//! For now: make a synthetic catalogue under the data folder if there is none,
//! then stream it through the image pipeline and report throughput. Training
//! and tagging join this command as they land.

use std::path::PathBuf;

use atelier_catalog::Catalog;
use clap::Args;
use tokio::runtime::Handle;

use super::catalog::{run_generate, GenerateArgs};
use super::pipeline::{self, AugmentArg, PipelineArgs};

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Folder for catalogues and outputs.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Items in the synthetic catalogue made on first run.
    #[arg(long, default_value_t = 2000)]
    pub items: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
}

pub fn run(args: &LocalArgs, handle: &Handle) -> anyhow::Result<()> {
    let catalog = args.data.join("catalog");
    let catalog_url = catalog.display().to_string();
    match handle.block_on(Catalog::open(&catalog_url)) {
        Ok(existing) => println!(
            "using the catalogue at {catalog_url} ({} items)",
            existing.num_rows()
        ),
        Err(_) => {
            println!(
                "no catalogue at {catalog_url}; generating {} synthetic items",
                args.items
            );
            run_generate(
                &GenerateArgs {
                    items: args.items,
                    out: catalog_url.clone(),
                    seed: 0,
                    size: (384, 512),
                    threads: None,
                    rows_per_group: 512,
                    groups_per_file: 4,
                    overwrite: true,
                },
                handle,
            )?;
        }
    }
    pipeline::run(
        &PipelineArgs {
            catalog: catalog_url,
            image_size: args.image_size,
            batch_size: 32,
            threads: None,
            prefetch: None,
            augment: AugmentArg::Center,
            tensors: true,
        },
        handle,
    )?;
    Ok(())
}
