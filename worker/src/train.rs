//! The training loop: one process, CPU or one GPU. Resumes from its checkpoint.

use std::collections::BTreeMap;
use std::time::Instant;

use atelier_catalog::{Catalog, ReadRange};
use atelier_collective::{
    broadcast_tensors, Backend, Collective, GradientBuckets, SingleRank, DEFAULT_BUCKET_BYTES,
};
use atelier_models::autocast::Bf16Autocast;
use atelier_models::checkpoint::{
    CheckpointDir, Manifest, Normalization as SavedNormalization, FORMAT_VERSION, METRICS,
};
use atelier_models::optim::{Optimizer, OptimizerConfig, OptimizerKind, Schedule, ScheduleKind};
use atelier_models::{Arch, Model, ModelSpec, Task};
use atelier_pipeline::{
    Augment, ImageLoader, ItemFilter, LoaderOptions, Normalization, RandomAffine,
};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};
use tokio::runtime::Handle;

use crate::dataset::{in_validation, scan_labels};
use crate::device::device_name;
use crate::error::{Result, WorkerError};
use crate::sampler::{rank_share, single_row_groups, validates_on, TrainingIds};
use crate::targets::inputs;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub catalog: String,
    pub checkpoint: String,
    pub task: Task,
    pub arch: Arch,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub image_size: usize,
    /// Train the backbone; default: on from random weights, off with `backbone_weights`.
    pub finetune: Option<bool>,
    /// A safetensors file of torchvision backbone weights.
    pub backbone_weights: Option<String>,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    pub momentum: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: i64,
    pub step_every: i64,
    pub gamma: f64,
    /// Random resized crop and horizontal flip.
    pub augment: bool,
    /// Random affine warp on top (0 turns each part off): rotation in degrees,
    /// translation and scaling as fractions.
    #[serde(default)]
    pub affine_degrees: f32,
    #[serde(default)]
    pub affine_translate: f32,
    #[serde(default)]
    pub affine_scale: f32,
    /// Smallest area share of the random resized crop (the largest is 1).
    #[serde(default = "default_crop_scale")]
    pub crop_scale: f32,
    pub val_fraction: f64,
    pub seed: u64,
    pub device: String,
    /// Decode threads.
    pub threads: usize,
    pub min_label_count: usize,
    pub min_word_count: usize,
    pub max_caption_len: usize,
    /// Also checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Log a training metrics line every this many steps.
    pub log_every: usize,
    /// Convolutions in channels-last memory order.
    #[serde(default)]
    pub channels_last: bool,
    /// Training items are shuffled within a buffer of this many.
    #[serde(default)]
    pub shuffle_window: usize,
    /// bf16 autocast for forward passes (CUDA only).
    #[serde(default)]
    pub bf16: bool,
    /// Stop (with a checkpoint) after this many optimizer steps in all.
    #[serde(default)]
    pub max_steps: Option<i64>,
}

/// What the loop reports while it runs.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Started {
        total_steps: i64,
        resumed_at_step: i64,
        train_items: usize,
        validation_items: usize,
    },
    Step {
        epoch: usize,
        step: i64,
        /// Mean over the global batch (all ranks).
        loss: f64,
        lr: f64,
        /// This rank's images per second.
        images_per_s: f64,
        /// Seconds this rank has spent in gradient all-reduces so far.
        allreduce_seconds: f64,
        /// Bytes this rank has all-reduced so far.
        allreduce_bytes: u64,
    },
    Epoch {
        epoch: usize,
        metrics: BTreeMap<String, f64>,
    },
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: i64,
    pub epochs: usize,
    pub metrics: BTreeMap<String, f64>,
    pub images_per_s: f64,
    pub checkpoint: String,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: i64,
    pub epoch: f64,
    pub split: String,
    /// JSON has no NaN; a diverged loss is written as null and read back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub lr: f64,
    pub images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, f64>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

struct Run {
    model: Model,
    optimizer: Optimizer,
    schedule: Schedule,
    manifest: Manifest,
    metrics: Vec<MetricsLine>,
}

