//! Jobs: their specs, states, kinds and progress.

use super::{job_id, non_empty};
use crate::domain::*;
use crate::error::{ProtoError, Result};
use crate::ids::WorkerId;
use crate::options::{
    CatalogColumns, EmbeddingPrecision, FetchOptions, GangOptions, InferenceOptions, Label,
    LabelColumn, TrainOptions, UnknownName,
};
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
        let inference = inference_options(
            r.batch_size,
            r.beams,
            r.bf16,
            r.channels_last,
            r.gpu_decode,
            r.embeddings,
            r.fetch,
        )?;
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            columns: catalog_columns(r.columns)?,
            checkpoints: r.checkpoints,
            output: non_empty(r.output, "output")?,
            target_shard_rows: positive(r.target_shard_rows, "target_shard_rows")?,
            max_attempts: positive(r.max_attempts, "max_attempts")?,
            inference,
            overwrite: r.overwrite,
        })
    }
}

impl From<TagJobSpec> for v1::SubmitTagJobRequest {
    fn from(s: TagJobSpec) -> Self {
        let i = s.inference;
        Self {
            catalog: s.catalog,
            checkpoints: s.checkpoints,
            output: s.output,
            target_shard_rows: s.target_shard_rows,
            max_attempts: s.max_attempts,
            batch_size: Some(wire_count(i.batch_size)),
            beams: Some(wire_count(i.beams)),
            bf16: Some(i.bf16),
            channels_last: Some(i.channels_last),
            overwrite: s.overwrite,
            gpu_decode: Some(i.gpu_decode),
            fetch: Some(i.fetch.into()),
            embeddings: i.embeddings.map(|e| e.name().to_string()),
            columns: Some(s.columns.into()),
        }
    }
}

impl TryFrom<v1::SubmitEvalJobRequest> for EvalJobSpec {
    type Error = ProtoError;
    fn try_from(r: v1::SubmitEvalJobRequest) -> Result<Self> {
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            columns: catalog_columns(r.columns)?,
            checkpoint: non_empty(r.checkpoint, "checkpoint")?,
            all_items: r.all_items,
            beams: positive(r.beams, "beams")?.unwrap_or(1),
        })
    }
}

impl From<EvalJobSpec> for v1::SubmitEvalJobRequest {
    fn from(s: EvalJobSpec) -> Self {
        Self {
            catalog: s.catalog,
            checkpoint: s.checkpoint,
            all_items: s.all_items,
            beams: Some(s.beams),
            columns: Some(s.columns.into()),
        }
    }
}

impl TryFrom<v1::SubmitTrainJobRequest> for TrainJobSpec {
    type Error = ProtoError;
    fn try_from(r: v1::SubmitTrainJobRequest) -> Result<Self> {
        let d = TrainOptions::RECIPE;
        let options = TrainOptions {
            task: name_or(r.model_type, "model_type", d.task)?,
            targets: r.targets,
            arch: name_or(r.arch, "arch", d.arch)?,
            lr: r.lr.unwrap_or(d.lr),
            epochs: count_or(r.n_epochs, d.epochs),
            batch_size: count_or(r.batch_size, d.batch_size),
            image_size: count_or(r.image_size, d.image_size),
            finetune: r.finetune,
            backbone_weights: r.backbone_weights.filter(|w| !w.is_empty()),
            optimizer: name_or(r.optimizer, "optimizer", d.optimizer)?,
            weight_decay: r.weight_decay.unwrap_or(d.weight_decay),
            momentum: r.momentum.unwrap_or(d.momentum),
            schedule: name_or(r.schedule, "schedule", d.schedule)?,
            warmup_steps: r.warmup_steps.unwrap_or(d.warmup_steps),
            step_every: r.step_every.unwrap_or(d.step_every),
            gamma: r.gamma.unwrap_or(d.gamma),
            augment: r.augment.unwrap_or(d.augment),
            crop_scale: r.crop_scale.unwrap_or(d.crop_scale),
            framing: name_or(r.framing, "framing", d.framing)?,
            affine_degrees: r.affine_degrees.unwrap_or(d.affine_degrees),
            affine_translate: r.affine_translate.unwrap_or(d.affine_translate),
            affine_scale: r.affine_scale.unwrap_or(d.affine_scale),
            val_fraction: r.val_fraction.unwrap_or(d.val_fraction),
            seed: r.seed.unwrap_or(d.seed),
            min_label_count: count_or(r.min_label_count, d.min_label_count),
            min_word_count: count_or(r.min_word_count, d.min_word_count),
            max_caption_len: count_or(r.max_caption_len, d.max_caption_len),
            checkpoint_every: count_or(r.checkpoint_every, d.checkpoint_every),
            log_every: count_or(r.log_every, d.log_every),
            channels_last: r.channels_last.unwrap_or(d.channels_last),
            shuffle_window: count_or(r.shuffle_window, d.shuffle_window),
            bf16: r.bf16.unwrap_or(d.bf16),
            label_smoothing: r.label_smoothing.unwrap_or(d.label_smoothing),
            max_steps: r.max_steps,
            gpu_decode: r.gpu_decode.unwrap_or(d.gpu_decode),
        };
        let g = GangOptions::DEFAULT;
        let gang = GangOptions {
            world_size: r.world_size.unwrap_or(g.world_size),
            ranks_per_worker: r.ranks_per_worker,
            max_restarts: r.max_restarts.unwrap_or(g.max_restarts),
            gang_timeout_s: r.gang_timeout_s.unwrap_or(g.gang_timeout_s),
            collective_timeout_s: r.collective_timeout_s.unwrap_or(g.collective_timeout_s),
        };
        let invalid = |reason| ProtoError::Invalid {
            field: "train options",
            reason,
        };
        options.check().map_err(invalid)?;
        gang.check().map_err(invalid)?;
        Ok(Self {
            catalog: non_empty(r.catalog, "catalog")?,
            columns: catalog_columns(r.columns)?,
            checkpoint: non_empty(r.checkpoint, "checkpoint")?,
            options,
            gang,
        })
    }
}

