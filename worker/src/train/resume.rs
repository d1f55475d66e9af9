//! A run's start: fresh weights, or the checkpoint's weights, optimizer state
//! and position; and saving them back.

use std::collections::BTreeMap;

use atelier_models::{CheckpointDir, Manifest, SavedNormalization, FORMAT_VERSION};
use atelier_models::{Model, ModelSpec};
use atelier_models::{Optimizer, OptimizerConfig, Schedule};
use atelier_pipeline::Normalization;
use bytes::Bytes;
use tch::Device;
use tokio::runtime::Handle;

use crate::device::device_name;
use crate::error::{Result, WorkerError};

use atelier_proto::{CatalogColumns, TrainOptions};

use super::{CheckpointCommit, MetricsLine, Run};

pub(super) fn start_or_resume(
    options: &TrainOptions,
    columns: &CatalogColumns,
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
        if manifest.framing != options.framing {
            return Err(WorkerError::InvalidOptions(format!(
                "{} was trained with --framing {}; resume it with the same, or use another --checkpoint",
                checkpoint.url(),
                manifest.framing,
            )));
        }
        if !options.targets.is_empty()
            && spec.attributes()
                != options
                    .targets
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
        {
            return Err(WorkerError::InvalidOptions(format!(
                "{} predicts {}; resume it with those --targets, or use another --checkpoint",
                checkpoint.url(),
                spec.attributes().join(","),
            )));
        }
        if spec.task != options.task || spec.arch != options.arch {
            return Err(WorkerError::InvalidOptions(format!(
                "{} holds a {} {} model; use another --checkpoint for a {} {} model",
                checkpoint.url(),
                spec.arch,
                spec.task,
                options.arch,
                options.task
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
        let metrics = read_metrics(checkpoint, handle, &manifest)?;
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
        targets: scan.attributes.clone(),
        vocab: scan.vocab.clone(),
        finetune,
        max_caption_len: options.max_caption_len,
    };
    let mut model = Model::new(spec.clone(), device)?;
    if let Some(path) = &options.backbone_weights {
        let tensors = atelier_models::read_safetensors_file(path)?;
        let loaded = model.load(
            &tensors,
            Some(atelier_models::BACKBONE_PREFIX),
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
        framing: options.framing,
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
        columns: columns.clone(),
        metrics_log: None,
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
    manifest: &Manifest,
) -> Result<Vec<MetricsLine>> {
    let Some(bytes) = handle.block_on(checkpoint.get(manifest.metrics_file()))? else {
        return Ok(Vec::new());
    };
    // Lines past the checkpoint's step were logged by a run that died before saving.
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricsLine>(l).ok())
        .filter(|m| m.step <= manifest.step)
        .collect())
}

/// Stages this step's files and has `commit` make them the checkpoint.
pub(super) fn save(
    run: &mut Run,
    checkpoint: &CheckpointDir,
    handle: &Handle,
    commit: &CheckpointCommit<'_>,
) -> Result<()> {
    let lines: String = run
        .metrics
        .iter()
        .filter_map(|m| serde_json::to_string(m).ok())
        .map(|l| l + "\n")
        .collect();
    let weights = run.model.state();
    let optimizer = run.optimizer.state();
    run.manifest.schedule = Some(run.schedule);
    let manifest = handle.block_on(checkpoint.stage(
        &mut run.manifest,
        &weights,
        Some(&optimizer),
        Bytes::from(lines),
        commit.writer(),
    ))?;
    match commit {
        CheckpointCommit::Here => handle.block_on(checkpoint.commit(manifest))?,
        CheckpointCommit::Fenced { commit, .. } => commit(manifest)?,
    }
    Ok(())
}
