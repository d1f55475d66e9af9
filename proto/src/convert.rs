//! The one place where wire messages become domain values and back.

use crate::domain::*;
use crate::error::{ProtoError, Result};
use crate::v1;

fn required<T>(value: Option<T>, field: &'static str) -> Result<T> {
    value.ok_or(ProtoError::Missing(field))
}

fn non_empty(value: String, field: &'static str) -> Result<String> {
    if value.trim().is_empty() {
        Err(ProtoError::Missing(field))
    } else {
        Ok(value)
    }
}

impl From<JobState> for v1::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Pending => Self::Pending,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

impl TryFrom<v1::JobState> for JobState {
    type Error = ProtoError;
    fn try_from(state: v1::JobState) -> Result<Self> {
        Ok(match state {
            v1::JobState::Pending => Self::Pending,
            v1::JobState::Running => Self::Running,
            v1::JobState::Succeeded => Self::Succeeded,
            v1::JobState::Failed => Self::Failed,
            v1::JobState::Cancelled => Self::Cancelled,
            v1::JobState::Unspecified => {
                return Err(ProtoError::Invalid {
                    field: "state",
                    reason: "unspecified".into(),
                })
            }
        })
    }
}

/// A job state from its wire number.
pub fn job_state(value: i32) -> Result<JobState> {
    v1::JobState::try_from(value)
        .map_err(|_| ProtoError::Invalid {
            field: "state",
            reason: format!("unknown value {value}"),
        })?
        .try_into()
}

impl From<JobKind> for v1::JobKind {
    fn from(kind: JobKind) -> Self {
        match kind {
            JobKind::Tag => Self::Tag,
            JobKind::Train => Self::Train,
            JobKind::Eval => Self::Eval,
        }
    }
}

fn job_kind(value: i32) -> Result<JobKind> {
    match v1::JobKind::try_from(value) {
        Ok(v1::JobKind::Tag) => Ok(JobKind::Tag),
        Ok(v1::JobKind::Train) => Ok(JobKind::Train),
        Ok(v1::JobKind::Eval) => Ok(JobKind::Eval),
        _ => Err(ProtoError::Invalid {
            field: "kind",
            reason: format!("unknown value {value}"),
        }),
    }
}

impl From<StageTimes> for v1::StageTimes {
    fn from(s: StageTimes) -> Self {
        Self {
            read: s.read,
            fetch: s.fetch,
            decode: s.decode,
            transform: s.transform,
            forward: s.forward,
            write: s.write,
            upload: s.upload,
        }
    }
}

impl From<v1::StageTimes> for StageTimes {
    fn from(s: v1::StageTimes) -> Self {
        Self {
            read: s.read,
            fetch: s.fetch,
            decode: s.decode,
            transform: s.transform,
            forward: s.forward,
            write: s.write,
            upload: s.upload,
        }
    }
}

impl TryFrom<v1::SubmitTagJobRequest> for TagJobSpec {
    type Error = ProtoError;
    fn try_from(r: v1::SubmitTagJobRequest) -> Result<Self> {
        if r.checkpoints.is_empty() {
            return Err(ProtoError::Missing("checkpoints"));
        }
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            checkpoints: r.checkpoints,
            output: non_empty(r.output, "output")?,
            target_shard_rows: r.target_shard_rows,
            max_attempts: r.max_attempts,
            inference: InferenceSettings {
                batch_size: r.batch_size,
                beams: r.beams,
                bf16: r.bf16,
                channels_last: r.channels_last,
                gpu_decode: r.gpu_decode,
            },
            overwrite: r.overwrite,
        })
    }
}

impl From<TagJobSpec> for v1::SubmitTagJobRequest {
    fn from(s: TagJobSpec) -> Self {
        Self {
            catalog: s.catalog,
            checkpoints: s.checkpoints,
            output: s.output,
            target_shard_rows: s.target_shard_rows,
            max_attempts: s.max_attempts,
            batch_size: s.inference.batch_size,
            beams: s.inference.beams,
            bf16: s.inference.bf16,
            channels_last: s.inference.channels_last,
            overwrite: s.overwrite,
            gpu_decode: s.inference.gpu_decode,
        }
    }
}