pub fn train(
    options: &TrainOptions,
    handle: &Handle,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    train_until(options, handle, &|| false, on_event)
}

/// `train`, stopping with `WorkerError::Cancelled` after a checkpoint once
/// `stop` says so; run again, it resumes from there.
pub fn train_until(
    options: &TrainOptions,
    handle: &Handle,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    train_ranked(options, handle, &mut SingleRank, stop, on_event)
}

/// One rank of a data-parallel run (or the only one, with [`SingleRank`]).
/// Every rank calls this with the same options; gradients are averaged over
/// the global batch through `collective`, and only rank 0 writes checkpoints.
pub fn train_ranked(
    options: &TrainOptions,
    handle: &Handle,
    collective: &mut dyn Collective,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    validate(options)?;
    let (rank, world) = (collective.rank(), collective.world_size());
    let distributed = world > 1;
    let device = crate::device::parse_device(&options.device)?;
    let autocast = Bf16Autocast::new(options.bf16, device)?;
    let catalog = handle.block_on(Catalog::open(&options.catalog))?;
    let checkpoint = CheckpointDir::parse(&options.checkpoint)?;
    let scan = handle.block_on(scan_labels(
        &catalog,
        options.task,
        options.val_fraction,
        options.min_label_count,
        options.min_word_count,
    ))?;
    if scan.train_items == 0 {
        return Err(WorkerError::Data(format!(
            "{}: no training items after the validation split",
            catalog.location
        )));
    }
    let training_ids = if distributed {
        Some(handle.block_on(TrainingIds::scan(&catalog, options.val_fraction))?)
    } else {
        None
    };
    let global_batch = options.batch_size * world;
    let steps_per_epoch = if distributed {
        (scan.train_items / global_batch) as i64
    } else {
        scan.train_items.div_ceil(options.batch_size) as i64
    };
    if steps_per_epoch == 0 {
        return Err(WorkerError::Data(format!(
            "{}: {} training items do not fill one global batch of {world} x {}",
            catalog.location, scan.train_items, options.batch_size
        )));
    }
    let mut run = start_or_resume(
        options,
        &checkpoint,
        handle,
        &scan,
        steps_per_epoch * options.epochs as i64,
        device,
    )?;
    if distributed {
        // Every rank starts from rank 0's weights (fresh or resumed), as in DDP.
        let state: Vec<tch::Tensor> = run.model.state().into_iter().map(|(_, t)| t).collect();
        broadcast_tensors(collective, &state, 0)?;
    }
    let trainable: Vec<tch::Tensor> = run.model.trainable().into_iter().map(|(_, t)| t).collect();
    let buckets = GradientBuckets::new(
        trainable.iter().map(tch::Tensor::shallow_clone).collect(),
        DEFAULT_BUCKET_BYTES,
    );
    let mut allreduce_seconds = 0.0;
    let mut allreduce_bytes = 0u64;
    on_event(&TrainEvent::Started {
        // Where this run stops; the schedule still spans every epoch.
        total_steps: options.max_steps.map_or(run.schedule.total_steps, |m| {
            m.min(run.schedule.total_steps)
        }),
        resumed_at_step: run.manifest.step,
        train_items: scan.train_items,
        validation_items: scan.validation_items,
    });

    let started = Instant::now();
    let mut images_seen = 0usize;
    while run.manifest.epoch < options.epochs {
        let epoch = run.manifest.epoch;
        let skip = run.manifest.batch_in_epoch;
        let (loader, steps) = match &training_ids {
            Some(ids) => {
                let groups = epoch_group_order(options, &catalog, epoch);
                let share = rank_share(
                    ids.in_group_order(&groups),
                    ids.len(),
                    rank,
                    world,
                    options.batch_size,
                );
                let keep = ItemFilter::new(move |id| share.items.contains(id));
                (
                    epoch_loader_with(options, &catalog, handle, epoch, Some(keep))?,
                    Some(share.steps),
                )
            }
            None => (epoch_loader(options, &catalog, handle, epoch, false)?, None),
        };
        let mut loader = loader.fuse();
        let mut window_loss = WindowLoss::default();
        let mut window_images = 0usize;
        let mut window_start = Instant::now();
        for index in 0.. {
            // Ranks run the same number of steps even when one's loader ends
            // early (broken images); it then contributes an empty batch.
            let batch = match (loader.next(), steps) {
                (_, Some(steps)) if index >= steps => break,
                (Some(batch), _) => Some(batch?),
                (None, Some(_)) => None,
                (None, None) => break,
            };
            if index < skip {
                continue;
            }
            if stop() {
                if rank == 0 {
                    save(&mut run, &checkpoint, handle)?;
                }
                return Err(WorkerError::Cancelled);
            }
            let inputs = batch.map(|b| inputs(&run.model.spec, &b, device));
            let count = inputs.as_ref().map_or(0, |i| i.count);
            if count == 0 && !distributed {
                continue;
            }
            let lr = run.schedule.lr(run.optimizer.steps);
            run.optimizer.zero_grad();
            let local_loss = match &inputs {
                Some(inputs) if inputs.count > 0 => {
                    let loss = autocast.run(|| loss(&run.model, inputs, true));
                    loss.backward();
                    Some(loss.detach())
                }
                _ => None,
            };
            if distributed {
                define_missing_grads(&trainable);
            }
            // A world of one forced onto NCCL (the GPU check) all-reduces too.
            if collective.backend() != Backend::Single {
                // The all-reduce waits for the device anyway; the loss rides along.
                let local = local_loss.map_or(0.0, |l| l.double_value(&[]));
                let synced = buckets.sync(collective, count, local * count as f64)?;
                allreduce_seconds += synced.seconds;
                allreduce_bytes += synced.bytes;
                window_loss.add(synced.loss_sum, synced.items);
            } else if let Some(local) = local_loss {
                window_loss.add_on_device(&local, count);
            }
            run.optimizer.step(lr);
            run.manifest.step = run.optimizer.steps;
            run.manifest.batch_in_epoch = index + 1;
            window_images += count;
            images_seen += count;
            let steps_in_epoch = steps.map_or(steps_per_epoch, |s| s as i64);
            let at_limit = options.max_steps.is_some_and(|m| run.manifest.step >= m);
            // The last step of an epoch or of the run is always reported, so
            // that a job's final status and curves end where training did.
            let last = at_limit || (index + 1) as i64 >= steps_in_epoch;
            let report = last || run.manifest.step % options.log_every.max(1) as i64 == 0;
            let save_now = rank == 0
                && (at_limit
                    || (options.checkpoint_every > 0
                        && run.manifest.step % options.checkpoint_every as i64 == 0));
            // The loss is looked at when reported or saved, not every step: a
            // diverged run stops there, before a checkpoint could keep it.
            let mean = (report || save_now).then(|| window_loss.mean());
            if let Some(mean) = mean.filter(|m| !m.is_finite()) {
                return Err(WorkerError::Data(format!(
                    "loss became {mean} by step {}; lower --lr",
                    run.optimizer.steps
                )));
            }
            if let Some(mean) = mean.filter(|_| report) {
                let rate = window_images as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                run.metrics.push(MetricsLine {
                    step: run.manifest.step,
                    epoch: epoch as f64 + (index + 1) as f64 / steps_in_epoch as f64,
                    split: "train".into(),
                    loss: mean,
                    accuracy: None,
                    lr,
                    images_per_s: Some(rate),
                    detail: BTreeMap::new(),
                });
                on_event(&TrainEvent::Step {
                    epoch,
                    step: run.manifest.step,
                    loss: mean,
                    lr,
                    images_per_s: rate,
                    allreduce_seconds,
                    allreduce_bytes,
                });
                window_loss = WindowLoss::default();
                window_images = 0;
                window_start = Instant::now();
            }
            if save_now {
                save(&mut run, &checkpoint, handle)?;
            }
            if at_limit {
                return Ok(summary(&run, &checkpoint, images_seen, started));
            }
        }
        let metrics = autocast.run(|| {
            validate_epoch(
                options, &catalog, handle, &run.model, epoch, device, collective,
            )
        })?;
        run.manifest.epoch = epoch + 1;
        run.manifest.batch_in_epoch = 0;
        // JSON cannot hold NaN or infinity (a diverged validation loss); leave those out.
        run.manifest.metrics = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        run.metrics.push(MetricsLine {
            step: run.manifest.step,
            epoch: (epoch + 1) as f64,
            split: "validation".into(),
            loss: metrics.get("loss").copied().unwrap_or(f64::NAN),
            accuracy: metrics.get("accuracy").copied(),
            lr: run.schedule.lr(run.optimizer.steps.saturating_sub(1)),
            images_per_s: None,
            detail: metrics.clone(),
        });
        if rank == 0 {
            save(&mut run, &checkpoint, handle)?;
        }
        on_event(&TrainEvent::Epoch {
            epoch: epoch + 1,
            metrics,
        });
    }
    Ok(summary(&run, &checkpoint, images_seen, started))
}

