//! The `atelier.v1` wire protocol between users, the coordinator and workers,
//! and the domain types the rest of atelier works with.
//!
//! The wire code (`v1`) is generated from `atelier/v1/atelier.proto` at build
//! time. Only the servers' and clients' edges touch it; `convert` turns it
//! into the domain types and back. The job options live in `options`, the one
//! definition the CLI, the wire and the worker derive from. Every module but
//! `v1` is private; what other crates use is re-exported here.

mod client;
mod convert;
mod domain;
mod error;
mod error_text;
mod ids;
mod options;
mod staging;

pub use client::{
    connect_jobs, install_crypto_provider, job_client_lazy, worker_client, Authed, BearerToken,
    Connect, JobClient, WorkerClient,
};
pub use convert::{
    commit_checkpoint_request, complete_request, fail_request, gang, job_id, job_state, lease,
    progress_request, rendezvous_request, rendezvous_response, work_error, work_status, worker_id,
};
pub use domain::{
    Assignment, DeviceInfo, EvalJobSpec, FailureKind, FileRowGroups, Gang, GangSecret, JobKind,
    JobSpec, JobState, JobStatus, LeaseRef, RankStatus, Registration, RendezvousOffer, Restart,
    RestartKind, ShardWork, StageTimes, TagJobSpec, TagProgress, TaskFailure, TaskOutcome,
    TaskProgressReport, TaskWork, TrainJobSpec, TrainProgress, WorkerTimings,
};
pub use error::{ProtoError, Result};
pub use error_text::one_line;
pub use ids::{JobId, TaskId, WorkerId};
pub use options::{
    Arch, CatalogColumns, EmbeddingPrecision, FetchOptions, Framing, GangOptions, InferenceOptions,
    Label, LabelColumn, OptimizerKind, ScheduleKind, Task, TrainOptions, UnknownName,
};
pub use staging::{staged_part, staging_prefix, STAGING_DIR};

/// Bumped on every incompatible change; workers send it when they register.
/// 2: a shard may be part of a row group (`FileRowGroups.rows`), which a
/// version-1 worker would read whole.
/// 3: workers lease and complete shards on the `Work` stream, which a
/// version-2 coordinator lacks.
/// 4: a shard's attempt writes its own staging object, which the
/// coordinator commits, and rank 0 hands checkpoint manifests to the
/// coordinator; a version-3 worker would write final names itself.
pub const PROTOCOL_VERSION: u32 = 4;

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("atelier.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/atelier_v1_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1::{self, task::Work};

    #[test]
    fn tasks_round_trip_through_the_wire_format() {
        let task = v1::Task {
            lease: Some(v1::LeaseRef {
                task_id: "job-1/shard-00003".into(),
                attempt: 2,
            }),
            job_id: "job-1".into(),
            work: Some(Work::Tag(v1::TagShard {
                catalog: "s3://bucket/catalog".into(),
                ranges: vec![v1::FileRowGroups {
                    file: "s3://bucket/catalog/part-00000.parquet".into(),
                    row_groups: vec![0, 1],
                    rows: Some(v1::RowRange {
                        start: 10,
                        end: 2000,
                    }),
                }],
                rows: 4096,
                ..Default::default()
            })),
        };
        let decoded = v1::Task::decode(task.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, task);
    }

    #[test]
    fn the_descriptor_set_describes_both_services() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<&str> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().filter_map(|s| s.name.as_deref()))
            .collect();
        assert_eq!(services, vec!["JobService", "WorkerService"]);
    }
}