impl TryFrom<v1::SubmitEvalJobRequest> for EvalJobSpec {
    type Error = ProtoError;
    fn try_from(r: v1::SubmitEvalJobRequest) -> Result<Self> {
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            checkpoint: non_empty(r.checkpoint, "checkpoint")?,
            all_items: r.all_items,
            beams: r.beams,
        })
    }
}

impl From<EvalJobSpec> for v1::SubmitEvalJobRequest {
    fn from(s: EvalJobSpec) -> Self {
        Self {
            catalog: s.catalog,
            checkpoint: s.checkpoint,
            all_items: s.all_items,
            beams: s.beams,
        }
    }
}

impl TryFrom<v1::SubmitTrainJobRequest> for TrainJobSpec {
    type Error = ProtoError;
    fn try_from(r: v1::SubmitTrainJobRequest) -> Result<Self> {
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            checkpoint: non_empty(r.checkpoint, "checkpoint")?,
            model_type: non_empty(r.model_type, "model_type")?,
            arch: r.arch,
            lr: r.lr,
            n_epochs: r.n_epochs,
            batch_size: r.batch_size,
            image_size: r.image_size,
            finetune: r.finetune,
            backbone_weights: r.backbone_weights,
            optimizer: r.optimizer,
            weight_decay: r.weight_decay,
            momentum: r.momentum,
            schedule: r.schedule,
            warmup_steps: r.warmup_steps,
            augment: r.augment,
            val_fraction: r.val_fraction,
            seed: r.seed,
            world_size: r.world_size,
            ranks_per_worker: r.ranks_per_worker,
            max_restarts: r.max_restarts,
            checkpoint_every: r.checkpoint_every,
            step_every: r.step_every,
            gamma: r.gamma,
            affine_degrees: r.affine_degrees,
            affine_translate: r.affine_translate,
            affine_scale: r.affine_scale,
            crop_scale: r.crop_scale,
            min_label_count: r.min_label_count,
            min_word_count: r.min_word_count,
            max_caption_len: r.max_caption_len,
            log_every: r.log_every,
            channels_last: r.channels_last,
            shuffle_window: r.shuffle_window,
            bf16: r.bf16,
            max_steps: r.max_steps,
            gpu_decode: r.gpu_decode,
            gang_timeout_s: r.gang_timeout_s,
            collective_timeout_s: r.collective_timeout_s,
        })
    }
}

impl From<TrainJobSpec> for v1::SubmitTrainJobRequest {
    fn from(s: TrainJobSpec) -> Self {
        Self {
            catalog: s.catalog,
            checkpoint: s.checkpoint,
            model_type: s.model_type,
            arch: s.arch,
            lr: s.lr,
            n_epochs: s.n_epochs,
            batch_size: s.batch_size,
            image_size: s.image_size,
            finetune: s.finetune,
            backbone_weights: s.backbone_weights,
            optimizer: s.optimizer,
            weight_decay: s.weight_decay,
            momentum: s.momentum,
            schedule: s.schedule,
            warmup_steps: s.warmup_steps,
            augment: s.augment,
            val_fraction: s.val_fraction,
            seed: s.seed,
            world_size: s.world_size,
            ranks_per_worker: s.ranks_per_worker,
            max_restarts: s.max_restarts,
            checkpoint_every: s.checkpoint_every,
            step_every: s.step_every,
            gamma: s.gamma,
            affine_degrees: s.affine_degrees,
            affine_translate: s.affine_translate,
            affine_scale: s.affine_scale,
            crop_scale: s.crop_scale,
            min_label_count: s.min_label_count,
            min_word_count: s.min_word_count,
            max_caption_len: s.max_caption_len,
            log_every: s.log_every,
            channels_last: s.channels_last,
            shuffle_window: s.shuffle_window,
            bf16: s.bf16,
            max_steps: s.max_steps,
            gpu_decode: s.gpu_decode,
            gang_timeout_s: s.gang_timeout_s,
            collective_timeout_s: s.collective_timeout_s,
        }
    }
}