fn summary(
    run: &Run,
    checkpoint: &CheckpointDir,
    images_seen: usize,
    started: Instant,
) -> TrainSummary {
    TrainSummary {
        steps: run.manifest.step,
        epochs: run.manifest.epoch,
        metrics: run.manifest.metrics.clone(),
        images_per_s: images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
        checkpoint: checkpoint.url(),
    }
}

/// A rank whose batch was empty still takes part in the all-reduce, with
/// zero gradients; so does a parameter the loss did not reach.
fn define_missing_grads(params: &[tch::Tensor]) {
    let missing: Vec<&tch::Tensor> = params.iter().filter(|p| !p.grad().defined()).collect();
    if missing.is_empty() {
        return;
    }
    let zero = missing
        .iter()
        .map(|p| p.sum(Kind::Float) * 0.0)
        .reduce(|a, b| a + b);
    if let Some(zero) = zero {
        zero.backward();
    }
}

fn validate(options: &TrainOptions) -> Result<()> {
    let invalid = |m: String| Err(WorkerError::InvalidOptions(m));
    if !(options.lr > 0.0 && options.lr.is_finite()) {
        return invalid(format!("--lr must be positive, got {}", options.lr));
    }
    if options.batch_size == 0 || options.epochs == 0 {
        return invalid("--batch-size and --n-epochs must be positive".into());
    }
    if !(0.0..1.0).contains(&options.val_fraction) {
        return invalid(format!(
            "--val-fraction must be in [0, 1), got {}",
            options.val_fraction
        ));
    }
    if options.image_size < 32 {
        return invalid(format!(
            "--image-size must be at least 32, got {}",
            options.image_size
        ));
    }
    Ok(())
}

