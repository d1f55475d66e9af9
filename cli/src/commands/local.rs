//! `atelier local`: the whole job on one machine with local files.
//!
//! Makes a synthetic catalogue under the data folder if there is none, trains a
//! small pooled classifier on it, evaluates it, tags the whole catalogue, draws
//! the training curves, and prints where everything is. The coordinator and
//! workers take over the tagging step once they exist.

use std::path::PathBuf;
use std::time::Instant;

use atelier_catalog::Catalog;
use clap::Args;
use tokio::runtime::Handle;

use super::catalog::{run_generate, GenerateArgs};
use super::pipeline::{self, AugmentArg, PipelineArgs};
use super::plot::{self, PlotArgs};
use super::tag::{self, InferenceArgs, TagArgs};
use super::test::{self, TestArgs};
use super::train::{self, ArchArg, ModelType, OptimizerArg, ScheduleArg, TrainArgs};

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Folder for the catalogue, checkpoint, tags and plots.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Items in the synthetic catalogue made on first run.
    #[arg(long, default_value_t = 2000)]
    pub items: usize,
    /// Training epochs (a rerun with more epochs resumes the checkpoint).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
}

pub fn run(args: &LocalArgs, handle: &Handle) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = |name: &str| args.data.join(name).display().to_string();
    let (catalog, checkpoint, tags) = (path("catalog"), path("checkpoint"), path("tags"));

    println!("== catalogue");
    match handle.block_on(Catalog::open(&catalog)) {
        Ok(existing) => println!("using {catalog} ({} items)", existing.num_rows()),
        Err(_) => run_generate(
            &GenerateArgs {
                items: args.items,
                out: catalog.clone(),
                seed: 0,
                size: (384, 512),
                threads: None,
                rows_per_group: 512,
                groups_per_file: 4,
                overwrite: true,
            },
            handle,
        )?,
    }

    println!("\n== image pipeline");
    pipeline::run(
        &PipelineArgs {
            catalog: catalog.clone(),
            image_size: args.image_size,
            batch_size: 64,
            threads: None,
            prefetch: None,
            augment: AugmentArg::Center,
            tensors: true,
        },
        handle,
    )?;

    println!("\n== train (colour, brand and clothing type on one ResNet-18)");
    train::run(
        &TrainArgs {
            model_type: ModelType::Pool,
            checkpoint: checkpoint.clone(),
            catalog: catalog.clone(),
            lr: 0.1,
            n_epochs: args.epochs,
            arch: ArchArg::Resnet18,
            batch_size: 32,
            image_size: args.image_size,
            finetune: None,
            backbone_weights: None,
            optimizer: OptimizerArg::Sgd,
            weight_decay: 5e-4,
            momentum: 0.9,
            schedule: ScheduleArg::Onecycle,
            warmup_steps: 0,
            step_every: 1000,
            gamma: 0.1,
            augment: true,
            affine_degrees: 0.0,
            affine_translate: 0.0,
            affine_scale: 0.0,
            val_fraction: 0.1,
            seed: 0,
            device: "cpu".into(),
            threads: None,
            min_label_count: 1,
            min_word_count: 2,
            max_caption_len: 16,
            checkpoint_every: 0,
            log_every: 10,
            channels_last: false,
            shuffle_window: 4096,
            bf16: false,
        },
        handle,
    )?;

    println!("\n== test (validation split)");
    test::run(
        &TestArgs {
            checkpoint: checkpoint.clone(),
            catalog: catalog.clone(),
            all: false,
            top_classes: 0,
            inference: InferenceArgs::default(),
        },
        handle,
    )?;

    println!("\n== tag (every item)");
    tag::run(
        &TagArgs {
            checkpoint: vec![checkpoint.clone()],
            catalog: catalog.clone(),
            out: tags.clone(),
            overwrite: true,
            inference: InferenceArgs::default(),
        },
        handle,
    )?;

    println!("\n== plot");
    plot::run(
        &PlotArgs {
            checkpoint: checkpoint.clone(),
        },
        handle,
    )?;

    println!(
        "\ndone in {:.0}s: catalogue {catalog}, checkpoint {checkpoint}, tags {tags}, plots {checkpoint}/plots",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