impl From<TrainJobSpec> for v1::SubmitTrainJobRequest {
    fn from(s: TrainJobSpec) -> Self {
        let (o, g) = (s.options, s.gang);
        Self {
            catalog: s.catalog,
            checkpoint: s.checkpoint,
            model_type: Some(o.task.to_string()),
            targets: o.targets,
            arch: Some(o.arch.to_string()),
            lr: Some(o.lr),
            n_epochs: Some(wire_count(o.epochs)),
            batch_size: Some(wire_count(o.batch_size)),
            image_size: Some(wire_count(o.image_size)),
            finetune: o.finetune,
            backbone_weights: o.backbone_weights,
            optimizer: Some(o.optimizer.to_string()),
            weight_decay: Some(o.weight_decay),
            momentum: Some(o.momentum),
            schedule: Some(o.schedule.to_string()),
            warmup_steps: Some(o.warmup_steps),
            augment: Some(o.augment),
            val_fraction: Some(o.val_fraction),
            seed: Some(o.seed),
            world_size: Some(g.world_size),
            ranks_per_worker: g.ranks_per_worker,
            max_restarts: Some(g.max_restarts),
            checkpoint_every: Some(wire_count(o.checkpoint_every)),
            step_every: Some(o.step_every),
            gamma: Some(o.gamma),
            affine_degrees: Some(o.affine_degrees),
            affine_translate: Some(o.affine_translate),
            affine_scale: Some(o.affine_scale),
            crop_scale: Some(o.crop_scale),
            framing: Some(o.framing.to_string()),
            min_label_count: Some(wire_count(o.min_label_count)),
            min_word_count: Some(wire_count(o.min_word_count)),
            max_caption_len: Some(wire_count(o.max_caption_len)),
            log_every: Some(wire_count(o.log_every)),
            channels_last: Some(o.channels_last),
            shuffle_window: Some(wire_count(o.shuffle_window)),
            bf16: Some(o.bf16),
            label_smoothing: Some(o.label_smoothing),
            max_steps: o.max_steps,
            gpu_decode: Some(o.gpu_decode),
            gang_timeout_s: Some(g.gang_timeout_s),
            collective_timeout_s: Some(g.collective_timeout_s),
            columns: Some(s.columns.into()),
        }
    }
}

impl From<CatalogColumns> for v1::CatalogColumns {
    fn from(c: CatalogColumns) -> Self {
        Self {
            id: Some(c.id),
            image: Some(c.image),
            image_uri: Some(c.image_uri),
            labels: c
                .labels
                .into_iter()
                .map(|mapped| (mapped.label.to_string(), mapped.column))
                .collect(),
        }
    }
}

