//! What the coordinator keeps durably: one record per job and per task.

use std::collections::BTreeMap;

use atelier_proto::{
    JobId, JobSpec, JobState, Restart, StageTimes, TaskId, TaskWork, TrainProgress, WorkerId,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
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
    pub id: TaskId,
    pub job_id: JobId,
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
    /// Attempts whose worker went silent until the lease expired (preempted,
    /// killed, cut off). They count against the coordinator's
    /// `--max-lost-workers`, not the job's `max_attempts`.
    #[serde(default)]
    pub lost_workers: u32,
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
    /// The worker holding the current attempt; `None` before the first
    /// lease and while a gang waits to start again.
    #[serde(default, deserialize_with = "no_worker_as_none")]
    pub worker_id: Option<WorkerId>,
}

/// Records from before the type kept an empty string for "no worker".
fn no_worker_as_none<'de, D>(deserializer: D) -> Result<Option<WorkerId>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(deserializer)?
        .filter(|id| !id.is_empty())
        .map(WorkerId::new))
}

impl TaskRecord {
    pub fn new(job_id: &JobId, index: u32, work: TaskWork) -> Self {
        Self {
            id: TaskId::of(job_id, index),
            job_id: job_id.clone(),
            index,
            work,
            state: TaskState::Pending,
            attempt: 0,
            retries: 0,
            lost_workers: 0,
            items_done: 0,
            items_failed: 0,
            rows_written: 0,
            stages: StageTimes::default(),
            last_error: None,
            output: String::new(),
            started_unix_ms: None,
            finished_unix_ms: None,
            train: None,
            worker_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_record_from_before_typed_ids_reads_an_empty_worker_as_none() {
        let work = serde_json::json!({"Eval": {"catalog": "c", "checkpoint": "k", "all_items": false, "beams": 1}});
        let mut record = serde_json::to_value(TaskRecord::new(
            &JobId::new("job-1"),
            3,
            serde_json::from_value(work.clone()).unwrap(),
        ))
        .unwrap();
        record["work"] = work;
        record["worker_id"] = serde_json::json!("");
        let task: TaskRecord = serde_json::from_value(record.clone()).unwrap();
        assert_eq!(task.worker_id, None);
        assert_eq!(task.id.as_str(), "job-1/00003");
        record["worker_id"] = serde_json::json!("gpu-1-00c0ffee");
        let task: TaskRecord = serde_json::from_value(record).unwrap();
        assert_eq!(task.worker_id, Some(WorkerId::new("gpu-1-00c0ffee")));
    }
}
