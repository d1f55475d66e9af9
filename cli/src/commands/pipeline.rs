//! `atelier pipeline`: stream a catalogue through decode, resize and normalise.

use std::collections::BTreeMap;
use std::time::Instant;

use atelier_catalog::Catalog;
use atelier_pipeline::{Augment, EncodedImage, ImageLoader, LoaderOptions, Pixels};
use atelier_proto::TrainOptions;
use clap::Args;
use tokio::runtime::Handle;

use crate::progress;

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Catalogue prefix or file: a path or an object-store URL.
    #[arg(long)]
    pub catalog: String,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Batches in flight between reader and consumer (default: 2 per thread).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Training's random resized crop and flip (at the recipe's crop scale),
    /// as `train --augment` means it; off: the centre crop of evaluation and
    /// tagging.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub augment: bool,
    /// Also build the tch tensor of every batch, as training and tagging do.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tensors: bool,
    /// Hand JPEGs over undecoded, as `--gpu-decode` does: what the CPU
    /// still does per image when a GPU decodes (no tensors are built).
    #[arg(long)]
    pub encoded: bool,
}

pub fn run(args: &PipelineArgs, handle: &Handle) -> anyhow::Result<()> {
    // The consumer only turns batches into tensors; libtorch's OpenMP pool
    // would spin after each copy, a fifth of the process's CPU time, taken
    // from the decode threads this command measures.
    tch::set_num_threads(1);
    let catalog = handle.block_on(Catalog::open(&args.catalog))?;
    let defaults = LoaderOptions::default();
    let threads = args.threads.unwrap_or(defaults.threads);
    let options = LoaderOptions {
        image_size: args.image_size,
        batch_size: args.batch_size,
        threads,
        prefetch: args.prefetch.unwrap_or(threads * 2),
        augment: if args.augment {
            Augment::train(TrainOptions::RECIPE.crop_scale, None)
        } else {
            Augment::CenterCrop
        },
        decode_on_device: args.encoded,
        ..defaults
    };
    let total = catalog.num_rows() as u64;
    let bar = progress::bar(total, "pipeline");
    let started = Instant::now();
    let loader = ImageLoader::all(&catalog, options, handle.clone())?;
    let stats = loader.stats();
    let mut errors_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut examples = Vec::new();
    let mut items = 0u64;
    let mut checksum = 0f64;
    let mut encoded = 0u64;
    for batch in loader {
        let batch = batch?;
        items += batch.items.len() as u64;
        if let Pixels::Encoded { images, .. } = &batch.pixels {
            encoded += images
                .iter()
                .filter(|i| matches!(i, EncodedImage::Jpeg { .. }))
                .count() as u64;
            bar.set_position(items);
            continue;
        }
        for failure in batch.failures() {
            *errors_by_kind.entry(failure.error.kind()).or_default() += 1;
            if examples.len() < 5 {
                examples.push(failure.to_string());
            }
        }
        if args.tensors && batch.ok_count() > 0 {
            // Reading one value keeps the tensor from being optimised away.
            checksum += batch.tensor().double_value(&[0, 0, 0, 0]);
        }
        bar.set_position(items);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let snapshot = stats.snapshot();
    let errors: u64 = errors_by_kind.values().sum();
    println!(
        "pipeline: {items} items ({} ok, {errors} errors) at {}px in {seconds:.2}s: {:.1} images/s on {threads} threads ({:.1} per thread)",
        items - errors,
        args.image_size,
        items as f64 / seconds,
        items as f64 / seconds / threads as f64,
    );
    println!(
        "  stage time (summed over threads): read {:.2}s, fetch {:.2}s, decode {:.2}s, resize+normalise {:.2}s",
        snapshot.read_s, snapshot.fetch_s, snapshot.decode_s, snapshot.transform_s
    );
    if args.encoded {
        println!("  {encoded} JPEGs handed over undecoded, the rest decoded here");
    }
    for (kind, count) in &errors_by_kind {
        println!("  errors {kind}: {count}");
    }
    for example in &examples {
        println!("  e.g. {example}");
    }
    tracing::debug!(checksum, "pipeline finished");
    Ok(())
}
