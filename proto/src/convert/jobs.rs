//! Jobs: their specs, states, kinds and progress.

use super::non_empty;
use crate::domain::*;
use crate::error::{ProtoError, Result};
use crate::v1;

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
            gpu_decode: s.gpu_decode,
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
            gpu_decode: s.gpu_decode,
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
