//! A single-rank train job, as the coordinator hands it out.

use atelier_proto::{RankStatus, TaskOutcome, TaskProgressReport, TrainJobSpec, TrainProgress};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::gang::{join_gang, CommitCheckpoint, Rendezvous};
use crate::error::Result;
use crate::train::{train_ranked, CheckpointCommit, TrainEvent, TrainSetup};

/// How this worker runs a train job's rank: the job's options as they
/// are, on this lane's device and decode threads.
pub fn train_setup(spec: &TrainJobSpec, device: &str, threads: usize) -> TrainSetup {
    TrainSetup {
        catalog: spec.catalog.clone(),
        columns: spec.columns.clone(),
        checkpoint: spec.checkpoint.clone(),
        device: device.to_string(),
        threads,
        options: spec.options.clone(),
    }
}

/// Where a rank stands: its place in the gang and how to meet the others.
pub struct RankPlan<'a> {
    pub rank: u32,
    pub rendezvous: &'a Rendezvous,
    /// How rank 0 has the coordinator commit its checkpoint steps.
    pub commit_checkpoint: &'a CommitCheckpoint,
    /// The name this attempt's checkpoint files carry.
    pub writer: &'a str,
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
    stop: &dyn Fn() -> bool,
    progress: &watch::Sender<TaskProgressReport>,
) -> Result<TaskOutcome> {
    let setup = train_setup(spec, device, threads);
    let timeout = Duration::from_secs(u64::from(spec.gang.collective_timeout_s));
    let mut collective = join_gang(
        plan.rank as usize,
        spec.gang.world_size as usize,
        device,
        plan.advertise_host,
        plan.rendezvous,
        timeout,
        stop,
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
    let commit = CheckpointCommit::Fenced {
        writer: plan.writer.to_string(),
        commit: plan.commit_checkpoint,
    };
    let summary = train_ranked(
        &setup,
        handle,
        collective.as_mut(),
        &commit,
        stop,
        &mut |event| {
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
                    images = (*step as u64) * setup.options.batch_size as u64;
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
        },
    )?;
    Ok(TaskOutcome {
        rows_written: summary.steps as u64,
        output: summary.checkpoint,
        metrics: summary.metrics,
        ..Default::default()
    })
}