fn start_or_resume(
    options: &TrainOptions,
    checkpoint: &CheckpointDir,
    handle: &Handle,
    scan: &crate::dataset::LabelScan,
    total_steps: i64,
    device: Device,
) -> Result<Run> {
    // libtorch's generator is global to the process; ranks (or jobs) starting
    // in one process take turns, so a seed always gives the same weights.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = INIT.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(options.seed as i64);
    let config = OptimizerConfig {
        momentum: options.momentum,
        ..OptimizerConfig::new(options.optimizer, options.weight_decay)
    };
    let schedule = Schedule {
        kind: options.schedule,
        base_lr: options.lr,
        warmup_steps: options.warmup_steps,
        total_steps,
        step_every: options.step_every,
        gamma: options.gamma,
    };
    if let Some(manifest) = handle.block_on(checkpoint.manifest())? {
        let spec = manifest.model.clone();
        if spec.task != options.task || spec.arch != options.arch {
            return Err(WorkerError::InvalidOptions(format!(
                "{} holds a {} {} model; use another --checkpoint for a {} {} model",
                checkpoint.url(),
                spec.arch.name(),
                spec.task.name(),
                options.arch.name(),
                options.task.name()
            )));
        }
        let mut model = Model::new(spec, device)?;
        let weights = handle.block_on(checkpoint.read_tensors(&manifest.weights))?;
        model.load(&weights, None, &[])?;
        if options.channels_last {
            model.use_channels_last();
        }
        let mut optimizer = Optimizer::new(manifest.optimizer.unwrap_or(config), model.trainable());
        if let Some(name) = &manifest.optimizer_state {
            let state = handle.block_on(checkpoint.read_tensors(name))?;
            optimizer.restore(&state, manifest.step).map_err(|reason| {
                atelier_models::ModelError::Checkpoint {
                    url: checkpoint.url(),
                    reason,
                }
            })?;
        }
        optimizer.steps = manifest.step;
        let metrics = read_metrics(checkpoint, handle, manifest.step)?;
        tracing::info!(checkpoint = %checkpoint.url(), step = manifest.step, epoch = manifest.epoch, "resuming");
        let schedule = Schedule {
            total_steps,
            ..manifest.schedule.unwrap_or(schedule)
        };
        return Ok(Run {
            model,
            optimizer,
            schedule,
            manifest,
            metrics,
        });
    }

    let finetune = options
        .finetune
        .unwrap_or(options.backbone_weights.is_none());
    let spec = ModelSpec {
        arch: options.arch,
        task: options.task,
        labels: scan.labels.clone(),
        vocab: scan.vocab.clone(),
        finetune,
        max_caption_len: options.max_caption_len,
    };
    let mut model = Model::new(spec.clone(), device)?;
    if let Some(path) = &options.backbone_weights {
        let tensors = atelier_models::checkpoint::read_safetensors_file(path)?;
        let loaded = model.load(
            &tensors,
            Some(atelier_models::model::BACKBONE_PREFIX),
            &["fc.", "num_batches_tracked"],
        )?;
        tracing::info!(path = %path, tensors = loaded, "backbone weights loaded");
    }
    if options.channels_last {
        model.use_channels_last();
    }
    let optimizer = Optimizer::new(config, model.trainable());
    let normalization = Normalization::IMAGENET;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        atelier_version: env!("CARGO_PKG_VERSION").to_string(),
        model: spec,
        image_size: options.image_size,
        normalization: SavedNormalization {
            mean: normalization.mean,
            std: normalization.std,
        },
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        weights: String::new(),
        optimizer_state: None,
        optimizer: Some(config),
        schedule: Some(schedule),
        metrics: BTreeMap::new(),
        train: serde_json::to_value(options).unwrap_or_default(),
    };
    tracing::info!(checkpoint = %checkpoint.url(), device = %device_name(device), finetune, "starting a new run");
    Ok(Run {
        model,
        optimizer,
        schedule,
        manifest,
        metrics: Vec::new(),
    })
}