impl From<TagProgress> for v1::TagProgress {
    fn from(p: TagProgress) -> Self {
        Self {
            items_total: p.items_total,
            items_done: p.items_done,
            items_failed: p.items_failed,
            shards_total: p.shards_total,
            shards_done: p.shards_done,
            shards_failed: p.shards_failed,
            shards_retried: p.shards_retried,
            items_per_second: p.items_per_second,
            output: p.output,
        }
    }
}

impl From<v1::TagProgress> for TagProgress {
    fn from(p: v1::TagProgress) -> Self {
        Self {
            items_total: p.items_total,
            items_done: p.items_done,
            items_failed: p.items_failed,
            shards_total: p.shards_total,
            shards_done: p.shards_done,
            shards_failed: p.shards_failed,
            shards_retried: p.shards_retried,
            items_per_second: p.items_per_second,
            output: p.output,
        }
    }
}

impl From<RankStatus> for v1::RankStatus {
    fn from(r: RankStatus) -> Self {
        Self {
            rank: r.rank,
            worker_id: r.worker_id,
            device: r.device,
            images_per_second: r.images_per_second,
            allreduce_seconds: r.allreduce_seconds,
            allreduce_bytes: r.allreduce_bytes,
        }
    }
}

impl From<v1::RankStatus> for RankStatus {
    fn from(r: v1::RankStatus) -> Self {
        Self {
            rank: r.rank,
            worker_id: r.worker_id,
            device: r.device,
            images_per_second: r.images_per_second,
            allreduce_seconds: r.allreduce_seconds,
            allreduce_bytes: r.allreduce_bytes,
        }
    }
}

impl From<TrainProgress> for v1::TrainProgress {
    fn from(p: TrainProgress) -> Self {
        Self {
            epoch: p.epoch,
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss,
            validation: p.validation.into_iter().collect(),
            ranks: p.ranks.into_iter().map(Into::into).collect(),
            restarts: p
                .restarts
                .into_iter()
                .map(|r| v1::Restart {
                    at_step: r.at_step,
                    cause: r.cause,
                    unix_ms: r.unix_ms,
                })
                .collect(),
        }
    }
}

impl From<v1::TrainProgress> for TrainProgress {
    fn from(p: v1::TrainProgress) -> Self {
        Self {
            epoch: p.epoch,
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss,
            validation: p.validation.into_iter().collect(),
            ranks: p.ranks.into_iter().map(Into::into).collect(),
            restarts: p
                .restarts
                .into_iter()
                .map(|r| Restart {
                    at_step: r.at_step,
                    cause: r.cause,
                    unix_ms: r.unix_ms,
                })
                .collect(),
        }
    }
}

impl From<JobStatus> for v1::Job {
    fn from(j: JobStatus) -> Self {
        Self {
            job_id: j.id,
            kind: v1::JobKind::from(j.kind) as i32,
            state: v1::JobState::from(j.state) as i32,
            created_unix_ms: j.created_unix_ms,
            updated_unix_ms: j.updated_unix_ms,
            error: j.error.unwrap_or_default(),
            tag: j.tag.map(Into::into),
            train: j.train.map(Into::into),
            stages: Some(j.stages.into()),
            metrics: j.metrics.into_iter().collect(),
            description: j.description,
        }
    }
}

