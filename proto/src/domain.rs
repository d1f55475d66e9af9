//! The domain types that the coordinator, the workers and the CLI work with.
//! They mirror the wire messages but carry no protobuf baggage (no `Option`
//! for required parts, no integer enums); `convert` maps between the two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, TaskId, WorkerId};
use crate::options::serde_compat::{empty_as_none, zero_as_none};
use crate::options::{CatalogColumns, GangOptions, InferenceOptions, TrainOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Tag,
    Train,
    Eval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Every state, in a job's order.
    pub const ALL: [JobState; 5] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::Train => "train",
            Self::Eval => "eval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagJobSpec {
    pub catalog: String,
    /// The catalogue's column names; specs stored before the mapping existed
    /// read atelier's own.
    #[serde(default)]
    pub columns: CatalogColumns,
    pub checkpoints: Vec<String>,
    pub output: String,
    /// Rows per shard; `None`: the coordinator sizes shards from its own
    /// setting and the registered workers.
    #[serde(deserialize_with = "zero_as_none", default)]
    pub target_shard_rows: Option<u64>,
    /// Attempts per shard; `None`: the coordinator's default.
    #[serde(deserialize_with = "zero_as_none", default)]
    pub max_attempts: Option<u32>,
    pub inference: InferenceOptions,
    /// Replace whatever is under `output`; otherwise it must be empty.
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalJobSpec {
    pub catalog: String,
    #[serde(default)]
    pub columns: CatalogColumns,
    pub checkpoint: String,
    pub all_items: bool,
    /// Caption beam width (1: greedy).
    pub beams: u32,
}

/// A training run: where it reads and writes, how it trains, and how its
/// ranks are placed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainJobSpec {
    pub catalog: String,
    #[serde(default)]
    pub columns: CatalogColumns,
    pub checkpoint: String,
    // Flattened: state files keep the options beside the places, as the
    // wire message does.
    #[serde(flatten)]
    pub options: TrainOptions,
    #[serde(flatten)]
    pub gang: GangOptions,
}

// Train specs are large next to the others, but there is one per job or task
// and they are cloned rarely; boxing would only add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobSpec {
    Tag(TagJobSpec),
    Train(TrainJobSpec),
    Eval(EvalJobSpec),
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            Self::Tag(_) => JobKind::Tag,
            Self::Train(_) => JobKind::Train,
            Self::Eval(_) => JobKind::Eval,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Tag(s) => format!(
                "tag {} with {} into {}",
                s.catalog,
                s.checkpoints.join(" + "),
                s.output
            ),
            Self::Train(s) => format!(
                "train {} {} on {} into {}",
                s.options.arch, s.options.task, s.catalog, s.checkpoint
            ),
            Self::Eval(s) => format!("test {} on {}", s.checkpoint, s.catalog),
        }
    }
}

/// Seconds per pipeline stage, summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    pub read: f64,
    pub fetch: f64,
    pub decode: f64,
    pub transform: f64,
    pub forward: f64,
    pub write: f64,
    /// Host time staging batches for the device (the H2D copy's host side).
    #[serde(default)]
    pub upload: f64,
    /// Decoding, cropping and resizing on the GPU (`--gpu-decode`).
    #[serde(default)]
    pub gpu_decode: f64,
}

impl StageTimes {
    /// Stage names, in pipeline order, as status lines and metrics label them.
    pub const NAMES: [&'static str; 8] = [
        "read",
        "fetch",
        "decode",
        "transform",
        "gpu_decode",
        "upload",
        "forward",
        "write",
    ];

    /// Seconds per stage, in the order of [`StageTimes::NAMES`].
    pub fn values(&self) -> [f64; 8] {
        [
            self.read,
            self.fetch,
            self.decode,
            self.transform,
            self.gpu_decode,
            self.upload,
            self.forward,
            self.write,
        ]
    }

    pub fn add(&mut self, other: &StageTimes) {
        for (mine, theirs) in self.values_mut().into_iter().zip(other.values()) {
            *mine += theirs;
        }
    }

    pub fn subtract(&mut self, other: &StageTimes) {
        for (mine, theirs) in self.values_mut().into_iter().zip(other.values()) {
            *mine -= theirs;
        }
    }

