//! The training loop: one process, CPU or one GPU, or one rank of a gang.
//! Resumes from its checkpoint.

mod loaders;
mod metrics_log;
mod resume;
mod validation;

use std::collections::BTreeMap;
use std::time::Instant;

use atelier_catalog::Catalog;
use atelier_collective::{
    broadcast_tensors, Backend, Collective, GradientBuckets, SingleRank, DEFAULT_BUCKET_BYTES,
};
use atelier_models::Bf16Autocast;
use atelier_models::Model;
use atelier_models::{CheckpointDir, Manifest};
use atelier_models::{Optimizer, Schedule};
use atelier_pipeline::ItemFilter;
use atelier_proto::{CatalogColumns, TrainOptions};
use tch::Kind;
use tokio::runtime::Handle;

use crate::dataset::scan_labels;
use crate::error::{Result, WorkerError};
use crate::sampler::{rank_share, TrainingIds};
use crate::targets::inputs;
use metrics_log::WindowLoss;
use resume::{save, start_or_resume};
use validation::validate_epoch;

pub use loaders::{epoch_group_order, epoch_loader, epoch_loader_with};
pub use metrics_log::MetricsLine;
pub use validation::loss;

/// One training run: what to train ([`TrainOptions`], the same for every
/// rank) and where this process runs it.
#[derive(Debug, Clone)]
pub struct TrainSetup {
    /// The catalogue to learn from (path or object-store URL).
    pub catalog: String,
    /// The catalogue's column names.
    pub columns: CatalogColumns,
    /// Where checkpoints go; a run there already is resumed.
    pub checkpoint: String,
    /// cpu or cuda:N.
    pub device: String,
    /// Decode threads.
    pub threads: usize,
    pub options: TrainOptions,
}

/// Who makes a step that rank 0 saved the checkpoint.
pub enum CheckpointCommit<'a> {
    /// This process, which trains alone (`atelier train`, `local`).
    Here,
    /// The coordinator, for a rank of a gang: it commits only while the
    /// rank holds its lease, so a rank that lost it (cut off, paused,
    /// revoked, its job cancelled) cannot change the checkpoint, nor delete
    /// files a new gang reads. `writer` names this attempt's files apart.
    Fenced {
        writer: String,
        commit: &'a (dyn Fn(bytes::Bytes) -> Result<()> + Sync),
    },
}

impl CheckpointCommit<'_> {
    fn writer(&self) -> &str {
        match self {
            CheckpointCommit::Here => "local",
            CheckpointCommit::Fenced { writer, .. } => writer,
        }
    }
}

impl std::fmt::Debug for CheckpointCommit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointCommit::Here => f.write_str("Here"),
            CheckpointCommit::Fenced { writer, .. } => write!(f, "Fenced({writer})"),
        }
    }
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

struct Run {
    model: Model,
    optimizer: Optimizer,
    schedule: Schedule,
    manifest: Manifest,
    metrics: Vec<MetricsLine>,
}

pub fn train(
    setup: &TrainSetup,
    handle: &Handle,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    train_until(setup, handle, &|| false, on_event)
}

/// `train`, stopping with `WorkerError::Cancelled` after a checkpoint once
/// `stop` says so; run again, it resumes from there.
pub fn train_until(
    setup: &TrainSetup,
    handle: &Handle,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    train_ranked(
        setup,
        handle,
        &mut SingleRank,
        &CheckpointCommit::Here,
        stop,
        on_event,
    )
}

/// One rank of a data-parallel run (or the only one, with [`SingleRank`]).
/// Every rank calls this with the same options; gradients are averaged over
/// the global batch through `collective`, and only rank 0 writes checkpoints,
/// which `commit` makes the checkpoint.
pub fn train_ranked(
    setup: &TrainSetup,
    handle: &Handle,
    collective: &mut dyn Collective,
    commit: &CheckpointCommit<'_>,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    let options = &setup.options;
    options.check().map_err(WorkerError::InvalidOptions)?;
    let (rank, world) = (collective.rank(), collective.world_size());
    let distributed = world > 1;
    let device = crate::device::parse_device(&setup.device)?;
    // A CPU rank of a mixed gang decodes on its cores; a GPU rank that was
    // asked to decode and cannot says why before the gang trains.
    if device.is_cuda() {
        crate::device::check_gpu_decode(options.gpu_decode, device)?;
    }
    let autocast = Bf16Autocast::new(options.bf16, device)?;
    let catalog = handle.block_on(Catalog::open_mapped(&setup.catalog, &setup.columns))?;
    let checkpoint = CheckpointDir::parse(&setup.checkpoint)?;
    let scan = handle.block_on(scan_labels(
        &catalog,
        options.task,
        &options.targets,
        options.val_fraction,
        options.min_label_count,
        options.min_word_count,
    ))?;
    if scan.train_items == 0 {
        return Err(WorkerError::BadInput(format!(
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
        return Err(WorkerError::BadInput(format!(
            "{}: {} training items do not fill one global batch of {world} x {}",
            catalog.location, scan.train_items, options.batch_size
        )));
    }
    let mut run = start_or_resume(
        options,
        &setup.columns,
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
    let mut buckets = GradientBuckets::new(
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
                    epoch_loader_with(setup, &catalog, handle, epoch, Some(keep))?,
                    Some(share.steps),
                )
            }
            None => (epoch_loader(setup, &catalog, handle, epoch, false)?, None),
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
                    save(&mut run, &checkpoint, handle, commit)?;
                }
                return Err(WorkerError::Cancelled);
            }
            let inputs = batch.map(|mut b| inputs(&run.model.spec, &mut b, device));
            let count = inputs.as_ref().map_or(0, |i| i.count);
            if count == 0 && !distributed {
                continue;
            }
            let lr = run.schedule.lr(run.optimizer.steps);
            run.optimizer.zero_grad();
            let step_loss = match &inputs {
                Some(inputs) if inputs.count > 0 => {
                    Some(autocast.run(|| loss(&run.model, inputs, true, options.label_smoothing)))
                }
                _ => None,
            };
            let backward = || {
                if let Some(step_loss) = &step_loss {
                    step_loss.backward();
                }
                if distributed {
                    define_missing_grads(&trainable);
                }
            };
            // A world of one forced onto NCCL (the GPU check) all-reduces too.
            if collective.backend() != Backend::Single {
                // The loss rides along with the gradients.
                let synced =
                    buckets.backward_and_sync(collective, count, step_loss.as_ref(), backward)?;
                allreduce_seconds += synced.seconds;
                allreduce_bytes += synced.bytes;
                window_loss.add(synced.loss_sum, synced.items);
            } else {
                backward();
                if let Some(step_loss) = &step_loss {
                    window_loss.add_on_device(&step_loss.detach(), count);
                }
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
                return Err(WorkerError::BadInput(format!(
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
                save(&mut run, &checkpoint, handle, commit)?;
            }
            if at_limit {
                return Ok(summary(&run, &checkpoint, images_seen, started));
            }
        }
        let metrics = autocast
            .run(|| validate_epoch(setup, &catalog, handle, &run.model, epoch, collective, stop))?;
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
            save(&mut run, &checkpoint, handle, commit)?;
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