impl TryFrom<v1::Job> for JobStatus {
    type Error = ProtoError;
    fn try_from(j: v1::Job) -> Result<Self> {
        Ok(Self {
            id: non_empty(j.job_id, "job_id")?,
            kind: job_kind(j.kind)?,
            state: job_state(j.state)?,
            created_unix_ms: j.created_unix_ms,
            updated_unix_ms: j.updated_unix_ms,
            error: (!j.error.is_empty()).then_some(j.error),
            description: j.description,
            tag: j.tag.map(Into::into),
            train: j.train.map(Into::into),
            stages: j.stages.map(Into::into).unwrap_or_default(),
            metrics: j.metrics.into_iter().collect(),
        })
    }
}

impl From<LeaseRef> for v1::LeaseRef {
    fn from(l: LeaseRef) -> Self {
        Self {
            task_id: l.task_id,
            attempt: l.attempt,
        }
    }
}

impl TryFrom<v1::LeaseRef> for LeaseRef {
    type Error = ProtoError;
    fn try_from(l: v1::LeaseRef) -> Result<Self> {
        Ok(Self {
            task_id: non_empty(l.task_id, "lease.task_id")?,
            attempt: l.attempt,
        })
    }
}

/// The lease of a worker's request, which every task report must carry.
pub fn lease(l: Option<v1::LeaseRef>) -> Result<LeaseRef> {
    required(l, "lease")?.try_into()
}

fn inference_into(i: &InferenceSettings, shard: &mut v1::TagShard) {
    shard.batch_size = i.batch_size;
    shard.beams = i.beams;
    shard.bf16 = i.bf16;
    shard.channels_last = i.channels_last;
    shard.gpu_decode = i.gpu_decode;
}

impl From<Assignment> for v1::Task {
    fn from(a: Assignment) -> Self {
        let work = match a.work {
            TaskWork::Tag(s) => {
                let mut shard = v1::TagShard {
                    catalog: s.catalog,
                    ranges: s
                        .ranges
                        .into_iter()
                        .map(|r| v1::FileRowGroups {
                            file: r.file,
                            row_groups: r.row_groups,
                            rows: r.rows.map(|rows| v1::RowRange {
                                start: rows.start,
                                end: rows.end,
                            }),
                        })
                        .collect(),
                    checkpoints: s.checkpoints,
                    output: s.output,
                    rows: s.rows,
                    ..Default::default()
                };
                inference_into(&s.inference, &mut shard);
                v1::task::Work::Tag(shard)
            }
            TaskWork::Train {
                spec,
                rank,
                world_size,
                device,
            } => v1::task::Work::Train(v1::TrainRank {
                options: Some(spec.into()),
                rank,
                world_size,
                device,
                nccl_unique_id: Vec::new(),
                peer_addresses: Vec::new(),
            }),
            TaskWork::Eval(spec) => v1::task::Work::Eval(v1::EvalRun {
                options: Some(spec.into()),
            }),
        };
        Self {
            lease: Some(a.lease.into()),
            job_id: a.job_id,
            work: Some(work),
        }
    }
}

impl TryFrom<v1::Task> for Assignment {
    type Error = ProtoError;
    fn try_from(t: v1::Task) -> Result<Self> {
        let work = match required(t.work, "work")? {
            v1::task::Work::Tag(s) => TaskWork::Tag(ShardWork {
                catalog: s.catalog,
                ranges: s
                    .ranges
                    .into_iter()
                    .map(|r| {
                        let rows = match r.rows {
                            Some(v1::RowRange { start, end }) if start > end => {
                                return Err(ProtoError::Invalid {
                                    field: "tag.ranges.rows",
                                    reason: format!("start {start} is after end {end}"),
                                })
                            }
                            Some(v1::RowRange { start, end }) => Some(start..end),
                            None => None,
                        };
                        Ok(FileRowGroups {
                            file: r.file,
                            row_groups: r.row_groups,
                            rows,
                        })
                    })
                    .collect::<Result<_>>()?,
                checkpoints: s.checkpoints,
                output: non_empty(s.output, "tag.output")?,
                inference: InferenceSettings {
                    batch_size: s.batch_size,
                    beams: s.beams,
                    bf16: s.bf16,
                    channels_last: s.channels_last,
                    gpu_decode: s.gpu_decode,
                },
                rows: s.rows,
            }),
            v1::task::Work::Train(r) => TaskWork::Train {
                spec: required(r.options, "train.options")?.try_into()?,
                rank: r.rank,
                world_size: r.world_size,
                device: r.device,
            },
            v1::task::Work::Eval(e) => {
                TaskWork::Eval(required(e.options, "eval.options")?.try_into()?)
            }
        };
        Ok(Self {
            lease: lease(t.lease)?,
            job_id: t.job_id,
            work,
        })
    }
}

