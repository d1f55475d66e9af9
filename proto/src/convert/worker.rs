//! Between workers and the coordinator: registration, leases, tasks, their
//! reports, the gang rendezvous and the `Work` stream's answers.

use super::jobs::{catalog_columns, inference_options, inference_wire};
use super::{job_id, non_empty, required};
use crate::domain::*;
use crate::error::{ProtoError, Result};
use crate::ids::{TaskId, WorkerId};
use crate::options::InferenceOptions;
use crate::v1;

impl From<LeaseRef> for v1::LeaseRef {
    fn from(l: LeaseRef) -> Self {
        Self {
            task_id: l.task_id.into(),
            attempt: l.attempt,
        }
    }
}

impl TryFrom<v1::LeaseRef> for LeaseRef {
    type Error = ProtoError;
    fn try_from(l: v1::LeaseRef) -> Result<Self> {
        Ok(Self {
            task_id: TaskId::new(non_empty(l.task_id, "lease.task_id")?),
            attempt: l.attempt,
        })
    }
}

/// The lease of a worker's request, which every task report must carry.
pub fn lease(l: Option<v1::LeaseRef>) -> Result<LeaseRef> {
    required(l, "lease")?.try_into()
}

fn inference_into(i: &InferenceOptions, shard: &mut v1::TagShard) {
    (shard.batch_size, shard.beams) = inference_wire(i);
    shard.bf16 = Some(i.bf16);
    shard.channels_last = Some(i.channels_last);
    shard.gpu_decode = Some(i.gpu_decode);
    shard.fetch = Some(i.fetch.into());
    shard.embeddings = i.embeddings.map(|e| e.name().to_string());
}

impl From<Assignment> for v1::Task {
    fn from(a: Assignment) -> Self {
        let work = match a.work {
            TaskWork::Tag(s) => {
                let mut shard = v1::TagShard {
                    catalog: s.catalog,
                    columns: Some(s.columns.into()),
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
            TaskWork::Train { spec, rank } => v1::task::Work::Train(v1::TrainRank {
                world_size: spec.gang.world_size,
                options: Some(spec.into()),
                rank,
                // Each worker trains on its own lane's device; the rank
                // meets its peers at the rendezvous.
                device: String::new(),
                nccl_unique_id: Vec::new(),
                peer_addresses: Vec::new(),
            }),
            TaskWork::Eval(spec) => v1::task::Work::Eval(v1::EvalRun {
                options: Some(spec.into()),
            }),
        };
        Self {
            lease: Some(a.lease.into()),
            job_id: a.job_id.into(),
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
                columns: catalog_columns(s.columns)?,
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
                inference: inference_options(
                    s.batch_size,
                    s.beams,
                    s.bf16,
                    s.channels_last,
                    s.gpu_decode,
                    s.embeddings,
                    s.fetch,
                )?,
                rows: s.rows,
            }),
            v1::task::Work::Train(r) => {
                let spec: TrainJobSpec = required(r.options, "train.options")?.try_into()?;
                if r.rank >= spec.gang.world_size {
                    return Err(ProtoError::Invalid {
                        field: "train.rank",
                        reason: format!("rank {} of a world of {}", r.rank, spec.gang.world_size),
                    });
                }
                TaskWork::Train { spec, rank: r.rank }
            }
            v1::task::Work::Eval(e) => {
                TaskWork::Eval(required(e.options, "eval.options")?.try_into()?)
            }
        };
        Ok(Self {
            lease: lease(t.lease)?,
            job_id: job_id(t.job_id)?,
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
    worker_id: &WorkerId,
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
    worker_id: &WorkerId,
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
    worker_id: &WorkerId,
    lease: &LeaseRef,
    failure: TaskFailure,
) -> v1::FailTaskRequest {
    v1::FailTaskRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        reason: failure.reason,
        retryable: failure.kind.is_retryable(),
        peer_lost: failure.kind == FailureKind::PeerLost,
    }
}

impl From<v1::FailTaskRequest> for TaskFailure {
    fn from(r: v1::FailTaskRequest) -> Self {
        let kind = match (r.retryable, r.peer_lost) {
            (false, _) => FailureKind::Permanent,
            (true, false) => FailureKind::Retryable,
            (true, true) => FailureKind::PeerLost,
        };
        Self {
            reason: r.reason,
            kind,
        }
    }
}

pub fn rendezvous_request(
    worker_id: &WorkerId,
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

/// Rank 0's request to make `manifest` its job's checkpoint.
pub fn commit_checkpoint_request(
    worker_id: &WorkerId,
    lease: &LeaseRef,
    manifest: &[u8],
) -> v1::CommitCheckpointRequest {
    v1::CommitCheckpointRequest {
        worker_id: worker_id.to_string(),
        lease: Some(lease.clone().into()),
        manifest: manifest.to_vec(),
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
            ring_secret: gang.ring_secret.0.to_vec(),
        },
    }
}

pub fn gang(response: v1::RendezvousResponse) -> Result<Option<Gang>> {
    if !response.ready {
        return Ok(None);
    }
    let ring_secret = response
        .ring_secret
        .as_slice()
        .try_into()
        .map(GangSecret)
        .map_err(|_| ProtoError::Invalid {
            field: "ring_secret",
            reason: format!("{} bytes, not 32", response.ring_secret.len()),
        })?;
    Ok(Some(Gang {
        peer_addresses: response.peer_addresses,
        nccl_unique_id: response.nccl_unique_id,
        session: response.session,
        ring_secret,
    }))
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
