//! A single-rank train job, as the coordinator hands it out.

use std::sync::atomic::{AtomicBool, Ordering};

use atelier_models::optim::{OptimizerKind, ScheduleKind};
use atelier_models::{Arch, Task};
use atelier_proto::domain::{
    RankStatus, TaskOutcome, TaskProgressReport, TrainJobSpec, TrainProgress,
};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::gang::{join_gang, Rendezvous};
use crate::error::{Result, WorkerError};
use crate::train::{train_ranked, TrainEvent, TrainOptions, DEFAULT_CROP_SCALE};

fn pick<T: Copy>(field: &str, value: &str, default: T, choices: &[(&str, T)]) -> Result<T> {
    if value.is_empty() {
        return Ok(default);
    }
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            WorkerError::InvalidOptions(format!(
                "{field} {value:?}: use one of {}",
                names.join(", ")
            ))
        })
}

fn or<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

/// The spec's fields over `atelier train`'s defaults (zero or empty: default).
pub fn train_options(spec: &TrainJobSpec, device: &str, threads: usize) -> Result<TrainOptions> {
    let task = pick(
        "model_type",
        &spec.model_type,
        Task::Pool,
        &[
            ("color", Task::Color),
            ("brand", Task::Brand),
            ("category", Task::Category),
            ("pool", Task::Pool),
            ("caption", Task::Caption),
        ],
    )?;
    let arch = pick(
        "arch",
        &spec.arch,
        Arch::Resnet50,
        &[
            ("resnet18", Arch::Resnet18),
            ("resnet34", Arch::Resnet34),
            ("resnet50", Arch::Resnet50),
        ],
    )?;
    let optimizer = pick(
        "optimizer",
        &spec.optimizer,
        OptimizerKind::Sgd,
        &[
            ("sgd", OptimizerKind::Sgd),
            ("adam", OptimizerKind::Adam),
            ("adamw", OptimizerKind::Adamw),
        ],
    )?;
    let schedule = pick(
        "schedule",
        &spec.schedule,
        ScheduleKind::Cosine,
        &[
            ("constant", ScheduleKind::Constant),
            ("cosine", ScheduleKind::Cosine),
            ("step", ScheduleKind::Step),
            ("onecycle", ScheduleKind::Onecycle),
        ],
    )?;
    Ok(TrainOptions {
        catalog: spec.catalog.clone(),
        checkpoint: spec.checkpoint.clone(),
        task,
        arch,
        lr: or(spec.lr, 0.1),
        epochs: or(spec.n_epochs, 10) as usize,
        batch_size: or(spec.batch_size, 32) as usize,
        image_size: or(spec.image_size, 224) as usize,
        finetune: spec.finetune,
        backbone_weights: (!spec.backbone_weights.is_empty())
            .then(|| spec.backbone_weights.clone()),
        optimizer,
        weight_decay: or(spec.weight_decay, 1e-4),
        momentum: or(spec.momentum, 0.9),
        schedule,
        warmup_steps: spec.warmup_steps,
        step_every: or(spec.step_every, 1000),
        gamma: or(spec.gamma, 0.1),
        augment: spec.augment,
        affine_degrees: spec.affine_degrees,
        affine_translate: spec.affine_translate,
        affine_scale: spec.affine_scale,
        crop_scale: or(spec.crop_scale, DEFAULT_CROP_SCALE),
        val_fraction: or(spec.val_fraction, 0.1),
        seed: spec.seed,
        device: device.to_string(),
        threads,
        min_label_count: or(spec.min_label_count, 1) as usize,
        min_word_count: or(spec.min_word_count, 2) as usize,
        max_caption_len: or(spec.max_caption_len, 16) as usize,
        checkpoint_every: spec.checkpoint_every as usize,
        log_every: or(spec.log_every, 10) as usize,
        channels_last: spec.channels_last,
        shuffle_window: spec.shuffle_window.map_or(4096, |w| w as usize),
        bf16: spec.bf16,
        max_steps: (spec.max_steps > 0).then_some(spec.max_steps),
        gpu_decode: spec.gpu_decode,
    })
}

/// Where a rank stands: its place in the gang and how to meet the others.
pub struct RankPlan<'a> {
    pub rank: u32,
    pub world_size: u32,
    pub rendezvous: &'a Rendezvous,
    /// The host other ranks reach this one's ring listener at.
    pub advertise_host: &'a str,
}

#[allow(clippy::too_many_arguments)]
pub fn run_train(
    spec: &TrainJobSpec,
    plan: &RankPlan<'_>,
    device: &str,
    threads: usize,
    handle: &Handle,
    cancelled: &AtomicBool,
    progress: &watch::Sender<TaskProgressReport>,
) -> Result<TaskOutcome> {
    let options = train_options(spec, device, threads)?;
    let stop = || cancelled.load(Ordering::Relaxed);
    let timeout = match spec.collective_timeout_s {
        0 => Duration::from_secs(60),
        s => Duration::from_secs(u64::from(s)),
    };
    let mut collective = join_gang(
        plan.rank as usize,
        plan.world_size.max(1) as usize,
        device,
        plan.advertise_host,
        plan.rendezvous,
        timeout,
        &stop,
    )?;
    let mut current = TrainProgress {
        ranks: vec![RankStatus {
            rank: plan.rank,
            device: device.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut images = 0u64;
    let summary = train_ranked(&options, handle, collective.as_mut(), &stop, &mut |event| {
        match event {
            TrainEvent::Started { total_steps, .. } => current.total_steps = *total_steps,
            TrainEvent::Step {
                epoch,
                step,
                loss,
                images_per_s,
                allreduce_seconds,
                allreduce_bytes,
                ..
            } => {
                current.epoch = *epoch as u32;
                current.step = *step;
                current.loss = *loss;
                images = (*step as u64) * options.batch_size as u64;
                if let Some(own) = current.ranks.first_mut() {
                    own.images_per_second = *images_per_s;
                    own.allreduce_seconds = *allreduce_seconds;
                    own.allreduce_bytes = *allreduce_bytes;
                }
            }
            TrainEvent::Epoch { epoch, metrics } => {
                current.epoch = *epoch as u32;
                current.validation = metrics.clone();
            }
        }
        progress.send_replace(TaskProgressReport {
            items_done: images,
            train: Some(current.clone()),
            ..Default::default()
        });
    })?;
    Ok(TaskOutcome {
        rows_written: summary.steps as u64,
        output: summary.checkpoint,
        metrics: summary.metrics,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_take_the_cli_defaults_and_bad_names_are_named() {
        let spec = TrainJobSpec {
            catalog: "c".into(),
            checkpoint: "k".into(),
            model_type: "color".into(),
            arch: "resnet18".into(),
            ..Default::default()
        };
        let options = train_options(&spec, "cpu", 2).unwrap();
        assert_eq!((options.task, options.arch), (Task::Color, Arch::Resnet18));
        assert_eq!(
            (options.epochs, options.image_size, options.lr),
            (10, 224, 0.1)
        );
        let bad = TrainJobSpec {
            optimizer: "lion".into(),
            ..spec
        };
        let error = train_options(&bad, "cpu", 2).unwrap_err().to_string();
        assert!(error.contains("lion") && error.contains("adamw"), "{error}");
    }
}