impl From<Registration> for v1::RegisterRequest {
    fn from(r: Registration) -> Self {
        Self {
            protocol_version: r.protocol_version,
            hostname: r.hostname,
            devices: r
                .devices
                .into_iter()
                .map(|d| v1::Device {
                    name: d.name,
                    memory_bytes: d.memory_bytes,
                })
                .collect(),
            memory_bytes: r.memory_bytes,
            cpu_cores: r.cpu_cores,
            atelier_version: r.atelier_version,
            process_id: r.process_id,
            lane: r.lane,
        }
    }
}

impl From<v1::RegisterRequest> for Registration {
    fn from(r: v1::RegisterRequest) -> Self {
        Self {
            protocol_version: r.protocol_version,
            hostname: r.hostname,
            devices: r
                .devices
                .into_iter()
                .map(|d| DeviceInfo {
                    name: d.name,
                    memory_bytes: d.memory_bytes,
                })
                .collect(),
            memory_bytes: r.memory_bytes,
            cpu_cores: r.cpu_cores,
            atelier_version: r.atelier_version,
            process_id: r.process_id,
            lane: r.lane,
        }
    }
}

impl From<v1::ReportProgressRequest> for TaskProgressReport {
    fn from(r: v1::ReportProgressRequest) -> Self {
        Self {
            items_done: r.items_done,
            items_failed: r.items_failed,
            stages: r.stages.map(Into::into).unwrap_or_default(),
            train: r.train.map(Into::into),
        }
    }
}

/// The wire request for a progress report under `lease`.
pub fn progress_request(
    worker_id: &str,
    lease: &LeaseRef,
    report: TaskProgressReport,
) -> v1::ReportProgressRequest {
    v1::ReportProgressRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        items_done: report.items_done,
        items_failed: report.items_failed,
        stages: Some(report.stages.into()),
        train: report.train.map(Into::into),
    }
}

impl From<v1::CompleteTaskRequest> for TaskOutcome {
    fn from(r: v1::CompleteTaskRequest) -> Self {
        Self {
            rows_written: r.rows_written,
            items_failed: r.items_failed,
            output: r.output,
            stages: r.stages.map(Into::into).unwrap_or_default(),
            metrics: r.metrics.into_iter().collect(),
            model_version: r.model_version,
        }
    }
}

pub fn complete_request(
    worker_id: &str,
    lease: &LeaseRef,
    outcome: TaskOutcome,
    lease_next: bool,
) -> v1::CompleteTaskRequest {
    v1::CompleteTaskRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        rows_written: outcome.rows_written,
        items_failed: outcome.items_failed,
        output: outcome.output,
        stages: Some(outcome.stages.into()),
        metrics: outcome.metrics.into_iter().collect(),
        model_version: outcome.model_version,
        lease_next,
    }
}

pub fn fail_request(
    worker_id: &str,
    lease: &LeaseRef,
    failure: TaskFailure,
) -> v1::FailTaskRequest {
    v1::FailTaskRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        reason: failure.reason,
        retryable: failure.retryable,
    }
}

impl From<v1::FailTaskRequest> for TaskFailure {
    fn from(r: v1::FailTaskRequest) -> Self {
        Self {
            reason: r.reason,
            retryable: r.retryable,
        }
    }
}

