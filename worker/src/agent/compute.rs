//! The agent's compute thread: one OS thread that runs tasks one at a time
//! and keeps the loaded models between shards of the same job.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use atelier_catalog::{Catalog, ReadRange, StoreLocation};
use atelier_proto::InferenceOptions;
use atelier_proto::{EvalJobSpec, ShardWork, TaskOutcome, TaskProgressReport, TaskWork};
use tch::Device;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::error::{Result, WorkerError};
use crate::evaluate::{evaluate, EvaluateOptions, Layout};
use crate::tag::{Taggers, Tagging};

use super::gang::{CommitCheckpoint, Rendezvous};
use super::train_task::{run_train, RankPlan};
use super::watchdog::Pulse;

/// One task for the compute thread.
pub struct Work {
    pub task: TaskWork,
    pub cancelled: Arc<AtomicBool>,
    /// Beaten at every check of `cancelled`, which the task makes between
    /// batches and steps; the lane's watchdog reads it.
    pub pulse: Arc<Pulse>,
    pub progress: watch::Sender<TaskProgressReport>,
    pub done: oneshot::Sender<Result<TaskOutcome>>,
    /// How a train rank meets the rest of its gang.
    pub rendezvous: Box<Rendezvous>,
    /// How a train rank 0 commits a checkpoint step, and the name its
    /// files carry (its job and attempt).
    pub commit_checkpoint: Box<CommitCheckpoint>,
    pub writer: String,
    /// The task's span, entered on the compute thread too.
    pub span: tracing::Span,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct ComputeThread {
    work: mpsc::Sender<Work>,
}

struct Loaded {
    checkpoints: Vec<String>,
    layout: Layout,
    taggers: Taggers,
}

struct Context {
    device: Device,
    device_name: String,
    threads: usize,
    handle: Handle,
    loaded: Option<Loaded>,
    advertise_host: String,
}

impl ComputeThread {
    /// Starts the thread; it ends when this handle is dropped.
    pub fn start(
        device: Device,
        device_name: String,
        threads: usize,
        handle: Handle,
        advertise_host: String,
    ) -> std::io::Result<Self> {
        let (work, inbox) = mpsc::channel::<Work>();
        let mut context = Context {
            device,
            device_name,
            threads,
            handle,
            loaded: None,
            advertise_host,
        };
        std::thread::Builder::new()
            .name("atelier-compute".into())
            .spawn(move || {
                for work in inbox {
                    let _entered = work.span.clone().entered();
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| context.run(&work)))
                        .unwrap_or_else(|panic| {
                            let what = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                                .unwrap_or_default();
                            // The models may be half-moved; load them afresh next time.
                            context.loaded = None;
                            Err(WorkerError::Panicked(what))
                        });
                    let _ = work.done.send(result);
                }
            })?;
        Ok(Self { work })
    }

    pub fn submit(&self, work: Work) -> Result<()> {
        self.work
            .send(work)
            .map_err(|_| WorkerError::Internal("the compute thread has stopped".into()))
    }
}

impl Context {
    fn run(&mut self, work: &Work) -> Result<TaskOutcome> {
        let progress = &work.progress;
        // Each check whether to stop is also a sign of life.
        let stop = || {
            work.pulse.beat();
            work.cancelled.load(Ordering::Relaxed)
        };
        match &work.task {
            TaskWork::Tag(shard) => self.tag(shard, &stop, progress),
            TaskWork::Eval(spec) => self.eval(spec, &stop),
            TaskWork::Train { spec, rank } => run_train(
                spec,
                &RankPlan {
                    rank: *rank,
                    rendezvous: &*work.rendezvous,
                    commit_checkpoint: &*work.commit_checkpoint,
                    writer: &work.writer,
                    advertise_host: &self.advertise_host,
                },
                &self.device_name,
                self.threads,
                &self.handle,
                &stop,
                progress,
            ),
        }
    }

