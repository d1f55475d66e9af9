//! `test` mode: metrics of a checkpoint on a catalogue, as a report.

use std::collections::BTreeMap;

use atelier_catalog::HttpLimits;
use atelier_catalog::{Catalog, ReadRange};
use atelier_models::tokenize;
use atelier_models::Model;
use atelier_models::{CheckpointDir, Manifest};
use atelier_pipeline::DecodeLimits;
use atelier_pipeline::{Augment, ImageLoader, ItemFilter, LoaderOptions, Normalization};
use atelier_proto::{CatalogColumns, FetchOptions, InferenceOptions};
use bytes::Bytes;
use serde::Serialize;
use tch::{Device, Kind};
use tokio::runtime::Handle;

use crate::dataset::in_validation;
use crate::error::{Result, WorkerError};
use crate::scores::{bleu, classification, ClassificationReport};

pub const REPORT: &str = "test-report.json";

#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    pub checkpoint: String,
    pub catalog: String,
    /// The catalogue's column names.
    pub columns: CatalogColumns,
    /// Evaluate only the validation split (by the run's own split), or every item.
    pub validation_only: bool,
    pub threads: usize,
    pub device: String,
    pub inference: InferenceOptions,
}

/// How an inference model is laid out in memory and which precision its backbone runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub channels_last: bool,
    pub bf16: bool,
    /// JPEGs decoded by nvJPEG on the GPU rather than on the CPU's cores;
    /// has no effect on a CPU device.
    pub gpu_decode: bool,
}