pub fn rendezvous_request(
    worker_id: &str,
    lease: &LeaseRef,
    offer: RendezvousOffer,
    wait_ms: u32,
) -> v1::RendezvousRequest {
    v1::RendezvousRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        address: offer.address,
        nccl_unique_id: offer.nccl_unique_id,
        wait_ms,
    }
}

impl From<v1::RendezvousRequest> for RendezvousOffer {
    fn from(r: v1::RendezvousRequest) -> Self {
        Self {
            address: r.address,
            nccl_unique_id: r.nccl_unique_id,
        }
    }
}

/// The answer to a rendezvous: the gang once every rank has offered.
pub fn rendezvous_response(gang: Option<Gang>) -> v1::RendezvousResponse {
    match gang {
        None => v1::RendezvousResponse::default(),
        Some(gang) => v1::RendezvousResponse {
            ready: true,
            peer_addresses: gang.peer_addresses,
            nccl_unique_id: gang.nccl_unique_id,
            session: gang.session,
        },
    }
}

pub fn gang(response: v1::RendezvousResponse) -> Option<Gang> {
    response.ready.then_some(Gang {
        peer_addresses: response.peer_addresses,
        nccl_unique_id: response.nccl_unique_id,
        session: response.session,
    })
}

/// A refused call on the `Work` stream, answered with the status the
/// unary call would have ended with.
pub fn work_error(status: &tonic::Status) -> v1::work_response::Answer {
    v1::work_response::Answer::Error(v1::WorkError {
        code: status.code() as i32,
        message: status.message().to_string(),
    })
}

/// The status a `Work` stream's error answer stands for.
pub fn work_status(error: v1::WorkError) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(error.code), error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_work_call_keeps_its_code_and_message() {
        let status = tonic::Status::failed_precondition("lease t/1 attempt 2 is no longer held");
        let v1::work_response::Answer::Error(error) = work_error(&status) else {
            panic!("not an error answer");
        };
        let back = work_status(error);
        assert_eq!(back.code(), tonic::Code::FailedPrecondition);
        assert_eq!(back.message(), status.message());
    }

    #[test]
    fn a_job_survives_the_round_trip() {
        let job = JobStatus {
            id: "job-1".into(),
            kind: JobKind::Tag,
            state: JobState::Running,
            created_unix_ms: 1,
            updated_unix_ms: 2,
            error: None,
            description: "tag".into(),
            tag: Some(TagProgress {
                items_total: 10,
                items_done: 4,
                shards_total: 2,
                ..Default::default()
            }),
            train: None,
            stages: StageTimes::default(),
            metrics: [("accuracy".to_string(), 0.5)].into(),
        };
        let back = JobStatus::try_from(v1::Job::from(job.clone())).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn a_tag_submission_without_checkpoints_is_refused() {
        let request = v1::SubmitTagJobRequest {
            catalog: "file:///c".into(),
            output: "file:///o".into(),
            ..Default::default()
        };
        let error = TagJobSpec::try_from(request).unwrap_err();
        assert!(error.to_string().contains("checkpoints"), "{error}");
    }

    #[test]
    fn an_assignment_survives_the_round_trip() {
        let assignment = Assignment {
            lease: LeaseRef {
                task_id: "job-1/00003".into(),
                attempt: 2,
            },
            job_id: "job-1".into(),
            work: TaskWork::Tag(ShardWork {
                catalog: "file:///c".into(),
                ranges: vec![FileRowGroups {
                    file: "file:///c/part-00000.parquet".into(),
                    row_groups: vec![2, 3],
                    rows: Some(100..612),
                }],
                checkpoints: vec!["file:///ck".into()],
                output: "file:///o/part-00003.parquet".into(),
                inference: InferenceSettings {
                    batch_size: 32,
                    beams: 1,
                    bf16: true,
                    channels_last: false,
                    gpu_decode: true,
                },
                rows: 100,
            }),
        };
        let back = Assignment::try_from(v1::Task::from(assignment.clone())).unwrap();
        assert_eq!(back, assignment);
    }
}