    fn taggers(&mut self, shard: &ShardWork) -> Result<&Taggers> {
        let layout = Layout::from(&shard.inference);
        let reuse = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.checkpoints == shard.checkpoints && l.layout == layout);
        if !reuse {
            self.loaded = None;
            let mut effective = layout;
            if layout.gpu_decode && self.device.is_cuda() {
                // The job asked for it, but this lane's GPU cannot: decode on
                // the cores as usual rather than fail every shard here.
                if let Err(error) = crate::device::check_gpu_decode(true, self.device) {
                    tracing::warn!(%error, "gpu decoding unavailable; decoding on the cpu");
                    effective.gpu_decode = false;
                }
            }
            let taggers = Taggers::load(&shard.checkpoints, &self.handle, self.device, effective)?;
            tracing::info!(version = taggers.version(), "models loaded");
            self.loaded = Some(Loaded {
                checkpoints: shard.checkpoints.clone(),
                layout,
                taggers,
            });
        }
        self.loaded
            .as_ref()
            .map(|l| &l.taggers)
            .ok_or_else(|| WorkerError::Internal("models not loaded".into()))
    }

    fn tag(
        &mut self,
        shard: &ShardWork,
        stop: &dyn Fn() -> bool,
        progress: &watch::Sender<TaskProgressReport>,
    ) -> Result<TaskOutcome> {
        let [range] = shard.ranges.as_slice() else {
            return Err(WorkerError::InvalidOptions(format!(
                "a shard must cover one file, this one covers {}",
                shard.ranges.len()
            )));
        };
        let handle = self.handle.clone();
        let tagging = Tagging {
            device: self.device,
            beams: shard.inference.beams,
            batch_size: shard.inference.batch_size,
            threads: self.threads,
            fetch: shard.inference.fetch,
            embeddings: shard.inference.embeddings,
        };
        let target = StoreLocation::parse(&shard.output)?;
        let catalog = match range.rows {
            Some(_) => handle.block_on(Catalog::open_indexed(&range.file, &shard.columns))?,
            None => handle.block_on(Catalog::open_mapped(&range.file, &shard.columns))?,
        };
        let ranges = vec![ReadRange {
            file: 0,
            row_groups: range.row_groups.iter().map(|&g| g as usize).collect(),
            rows: range
                .rows
                .as_ref()
                .map(|rows| rows.start as usize..rows.end as usize),
        }];
        let taggers = self.taggers(shard)?;
        let version = taggers.version().to_string();
        let written = taggers.write(
            &tagging,
            &catalog,
            ranges,
            &target,
            &handle,
            stop,
            &mut |w| {
                progress.send_replace(TaskProgressReport {
                    items_done: w.rows as u64,
                    items_failed: w.errors as u64,
                    stages: w.stages,
                    ..Default::default()
                });
            },
        )?;
        if written.rows as u64 != shard.rows {
            return Err(WorkerError::Internal(format!(
                "shard of {} rows wrote {} rows to {}",
                shard.rows, written.rows, shard.output
            )));
        }
        Ok(TaskOutcome {
            rows_written: written.rows as u64,
            items_failed: written.errors as u64,
            output: shard.output.clone(),
            stages: written.stages,
            metrics: Default::default(),
            model_version: version,
        })
    }

    fn eval(&mut self, spec: &EvalJobSpec, stop: &dyn Fn() -> bool) -> Result<TaskOutcome> {
        let report = evaluate(
            &EvaluateOptions {
                checkpoint: spec.checkpoint.clone(),
                catalog: spec.catalog.clone(),
                columns: spec.columns.clone(),
                validation_only: !spec.all_items,
                threads: self.threads,
                device: self.device_name.clone(),
                inference: InferenceOptions {
                    beams: spec.beams as usize,
                    ..InferenceOptions::DEFAULT
                },
            },
            &self.handle,
            stop,
        )?;
        let mut metrics: std::collections::BTreeMap<String, f64> = report
            .attributes
            .iter()
            .map(|(attribute, r)| (format!("accuracy_{attribute}"), r.accuracy))
            .collect();
        if let Some(caption) = &report.caption {
            metrics.insert("bleu4".into(), caption.bleu[3]);
            metrics.insert("exact_match".into(), caption.exact_match);
        }
        metrics.insert("items".into(), report.items as f64);
        metrics.insert("image_errors".into(), report.image_errors as f64);
        Ok(TaskOutcome {
            rows_written: report.items as u64,
            items_failed: report.image_errors as u64,
            output: report.report_url.clone(),
            metrics,
            ..Default::default()
        })
    }
}
