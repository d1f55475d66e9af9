//! What the coordinator keeps durably: one record per job and per task.

use std::collections::BTreeMap;

use atelier_proto::domain::{JobSpec, JobState, Restart, StageTimes, TaskWork, TrainProgress};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    pub error: Option<String>,
    pub max_attempts: u32,
    pub task_count: u32,
    /// Every task is done and the manifest is being written.
    pub finalizing: bool,
    pub metrics: BTreeMap<String, f64>,
    pub model_version: String,
    /// Gang restarts of a train job, oldest first.
    #[serde(default)]
    pub restarts: Vec<Restart>,
    /// Since when a train job's gang waits for enough workers.
    #[serde(default)]
    pub gang_waiting_since_unix_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub job_id: String,
    pub index: u32,
    /// What to do never changes after submit, so the store writes it once
    /// (its own table) and each state change writes only the rest.
    #[serde(skip_serializing)]
    pub work: TaskWork,
    pub state: TaskState,
    /// Attempts handed out so far; the current lease carries this number.
    pub attempt: u32,
    /// Attempts that were given up (failed, or their lease expired) and retried.
    pub retries: u32,
    pub items_done: u64,
    pub items_failed: u64,
    pub rows_written: u64,
    pub stages: StageTimes,
    pub last_error: Option<String>,
    pub output: String,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    /// The last training progress a rank reported.
    #[serde(default)]
    pub train: Option<TrainProgress>,
    /// The worker holding the current attempt.
    #[serde(default)]
    pub worker_id: String,
}

impl TaskRecord {
    pub fn new(job_id: &str, index: u32, work: TaskWork) -> Self {
        Self {
            id: format!("{job_id}/{index:05}"),
            job_id: job_id.to_string(),
            index,
            work,
            state: TaskState::Pending,
            attempt: 0,
            retries: 0,
            items_done: 0,
            items_failed: 0,
            rows_written: 0,
            stages: StageTimes::default(),
            last_error: None,
            output: String::new(),
            started_unix_ms: None,
            finished_unix_ms: None,
            train: None,
            worker_id: String::new(),
        }
    }
}