    /// As [`StageTimes::values`], to write through.
    fn values_mut(&mut self) -> [&mut f64; 8] {
        [
            &mut self.read,
            &mut self.fetch,
            &mut self.decode,
            &mut self.transform,
            &mut self.gpu_decode,
            &mut self.upload,
            &mut self.forward,
            &mut self.write,
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagProgress {
    pub items_total: u64,
    pub items_done: u64,
    pub items_failed: u64,
    pub shards_total: u32,
    pub shards_done: u32,
    pub shards_failed: u32,
    pub shards_retried: u32,
    pub items_per_second: f64,
    pub output: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    pub epoch: u32,
    pub step: i64,
    pub total_steps: i64,
    pub loss: f64,
    pub validation: BTreeMap<String, f64>,
    pub ranks: Vec<RankStatus>,
    #[serde(default)]
    pub restarts: Vec<Restart>,
}

/// A gang restart of a train job and what caused it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub at_step: i64,
    pub cause: String,
    pub unix_ms: i64,
    /// Records from before the kinds were told apart were failures.
    #[serde(default)]
    pub kind: RestartKind,
}

/// Why a gang started again, which decides the budget it counts against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartKind {
    /// A rank failed; counts against the job's `max_restarts`.
    #[default]
    Failure,
    /// A rank's worker went silent and its lease expired (preempted, killed,
    /// cut off); counts against the coordinator's lost-worker budget.
    LostWorker,
}

/// What a rank offers to the rendezvous.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RendezvousOffer {
    pub address: String,
    pub nccl_unique_id: Vec<u8>,
}

/// The gang as every rank learns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gang {
    pub peer_addresses: Vec<String>,
    pub nccl_unique_id: Vec<u8>,
    pub session: u64,
    /// Drawn by the coordinator for each generation of the gang; the ring
    /// all-reduce admits only connections that carry it.
    pub ring_secret: GangSecret,
}

/// A gang's 32-byte shared secret. Never printed.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangSecret(pub [u8; 32]);

impl std::fmt::Debug for GangSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GangSecret(..)")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankStatus {
    pub rank: u32,
    /// The lane that holds the rank; `None` while the gang waits.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub worker_id: Option<WorkerId>,
    pub device: String,
    pub images_per_second: f64,
    pub allreduce_seconds: f64,
    #[serde(default)]
    pub allreduce_bytes: u64,
}

/// A job as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub error: Option<String>,
    pub description: String,
    pub tag: Option<TagProgress>,
    pub train: Option<TrainProgress>,
    pub stages: StageTimes,
    pub metrics: BTreeMap<String, f64>,
}

/// One attempt at one task; the attempt number is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseRef {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// Row groups of one catalogue file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRowGroups {
    pub file: String,
    pub row_groups: Vec<u32>,
    /// Only these rows of the groups taken together (from the first row of the
    /// first group); every row when `None`. State files from before slices
    /// existed load as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<std::ops::Range<u64>>,
}

/// One shard of a tag job: the rows it reads and the one object it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardWork {
    pub catalog: String,
    #[serde(default)]
    pub columns: CatalogColumns,
    pub ranges: Vec<FileRowGroups>,
    pub checkpoints: Vec<String>,
    pub output: String,
    pub inference: InferenceOptions,
    pub rows: u64,
}

#[allow(clippy::large_enum_variant)] // as JobSpec
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskWork {
    Tag(ShardWork),
    /// One rank of a gang of `spec.gang.world_size`.
    Train {
        spec: TrainJobSpec,
        rank: u32,
    },
    Eval(EvalJobSpec),
}

/// A task handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub lease: LeaseRef,
    pub job_id: JobId,
    pub work: TaskWork,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub protocol_version: u32,
    pub hostname: String,
    pub devices: Vec<DeviceInfo>,
    pub memory_bytes: u64,
    pub cpu_cores: u32,
    pub atelier_version: String,
    /// Shared by the lanes (one per device) of one worker process.
    pub process_id: String,
    pub lane: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTimings {
    pub heartbeat_interval_ms: u32,
    pub lease_timeout_ms: u32,
}

/// A worker's running count for the task it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskProgressReport {
    pub items_done: u64,
    pub items_failed: u64,
    pub stages: StageTimes,
    pub train: Option<TrainProgress>,
}

/// What a worker reports when its task is done and its output written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutcome {
    pub rows_written: u64,
    pub items_failed: u64,
    pub output: String,
    pub stages: StageTimes,
    pub metrics: BTreeMap<String, f64>,
    pub model_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub reason: String,
    pub kind: FailureKind,
}

/// Whose fault a failed attempt was, which decides what the coordinator
/// does with the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Another attempt would fail the same way (a bad input or option):
    /// the job fails.
    Permanent,
    /// Another attempt, here or elsewhere, may succeed (a store outage, a
    /// device error); it counts against the job's attempts and the lane.
    Retryable,
    /// A train rank lost a peer of its gang: the peer's worker vanished or
    /// went silent. Neither this rank's input nor its lane is at fault, so
    /// the coordinator counts it as a lost worker.
    PeerLost,
}

impl FailureKind {
    pub fn is_retryable(self) -> bool {
        !matches!(self, Self::Permanent)
    }
}