impl From<&InferenceOptions> for Layout {
    fn from(options: &InferenceOptions) -> Self {
        Self {
            channels_last: options.channels_last,
            bf16: options.bf16,
            gpu_decode: options.gpu_decode,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionReport {
    pub items: usize,
    pub bleu: [f64; 4],
    pub exact_match: f64,
    /// BLEU-4 and exact match of always answering the most frequent caption.
    pub baseline_bleu4: f64,
    pub baseline_exact_match: f64,
    pub baseline_caption: String,
    /// A few (reference, generated) pairs.
    pub examples: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub catalog: String,
    pub split: String,
    pub items: usize,
    pub image_errors: usize,
    pub attributes: BTreeMap<String, ClassificationReport>,
    pub caption: Option<CaptionReport>,
    pub report_url: String,
}

/// Loads a checkpoint's model for inference.
pub fn load_model(
    checkpoint: &CheckpointDir,
    handle: &Handle,
    device: Device,
    layout: Layout,
) -> Result<(Manifest, Model)> {
    let manifest = handle.block_on(checkpoint.require_manifest())?;
    let mut model = Model::new(manifest.model.clone(), device)?;
    handle.block_on(checkpoint.load_weights(&manifest.weights, &mut model))?;
    model.fold_batch_norms();
    if layout.channels_last {
        model.use_channels_last();
    }
    if layout.bf16 {
        model.use_bf16_backbone();
    }
    Ok((manifest, model))
}

/// The loader options a checkpoint was trained for, framed as it was. For a
/// GPU the pixels come as bytes and are normalised on the device.
pub fn inference_loader_options(
    manifest: &Manifest,
    batch_size: usize,
    threads: usize,
    device: tch::Device,
    gpu_decode: bool,
    fetch: FetchOptions,
) -> LoaderOptions {
    LoaderOptions {
        limits: DecodeLimits {
            max_bytes: fetch.max_image_bytes,
            ..DecodeLimits::default()
        },
        http: HttpLimits {
            per_host: fetch.fetch_per_host as usize,
            ..HttpLimits::default()
        },
        image_size: manifest.image_size,
        batch_size,
        threads: threads.max(1),
        prefetch: threads.max(1) * 2,
        augment: Augment::CenterCrop,
        framing: manifest.framing,
        labels: crate::dataset::label_attributes(manifest.model.attributes()),
        normalization: Normalization {
            mean: manifest.normalization.mean,
            std: manifest.normalization.std,
        },
        raw_bytes: device.is_cuda(),
        decode_on_device: gpu_decode && device.is_cuda(),
        ..LoaderOptions::default()
    }
}

/// Per attribute: predicted class, target class, and whether the target was in the top five.
type Predictions = (Vec<i64>, Vec<i64>, Vec<bool>);

/// Evaluates a checkpoint on a catalogue. `stop` is asked between batches;
/// once it says so the evaluation ends with [`WorkerError::Cancelled`].
pub fn evaluate(
    options: &EvaluateOptions,
    handle: &Handle,
    stop: &dyn Fn() -> bool,
) -> Result<EvalReport> {
    let device = crate::device::parse_device(&options.device)?;
    let layout = Layout::from(&options.inference);
    crate::device::check_gpu_decode(layout.gpu_decode, device)?;
    let checkpoint = CheckpointDir::parse(&options.checkpoint)?;
    let (manifest, model) = load_model(&checkpoint, handle, device, layout)?;
    let catalog = handle.block_on(Catalog::open_mapped(&options.catalog, &options.columns))?;
    let val_fraction = manifest
        .train
        .get("val_fraction")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.1);
    let mut loader_options = inference_loader_options(
        &manifest,
        options.inference.batch_size,
        options.threads,
        device,
        layout.gpu_decode,
        options.inference.fetch,
    );
    if options.validation_only {
        loader_options.keep = Some(ItemFilter::new(move |id| in_validation(id, val_fraction)));
    }
    let ranges: Vec<ReadRange> = catalog.full_ranges();
    let loader = ImageLoader::new(&catalog, ranges, loader_options, handle.clone())?;

    let spec = &model.spec;
    let mut predictions: BTreeMap<String, Predictions> = BTreeMap::new();
    let mut references = Vec::new();
    let mut hypotheses = Vec::new();
    let mut items = 0;
    let mut image_errors = 0;
    let _guard = tch::no_grad_guard();
    for batch in loader {
        if stop() {
            return Err(WorkerError::Cancelled);
        }
        let mut batch = batch?;
        let images =
            (batch.ok_count() > 0).then(|| crate::device::device_images(&mut batch, device));
        items += batch.items.len();
        image_errors += batch.items.len() - batch.ok_count();
        let Some(images) = images.filter(|_| batch.ok_count() > 0) else {
            continue;
        };
        let ok: Vec<_> = batch.items.iter().filter(|i| i.slot.is_ok()).collect();
        let features = model.features(&images, false);
        if let Some(annotator) = model.annotator() {
            let vocab = spec.vocab.as_ref().expect("a captioner has a vocabulary");
            let decoded = if options.inference.beams > 1 {
                annotator.beam_search(&features, options.inference.beams, spec.max_caption_len)
            } else {
                annotator.annotate(&features, spec.max_caption_len)
            };
            for (item, tokens) in ok.iter().zip(decoded) {
                if let Some(caption) = item.labels.get(atelier_catalog::CAPTION) {
                    references.push(tokenize(caption));
                    hypotheses.push(tokenize(&vocab.decode(&tokens)));
                }
            }
            continue;
        }
        for (name, logits) in model.logits(&features) {
            let map = &spec.labels[&name];
            let k = 5.min(map.len() as i64);
            let top = logits.topk(k, -1, true, true).1;
            let top: Vec<Vec<i64>> =
                Vec::<Vec<i64>>::try_from(&top.to_kind(Kind::Int64)).unwrap_or_default();
            let entry = predictions.entry(name.clone()).or_default();
            for (item, guesses) in ok.iter().zip(top) {
                let Some(label) = item.labels.get(&name) else {
                    continue;
                };
                let target = map.target(Some(label));
                entry.0.push(guesses[0]);
                entry.1.push(target);
                entry.2.push(guesses.contains(&target));
            }
        }
    }
    let attributes = predictions
        .into_iter()
        .map(|(name, (p, t, top5))| {
            let report = classification(&spec.labels[&name].classes, &p, &t, &top5);
            (name, report)
        })
        .collect();
    let caption = (!references.is_empty()).then(|| caption_report(&references, &hypotheses));
    let report_location = checkpoint.location.child(REPORT);
    let report = EvalReport {
        checkpoint: checkpoint.url(),
        catalog: catalog.location.url(),
        split: if options.validation_only {
            "validation"
        } else {
            "all"
        }
        .to_string(),
        items,
        image_errors,
        attributes,
        caption,
        report_url: report_location.url(),
    };
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    handle.block_on(checkpoint.put(REPORT, Bytes::from(json)))?;
    Ok(report)
}

fn caption_report(references: &[Vec<String>], hypotheses: &[Vec<String>]) -> CaptionReport {
    let exact = references
        .iter()
        .zip(hypotheses)
        .filter(|(r, h)| r == h)
        .count();
    let mut counts: BTreeMap<&Vec<String>, usize> = BTreeMap::new();
    for reference in references {
        *counts.entry(reference).or_default() += 1;
    }
    let baseline = counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(r, _)| r.clone())
        .unwrap_or_default();
    let baseline_hypotheses = vec![baseline.clone(); references.len()];
    let baseline_exact = references.iter().filter(|r| **r == baseline).count();
    let n = references.len().max(1) as f64;
    CaptionReport {
        items: references.len(),
        bleu: bleu(references, hypotheses),
        exact_match: exact as f64 / n,
        baseline_bleu4: bleu(references, &baseline_hypotheses)[3],
        baseline_exact_match: baseline_exact as f64 / n,
        baseline_caption: baseline.join(" "),
        examples: references
            .iter()
            .zip(hypotheses)
            .take(5)
            .map(|(r, h)| (r.join(" "), h.join(" ")))
            .collect(),
    }
}