fn read_metrics(
    checkpoint: &CheckpointDir,
    handle: &Handle,
    up_to_step: i64,
) -> Result<Vec<MetricsLine>> {
    let Some(bytes) = handle.block_on(checkpoint.get(METRICS))? else {
        return Ok(Vec::new());
    };
    // Lines past the checkpoint's step were logged by a run that died before saving.
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricsLine>(l).ok())
        .filter(|m| m.step <= up_to_step)
        .collect())
}

fn save(run: &mut Run, checkpoint: &CheckpointDir, handle: &Handle) -> Result<()> {
    let lines: String = run
        .metrics
        .iter()
        .filter_map(|m| serde_json::to_string(m).ok())
        .map(|l| l + "\n")
        .collect();
    handle.block_on(checkpoint.put(METRICS, Bytes::from(lines)))?;
    let weights = run.model.state();
    let optimizer = run.optimizer.state();
    run.manifest.schedule = Some(run.schedule);
    handle.block_on(checkpoint.save(&mut run.manifest, &weights, Some(&optimizer)))?;
    Ok(())
}

/// The loader of one epoch: training items in a seeded row-group order with
/// augmentation, or validation items in catalogue order.
pub fn epoch_loader(
    options: &TrainOptions,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    validation: bool,
) -> Result<ImageLoader> {
    let fraction = options.val_fraction;
    let keep = ItemFilter::new(move |id| in_validation(id, fraction) == validation);
    loader_for(
        options,
        catalog,
        handle,
        epoch,
        validation,
        keep,
        options.shuffle_window,
    )
}

