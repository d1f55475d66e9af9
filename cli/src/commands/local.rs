//! `atelier local`: the whole job on one machine with local files.
//!
//! Makes a synthetic catalogue under the data folder if there is none, trains a
//! small pooled classifier on it, evaluates it, starts a coordinator and two
//! workers in this process on loopback (state in `data/coordinator.db`), tags
//! the whole catalogue through them, draws the training curves, and prints a
//! summary: items, errors, accuracy against the labels, throughput, and where
//! everything is.

use std::path::{Path, PathBuf};
use std::time::Instant;

use atelier_catalog::Catalog;
use atelier_proto::v1;
use atelier_proto::{Arch, InferenceOptions, Task, TrainOptions};
use atelier_proto::{CatalogColumns, TagJobSpec};
use clap::Args;
use tokio::runtime::Handle;

use super::catalog::{run_generate, GenerateArgs};
use super::cluster::AccessArgs;
use super::jobs::{ensure_succeeded, print_job, ClientArgs};
use super::local_cluster::LocalCluster;
use super::pipeline::{self, PipelineArgs};
use super::plot::{self, PlotArgs};
use super::tag::InferenceArgs;
use super::tag_accuracy::tag_accuracy;
use super::test::{self, TestArgs};
use super::train::{self, TrainArgs, TrainPlaces};
use super::watch::watch;

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
            augment: false,
            tensors: true,
            encoded: false,
        },
        handle,
    )?;

    println!("\n== train (colour, brand and clothing type on one ResNet-18)");
    train::run(
        &TrainArgs {
            places: TrainPlaces {
                catalog: catalog.clone(),
                checkpoint: checkpoint.clone(),
                columns: CatalogColumns::default(),
            },
            device: "cpu".into(),
            threads: None,
            // The recipe, on a backbone and image size fit for small
            // synthetic photos and two cores.
            options: TrainOptions {
                task: Task::Pool,
                arch: Arch::Resnet18,
                epochs: args.epochs,
                image_size: args.image_size,
                ..TrainOptions::RECIPE
            },
        },
        handle,
    )?;

    println!("\n== test (validation split)");
    test::run(
        &TestArgs {
            checkpoint: checkpoint.clone(),
            catalog: catalog.clone(),
            columns: CatalogColumns::default(),
            all: false,
            top_classes: 0,
            inference: InferenceArgs::default(),
        },
        handle,
    )?;

    println!("\n== tag every item through a coordinator and two workers on loopback");
    let threads = super::all_cores();
    let cluster = LocalCluster::start(handle, &args.data.join("coordinator.db"), 2, threads)?;
    let client = ClientArgs {
        coordinator: cluster.address.clone(),
        token: AccessArgs::default(),
    };
    let absolute =
        |p: &str| -> anyhow::Result<String> { Ok(std::path::absolute(p)?.display().to_string()) };
    let spec = TagJobSpec {
        catalog: absolute(&catalog)?,
        columns: CatalogColumns::default(),
        checkpoints: vec![absolute(&checkpoint)?],
        output: absolute(&tags)?,
        target_shard_rows: None,
        max_attempts: None,
        inference: InferenceOptions::default(),
        overwrite: true,
    };
    let job = handle.block_on(async {
        let mut jobs = client.connect().await?;
        let job_id = jobs
            .submit_tag_job(v1::SubmitTagJobRequest::from(spec))
            .await?
            .into_inner()
            .job_id;
        println!("submitted {job_id} to {}", cluster.address);
        anyhow::Ok(watch(&mut jobs, &job_id).await?)
    })?;
    cluster.stop(handle)?;
    print_job(&job);
    ensure_succeeded(&job)?;

    println!("\n== plot");
    plot::run(
        &PlotArgs {
            checkpoint: checkpoint.clone(),
        },
        handle,
    )?;

    let tagged = job.tag.clone().unwrap_or_default();
    println!("\n== summary");
    println!(
        "items tagged: {} ({} with image errors) in {} shards, {:.0} items/s through the coordinator",
        tagged.items_done, tagged.items_failed, tagged.shards_total, tagged.items_per_second
    );
    for (attribute, (correct, total)) in tag_accuracy(Path::new(&catalog), Path::new(&tags))? {
        println!(
            "{attribute} tags agreeing with the catalogue labels: {:.3} ({correct}/{total}, every item, training split included)",
            correct as f64 / total.max(1) as f64
        );
    }
    println!("catalogue   {catalog}");
    println!("checkpoint  {checkpoint} (test report: {checkpoint}/test-report.json)");
    println!("tags        {tags} (part-NNNNN.parquet, _manifest.json, _SUCCESS)");
    println!("plots       {checkpoint}/plots");
    println!(
        "coordinator state {}",
        args.data.join("coordinator.db").display()
    );
    println!("done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