/// The column names of a request; absent ones are atelier's own, and a
/// mapping that names an unknown label or one column twice is refused.
pub(super) fn catalog_columns(wire: Option<v1::CatalogColumns>) -> Result<CatalogColumns> {
    let d = CatalogColumns::default();
    let Some(c) = wire else {
        return Ok(d);
    };
    let invalid = |reason| ProtoError::Invalid {
        field: "columns",
        reason,
    };
    let mut labels = Vec::with_capacity(c.labels.len());
    for (label, column) in c.labels {
        let label = label
            .parse::<Label>()
            .map_err(|e: UnknownName| invalid(e.to_string()))?;
        labels.push(LabelColumn { label, column });
    }
    labels.sort_by_key(|mapped| Label::ALL.iter().position(|&l| l == mapped.label));
    let columns = CatalogColumns {
        id: c.id.filter(|n| !n.is_empty()).unwrap_or(d.id),
        image: c.image.filter(|n| !n.is_empty()).unwrap_or(d.image),
        image_uri: c.image_uri.filter(|n| !n.is_empty()).unwrap_or(d.image_uri),
        labels,
    };
    columns.check().map_err(invalid)?;
    Ok(columns)
}

/// A named choice from the wire; absent takes `default`, an unknown name
/// is refused naming the field and the choices.
fn name_or<T>(value: Option<String>, field: &'static str, default: T) -> Result<T>
where
    T: std::str::FromStr<Err = UnknownName>,
{
    match value.filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(name) => name.parse().map_err(|e: UnknownName| ProtoError::Invalid {
            field,
            reason: e.to_string(),
        }),
    }
}

fn count_or(value: Option<u32>, default: usize) -> usize {
    value.map_or(default, |v| v as usize)
}

/// A count for the wire's `uint32`; no option comes near its limit.
fn wire_count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// An optional count that, when given, must be positive.
fn positive<T: Copy + Default + PartialEq + std::fmt::Display>(
    value: Option<T>,
    field: &'static str,
) -> Result<Option<T>> {
    match value {
        Some(v) if v == T::default() => Err(ProtoError::Invalid {
            field,
            reason: format!("must be positive, got {v}"),
        }),
        other => Ok(other),
    }
}

/// The inference options of a tag job or shard; absent ones take their defaults.
pub(super) fn inference_options(
    batch_size: Option<u32>,
    beams: Option<u32>,
    bf16: Option<bool>,
    channels_last: Option<bool>,
    gpu_decode: Option<bool>,
    embeddings: Option<String>,
    fetch: Option<v1::FetchLimits>,
) -> Result<InferenceOptions> {
    let d = InferenceOptions::DEFAULT;
    let fetch = fetch.unwrap_or_default();
    let options = InferenceOptions {
        batch_size: count_or(batch_size, d.batch_size),
        beams: count_or(beams, d.beams),
        bf16: bf16.unwrap_or(d.bf16),
        channels_last: channels_last.unwrap_or(d.channels_last),
        gpu_decode: gpu_decode.unwrap_or(d.gpu_decode),
        embeddings: embeddings
            .filter(|name| !name.is_empty())
            .map(|name| name_or(Some(name), "embeddings", EmbeddingPrecision::Float32))
            .transpose()?,
        fetch: FetchOptions {
            max_image_bytes: fetch.max_image_bytes.unwrap_or(d.fetch.max_image_bytes),
            fetch_per_host: fetch.fetch_per_host.unwrap_or(d.fetch.fetch_per_host),
        },
    };
    options.check().map_err(|reason| ProtoError::Invalid {
        field: "inference options",
        reason,
    })?;
    Ok(options)
}

impl From<FetchOptions> for v1::FetchLimits {
    fn from(f: FetchOptions) -> Self {
        Self {
            max_image_bytes: Some(f.max_image_bytes),
            fetch_per_host: Some(f.fetch_per_host),
        }
    }
}

pub(super) fn inference_wire(i: &InferenceOptions) -> (Option<u32>, Option<u32>) {
    (Some(wire_count(i.batch_size)), Some(wire_count(i.beams)))
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
            worker_id: r.worker_id.map(String::from).unwrap_or_default(),
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
            worker_id: (!r.worker_id.is_empty()).then(|| WorkerId::new(r.worker_id)),
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
                    kind: v1::RestartKind::from(r.kind).into(),
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
                    kind: r.kind().into(),
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
            job_id: j.id.into(),
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
            id: job_id(j.job_id)?,
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

impl From<RestartKind> for v1::RestartKind {
    fn from(kind: RestartKind) -> Self {
        match kind {
            RestartKind::Failure => Self::Failure,
            RestartKind::LostWorker => Self::LostWorker,
        }
    }
}

/// An unspecified kind comes from a coordinator that did not tell them
/// apart, when every restart counted as a failure.
impl From<v1::RestartKind> for RestartKind {
    fn from(kind: v1::RestartKind) -> Self {
        match kind {
            v1::RestartKind::Unspecified | v1::RestartKind::Failure => Self::Failure,
            v1::RestartKind::LostWorker => Self::LostWorker,
        }
    }
}