/// The epoch's training loader over only the items `keep` accepts (a
/// rank's share), in the epoch's group order without reshuffling, so that
/// batches follow the sampler's order exactly.
pub fn epoch_loader_with(
    options: &TrainOptions,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    keep: Option<ItemFilter>,
) -> Result<ImageLoader> {
    let fraction = options.val_fraction;
    let keep = keep.unwrap_or_else(|| ItemFilter::new(move |id| !in_validation(id, fraction)));
    loader_for(options, catalog, handle, epoch, false, keep, 0)
}

/// The order in which an epoch reads the catalogue's row groups: seeded and
/// shuffled per epoch, the same on every rank.
pub fn epoch_group_order(options: &TrainOptions, catalog: &Catalog, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..single_row_groups(catalog).len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        options.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

fn loader_for(
    options: &TrainOptions,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    validation: bool,
    keep: ItemFilter,
    shuffle_window: usize,
) -> Result<ImageLoader> {
    let groups = single_row_groups(catalog);
    let ranges: Vec<ReadRange> = if validation {
        groups
    } else {
        epoch_group_order(options, catalog, epoch)
            .into_iter()
            .map(|g| groups[g].clone())
            .collect()
    };
    let defaults = LoaderOptions::default();
    let loader_options = LoaderOptions {
        image_size: options.image_size,
        batch_size: options.batch_size,
        threads: options.threads.max(1),
        prefetch: options.threads.max(1) * 2,
        augment: if options.augment && !validation {
            train_augment(options)
        } else {
            Augment::CenterCrop
        },
        seed: options.seed.wrapping_add(epoch as u64),
        keep: Some(keep),
        shuffle_window: if validation { 0 } else { shuffle_window },
        // A GPU gets bytes and normalises them itself (see upload_batch).
        raw_bytes: crate::device::parse_device(&options.device).is_ok_and(|d| d.is_cuda()),
        ..defaults
    };
    Ok(ImageLoader::new(
        catalog,
        ranges,
        loader_options,
        handle.clone(),
    )?)
}

/// The smallest crop area of the pipeline's training transform.
pub const DEFAULT_CROP_SCALE: f32 = match Augment::TRAIN_DEFAULT {
    Augment::RandomResizedCrop { scale, .. } => scale.0,
    Augment::CenterCrop => 1.0,
};

fn default_crop_scale() -> f32 {
    DEFAULT_CROP_SCALE
}

fn train_augment(options: &TrainOptions) -> Augment {
    let affine = (options.affine_degrees > 0.0
        || options.affine_translate > 0.0
        || options.affine_scale > 0.0)
        .then_some(RandomAffine {
            degrees: options.affine_degrees,
            translate: options.affine_translate,
            scale: options.affine_scale,
        });
    match Augment::TRAIN_DEFAULT {
        Augment::RandomResizedCrop { ratio, flip, .. } => Augment::RandomResizedCrop {
            scale: (options.crop_scale.clamp(0.01, 1.0), 1.0),
            ratio,
            flip,
            affine,
        },
        other => other,
    }
}

/// The training loss of a batch (classification or captioning).
/// The loss summed over a logging window's items. A single process keeps
/// the sum on the device: reading a loss back every step would make the host
/// wait for the GPU each time instead of queueing the next step while the
/// device runs this one. A gang learns the sum from its all-reduce.
#[derive(Debug, Default)]
struct WindowLoss {
    sum: f64,
    items: f64,
    on_device: Option<tch::Tensor>,
}

impl WindowLoss {
    fn add(&mut self, loss_sum: f64, items: f64) {
        self.sum += loss_sum;
        self.items += items;
    }

    fn add_on_device(&mut self, mean: &tch::Tensor, items: usize) {
        let sum = mean.to_kind(Kind::Double) * items as f64;
        self.on_device = Some(match self.on_device.take() {
            Some(total) => total + sum,
            None => sum,
        });
        self.items += items as f64;
    }

    /// The mean loss per item so far; waits for the device.
    fn mean(&self) -> f64 {
        let on_device = self.on_device.as_ref().map_or(0.0, |t| t.double_value(&[]));
        (self.sum + on_device) / self.items.max(1.0)
    }
}

pub fn loss(model: &Model, inputs: &crate::targets::Inputs, train: bool) -> tch::Tensor {
    let features = model.features(&inputs.images, train);
    match (model.annotator(), &inputs.tokens) {
        (Some(annotator), Some(tokens)) => annotator.loss(&features, tokens),
        _ => model.training_loss(&model.logits(&features), &inputs.classes),
    }
}

/// Loss and accuracy on the validation split. Each rank validates its share
/// and the sums are added up over ranks, so every rank ends with the same
/// figures for the whole split.
fn validate_epoch(
    options: &TrainOptions,
    catalog: &Catalog,
    handle: &Handle,
    model: &Model,
    epoch: usize,
    device: Device,
    collective: &mut dyn Collective,
) -> Result<BTreeMap<String, f64>> {
    let mut metrics = BTreeMap::new();
    if options.val_fraction == 0.0 {
        return Ok(metrics);
    }
    let (rank, world) = (collective.rank(), collective.world_size());
    let fraction = options.val_fraction;
    let keep =
        ItemFilter::new(move |id| in_validation(id, fraction) && validates_on(id, rank, world));
    let loader = loader_for(options, catalog, handle, epoch, true, keep, 0)?;
    let heads: &[&str] = model.spec.task.attributes();
    // loss sum, items, then (correct, labelled) per head.
    let mut sums = vec![0.0f64; 2 + 2 * heads.len()];
    {
        let _guard = tch::no_grad_guard();
        for batch in loader {
            let batch = batch?;
            let inputs = inputs(&model.spec, &batch, device);
            if inputs.count == 0 {
                continue;
            }
            let features = model.features(&inputs.images, false);
            let loss = match (model.annotator(), &inputs.tokens) {
                (Some(annotator), Some(tokens)) => annotator.loss(&features, tokens),
                _ => {
                    let logits = model.logits(&features);
                    let (loss, accuracy) = model.classification_loss(&logits, &inputs.classes);
                    for ((name, _), (c, n)) in logits.iter().zip(accuracy) {
                        if let Some(h) = heads.iter().position(|h| h == name) {
                            sums[2 + 2 * h] += c as f64;
                            sums[3 + 2 * h] += n as f64;
                        }
                    }
                    loss
                }
            };
            sums[0] += loss.to_kind(Kind::Double).double_value(&[]) * inputs.count as f64;
            sums[1] += inputs.count as f64;
        }
    }
    if world > 1 {
        let mut totals = tch::Tensor::from_slice(&sums).to_device(device);
        collective.all_reduce_sum(&mut totals)?;
        sums = Vec::<f64>::try_from(totals.to_device(Device::Cpu))
            .map_err(|e| WorkerError::Data(format!("reading validation totals: {e}")))?;
    }
    let count = sums[1];
    metrics.insert("loss".into(), sums[0] / count.max(1.0));
    let mut accuracies = Vec::new();
    for (h, name) in heads.iter().enumerate() {
        let (correct, labelled) = (sums[2 + 2 * h], sums[3 + 2 * h]);
        if labelled == 0.0 && model.annotator().is_some() {
            continue;
        }
        let accuracy = correct / labelled.max(1.0);
        accuracies.push(accuracy);
        metrics.insert(format!("accuracy_{name}"), accuracy);
    }
    if !accuracies.is_empty() {
        metrics.insert(
            "accuracy".into(),
            accuracies.iter().sum::<f64>() / accuracies.len() as f64,
        );
    }
    metrics.insert("items".into(), count);
    Ok(metrics)
}
