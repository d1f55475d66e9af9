//! The coordinator's state machine. Pure: no I/O and no clock of its own, so
//! every transition is a plain function of the state, the request and `now`.
//! The event loop owns the one instance, persists what it marks dirty and
//! answers requests only after that.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use atelier_proto::domain::{
    Assignment, JobSpec, JobState, JobStatus, LeaseRef, Registration, StageTimes, TagProgress,
    TaskFailure, TaskOutcome, TaskProgressReport, TaskWork,
};
use atelier_proto::PROTOCOL_VERSION;

use crate::error::{CoordinatorError, Result};
use crate::records::{JobRecord, TaskRecord, TaskState};
use crate::store::Loaded;

#[derive(Debug, Clone)]
struct Lease {
    worker_id: String,
    deadline: Instant,
}

/// What the coordinator tracks of a registered worker (one lane, that is one
/// device, of a worker process). Tag shards go to whoever asks; gangs keep
/// their ranks together on processes.
#[derive(Debug, Clone)]
struct Worker {
    last_seen: Instant,
    /// The worker process this lane belongs to.
    process: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub workers: usize,
    pub running: usize,
    pub queued: usize,
    pub gangs: usize,
}

/// A job whose manifest the event loop must write.
#[derive(Debug, Clone)]
pub struct Finalize {
    pub job: JobRecord,
    pub parts: Vec<TaskRecord>,
}

#[derive(Debug)]
pub struct State {
    lease_timeout: Duration,
    jobs: HashMap<String, JobRecord>,
    job_order: Vec<String>,
    tasks: HashMap<String, TaskRecord>,
    job_tasks: HashMap<String, Vec<String>>,
    /// Tasks of each job not yet done, so completion is O(1) per task.
    unfinished: HashMap<String, usize>,
    queue: VecDeque<String>,
    /// Train jobs waiting until enough workers are free for all their ranks.
    gangs: VecDeque<String>,
    leases: HashMap<String, Lease>,
    workers: HashMap<String, Worker>,
    dirty_jobs: HashSet<String>,
    dirty_tasks: HashSet<String>,
    touched_jobs: HashSet<String>,
    finalize: Vec<String>,
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl State {
    pub fn new(lease_timeout: Duration) -> Self {
        Self {
            lease_timeout,
            jobs: HashMap::new(),
            job_order: Vec::new(),
            tasks: HashMap::new(),
            job_tasks: HashMap::new(),
            unfinished: HashMap::new(),
            queue: VecDeque::new(),
            gangs: VecDeque::new(),
            leases: HashMap::new(),
            workers: HashMap::new(),
            dirty_jobs: HashSet::new(),
            dirty_tasks: HashSet::new(),
            touched_jobs: HashSet::new(),
            finalize: Vec::new(),
        }
    }

    /// Rebuilds the state after a restart. Tasks that were running keep their
    /// attempt number and get one lease timeout for their worker to
    /// heartbeat again; after that they are retried like any expired lease.
    pub fn restore(lease_timeout: Duration, loaded: Loaded, now: Instant) -> Self {
        let mut state = Self::new(lease_timeout);
        let mut jobs = loaded.jobs;
        jobs.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        for job in jobs {
            state.job_order.push(job.id.clone());
            if job.finalizing && !job.state.is_terminal() {
                state.finalize.push(job.id.clone());
            }
            state.jobs.insert(job.id.clone(), job);
        }
        let mut tasks = loaded.tasks;
        tasks.sort_by(|a, b| (&a.job_id, a.index).cmp(&(&b.job_id, b.index)));
        let mut pending: Vec<(i64, String, u32)> = Vec::new();
        for task in tasks {
            let created = state.jobs.get(&task.job_id).map(|j| j.created_unix_ms);
            let Some(created) = created else { continue };
            let gang = matches!(task.work, TaskWork::Train { .. });
            match task.state {
                TaskState::Pending if gang && !state.gangs.contains(&task.job_id) => {
                    state.gangs.push_back(task.job_id.clone());
                }
                TaskState::Pending if gang => {}
                TaskState::Pending => pending.push((created, task.id.clone(), task.index)),
                TaskState::Running => {
                    state.leases.insert(
                        task.id.clone(),
                        Lease {
                            worker_id: String::new(),
                            deadline: now + lease_timeout,
                        },
                    );
                }
                _ => {}
            }
            state
                .job_tasks
                .entry(task.job_id.clone())
                .or_default()
                .push(task.id.clone());
            *state.unfinished.entry(task.job_id.clone()).or_default() +=
                usize::from(task.state != TaskState::Done);
            state.tasks.insert(task.id.clone(), task);
        }
        pending.sort();
        state.queue = pending.into_iter().map(|(_, id, _)| id).collect();
        state
    }

    // ------------------------------------------------------------ users

    /// Adds a job and its tasks, which wait in the queue behind earlier jobs.
    pub fn submit(
        &mut self,
        id: String,
        spec: JobSpec,
        works: Vec<TaskWork>,
        max_attempts: u32,
    ) -> JobStatus {
        let now = unix_ms();
        let job = JobRecord {
            id: id.clone(),
            spec,
            state: JobState::Pending,
            created_unix_ms: now,
            updated_unix_ms: now,
            started_unix_ms: None,
            finished_unix_ms: None,
            error: None,
            max_attempts: max_attempts.max(1),
            task_count: works.len() as u32,
            finalizing: false,
            metrics: BTreeMap::new(),
            model_version: String::new(),
            restarts: Vec::new(),
            gang_waiting_since_unix_ms: None,
        };
        let mut ids = Vec::with_capacity(works.len());
        let gang = matches!(job.spec, JobSpec::Train(_));
        for (index, work) in works.into_iter().enumerate() {
            let task = TaskRecord::new(&id, index as u32, work);
            if !gang {
                self.queue.push_back(task.id.clone());
            }
            self.dirty_tasks.insert(task.id.clone());
            ids.push(task.id.clone());
            self.tasks.insert(task.id.clone(), task);
        }
        self.unfinished.insert(id.clone(), ids.len());
        self.job_tasks.insert(id.clone(), ids);
        self.job_order.push(id.clone());
        self.jobs.insert(id.clone(), job);
        if gang {
            self.wait_for_gang(&id);
        }
        self.mark_job(&id);
        if self.job_tasks[&id].is_empty() {
            // Nothing to do, e.g. a catalogue of empty files: done at once.
            self.start_finalizing(&id);
        }
        self.status(&id).expect("job was just inserted")
    }

    pub fn cancel(&mut self, job_id: &str) -> Result<JobStatus> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.to_string()))?;
        if !job.state.is_terminal() {
            self.end_job(job_id, JobState::Cancelled, None);
        }
        self.status(job_id)
    }

    pub fn status(&self, job_id: &str) -> Result<JobStatus> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.to_string()))?;
        let mut stages = StageTimes::default();
        let mut tag = TagProgress {
            shards_total: job.task_count,
            ..TagProgress::default()
        };
        for task in self.job_tasks.get(job_id).into_iter().flatten() {
            let Some(task) = self.tasks.get(task) else {
                continue;
            };
            stages.add(&task.stages);
            tag.items_total += match &task.work {
                TaskWork::Tag(shard) => shard.rows,
                _ => 0,
            };
            tag.shards_retried += task.retries;
            match task.state {
                TaskState::Done => {
                    tag.shards_done += 1;
                    tag.items_done += task.rows_written;
                    tag.items_failed += task.items_failed;
                }
                TaskState::Running => {
                    tag.items_done += task.items_done;
                    tag.items_failed += task.items_failed;
                }
                TaskState::Failed => tag.shards_failed += 1,
                _ => {}
            }
        }
        let end = job.finished_unix_ms.unwrap_or_else(unix_ms);
        if let Some(start) = job.started_unix_ms {
            let seconds = (end - start).max(1) as f64 / 1000.0;
            tag.items_per_second = tag.items_done as f64 / seconds;
        }
        let tag = match &job.spec {
            JobSpec::Tag(spec) => Some(TagProgress {
                output: spec.output.clone(),
                ..tag
            }),
            _ => None,
        };
        Ok(JobStatus {
            id: job.id.clone(),
            kind: job.spec.kind(),
            state: job.state,
            created_unix_ms: job.created_unix_ms,
            updated_unix_ms: job.updated_unix_ms,
            error: job.error.clone(),
            description: job.spec.describe(),
            tag,
            train: matches!(job.spec, JobSpec::Train(_)).then(|| self.train_progress(job)),
            stages,
            metrics: job.metrics.clone(),
        })
    }

    /// Job ids, oldest first.
    pub fn job_ids(&self) -> &[String] {
        &self.job_order
    }

    // ------------------------------------------------------------ workers

    pub fn register(&mut self, registration: Registration, now: Instant) -> Result<String> {
        if registration.protocol_version != PROTOCOL_VERSION {
            return Err(CoordinatorError::ProtocolMismatch {
                worker: registration.protocol_version,
                coordinator: PROTOCOL_VERSION,
            });
        }
        // Random, so that an id from before a restart never names a new worker.
        let id = format!(
            "{}-{:08x}",
            if registration.hostname.is_empty() {
                "worker"
            } else {
                &registration.hostname
            },
            rand::random::<u32>()
        );
        let process = if registration.process_id.is_empty() {
            id.clone()
        } else {
            registration.process_id
        };
        self.workers.insert(
            id.clone(),
            Worker {
                last_seen: now,
                process,
            },
        );
        Ok(id)
    }

    /// Sizes the metrics report, each O(1).
    pub fn counts(&self) -> Counts {
        Counts {
            workers: self.workers.len(),
            running: self.leases.len(),
            queued: self.queue.len(),
            gangs: self.gangs.len(),
        }
    }

    fn see_worker(&mut self, worker_id: &str, now: Instant) -> Result<()> {
        match self.workers.get_mut(worker_id) {
            Some(worker) => {
                worker.last_seen = now;
                Ok(())
            }
            None => Err(CoordinatorError::UnknownWorker(worker_id.to_string())),
        }
    }

    /// Renews the leases the worker still holds and names those it lost.
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        held: &[LeaseRef],
        now: Instant,
    ) -> Result<Vec<LeaseRef>> {
        self.see_worker(worker_id, now)?;
        let mut revoked = Vec::new();
        for lease in held {
            if self.check_lease(lease).is_ok() {
                if let Some(entry) = self.leases.get_mut(&lease.task_id) {
                    entry.deadline = now + self.lease_timeout;
                    entry.worker_id = worker_id.to_string();
                }
            } else {
                revoked.push(lease.clone());
            }
        }
        Ok(revoked)
    }

    /// The next queued task, leased to `worker_id`.
    pub fn lease(&mut self, worker_id: &str, now: Instant) -> Result<Option<Assignment>> {
        self.see_worker(worker_id, now)?;
        while let Some(task_id) = self.queue.pop_front() {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            let live = self
                .jobs
                .get(&task.job_id)
                .is_some_and(|job| !job.state.is_terminal());
            if task.state != TaskState::Pending || !live {
                continue;
            }
            return Ok(self.hand_out(&task_id, worker_id, now));
        }
        Ok(None)
    }

    /// Leases one pending task to `worker_id`.
    fn hand_out(&mut self, task_id: &str, worker_id: &str, now: Instant) -> Option<Assignment> {
        let task = self.tasks.get_mut(task_id)?;
        task.state = TaskState::Running;
        task.attempt += 1;
        task.items_done = 0;
        task.items_failed = 0;
        task.started_unix_ms = Some(unix_ms());
        task.worker_id = worker_id.to_string();
        let assignment = Assignment {
            lease: LeaseRef {
                task_id: task.id.clone(),
                attempt: task.attempt,
            },
            job_id: task.job_id.clone(),
            work: task.work.clone(),
        };
        self.leases.insert(
            task_id.to_string(),
            Lease {
                worker_id: worker_id.to_string(),
                deadline: now + self.lease_timeout,
            },
        );
        self.dirty_tasks.insert(task_id.to_string());
        let job_id = assignment.job_id.clone();
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job.state == JobState::Pending {
                job.state = JobState::Running;
                job.started_unix_ms = Some(unix_ms());
            }
        }
        self.mark_job(&job_id);
        Some(assignment)
    }

    pub fn has_queued_work(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Checks that `lease` is the current attempt of a running task.
    pub(crate) fn check_lease(&self, lease: &LeaseRef) -> Result<&TaskRecord> {
        let stale = |reason: String| CoordinatorError::StaleLease {
            task_id: lease.task_id.clone(),
            attempt: lease.attempt,
            reason,
        };
        let task = self
            .tasks
            .get(&lease.task_id)
            .ok_or_else(|| stale("no such task".into()))?;
        if task.attempt != lease.attempt {
            return Err(stale(format!(
                "the lease expired and the task was handed out again (attempt {})",
                task.attempt
            )));
        }
        match task.state {
            TaskState::Running if self.leases.contains_key(&lease.task_id) => Ok(task),
            TaskState::Running | TaskState::Pending => Err(stale("the lease expired".into())),
            TaskState::Done => Err(stale("the task is already complete".into())),
            TaskState::Failed => Err(stale("the task failed".into())),
            TaskState::Cancelled => Err(stale("the job was cancelled".into())),
        }
    }

    /// Records progress; `Ok(true)` tells the worker to stop because the job ended.
    pub fn progress(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        report: TaskProgressReport,
        now: Instant,
    ) -> Result<bool> {
        self.see_worker(worker_id, now)?;
        if self
            .job_of(&lease.task_id)
            .is_some_and(|j| j.state.is_terminal())
        {
            return Ok(true);
        }
        self.check_lease(lease)?;
        if let Some(entry) = self.leases.get_mut(&lease.task_id) {
            entry.deadline = now + self.lease_timeout;
        }
        if let Some(task) = self.tasks.get_mut(&lease.task_id) {
            task.items_done = report.items_done;
            task.items_failed = report.items_failed;
            task.stages = report.stages;
            if report.train.is_some() {
                task.train = report.train;
            }
            let job_id = task.job_id.clone();
            self.touched_jobs.insert(job_id);
        }
        Ok(false)
    }

    fn job_of(&self, task_id: &str) -> Option<&JobRecord> {
        self.tasks
            .get(task_id)
            .and_then(|t| self.jobs.get(&t.job_id))
    }

    /// Accepts a finished task. Repeating the report of the same attempt is
    /// harmless, so a worker may resend it after a lost answer.
    pub fn complete(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        outcome: TaskOutcome,
        now: Instant,
    ) -> Result<()> {
        let _ = self.see_worker(worker_id, now);
        if let Some(task) = self.tasks.get(&lease.task_id) {
            if task.state == TaskState::Done && task.attempt == lease.attempt {
                return Ok(());
            }
        }
        self.check_lease(lease)?;
        self.leases.remove(&lease.task_id);
        let task = self
            .tasks
            .get_mut(&lease.task_id)
            .ok_or_else(|| CoordinatorError::Internal("checked task vanished".into()))?;
        task.state = TaskState::Done;
        task.rows_written = outcome.rows_written;
        task.items_done = outcome.rows_written;
        task.items_failed = outcome.items_failed;
        task.stages = outcome.stages;
        task.output = outcome.output;
        task.finished_unix_ms = Some(unix_ms());
        let job_id = task.job_id.clone();
        self.dirty_tasks.insert(lease.task_id.clone());
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job.model_version.is_empty() {
                job.model_version = outcome.model_version;
            }
            job.metrics.extend(outcome.metrics);
        }
        self.mark_job(&job_id);
        let unfinished = self.unfinished.entry(job_id.clone()).or_default();
        *unfinished = unfinished.saturating_sub(1);
        if *unfinished == 0 {
            self.start_finalizing(&job_id);
        }
        Ok(())
    }

    fn start_finalizing(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if matches!(job.spec, JobSpec::Tag(_)) {
            job.finalizing = true;
            self.finalize.push(job_id.to_string());
            self.mark_job(job_id);
        } else {
            self.end_job(job_id, JobState::Succeeded, None);
        }
    }

    /// Jobs whose manifest the event loop must now write.
    pub fn take_finalize(&mut self) -> Vec<Finalize> {
        std::mem::take(&mut self.finalize)
            .into_iter()
            .filter_map(|id| {
                let job = self.jobs.get(&id)?.clone();
                let parts = self.job_tasks[&id]
                    .iter()
                    .map(|t| self.tasks[t].clone())
                    .collect();
                Some(Finalize { job, parts })
            })
            .collect()
    }

    /// The manifest is written (or could not be): the job ends.
    pub fn finalized(&mut self, job_id: &str, result: std::result::Result<(), String>) {
        if self.jobs.get(job_id).is_none_or(|j| j.state.is_terminal()) {
            return;
        }
        match result {
            Ok(()) => self.end_job(job_id, JobState::Succeeded, None),
            Err(reason) => self.end_job(
                job_id,
                JobState::Failed,
                Some(format!("writing the manifest: {reason}")),
            ),
        }
    }

    pub fn fail(
        &mut self,
        worker_id: &str,
        lease: &LeaseRef,
        failure: TaskFailure,
        now: Instant,
    ) -> Result<()> {
        let _ = self.see_worker(worker_id, now);
        self.check_lease(lease)?;
        self.leases.remove(&lease.task_id);
        self.retry_or_fail(&lease.task_id, failure.reason, failure.retryable);
        Ok(())
    }

    fn retry_or_fail(&mut self, task_id: &str, reason: String, retryable: bool) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        let job_id = task.job_id.clone();
        if matches!(task.work, TaskWork::Train { .. }) {
            let cause = format!("rank {}: {reason}", task.index);
            task.last_error = Some(reason);
            self.dirty_tasks.insert(task_id.to_string());
            self.restart_gang(&job_id, cause, retryable);
            return;
        }
        let max_attempts = self.jobs.get(&job_id).map_or(1, |j| j.max_attempts);
        task.last_error = Some(reason.clone());
        self.dirty_tasks.insert(task_id.to_string());
        if retryable && task.attempt < max_attempts {
            tracing::info!(task = task_id, attempt = task.attempt, %reason, "retrying task");
            task.state = TaskState::Pending;
            task.retries += 1;
            task.items_done = 0;
            task.items_failed = 0;
            self.queue.push_back(task_id.to_string());
            self.mark_job(&job_id);
        } else {
            task.state = TaskState::Failed;
            task.finished_unix_ms = Some(unix_ms());
            let message = format!(
                "task {task_id} failed after {} attempt{}: {reason}",
                task.attempt,
                if task.attempt == 1 { "" } else { "s" }
            );
            tracing::warn!(task = task_id, %reason, "task failed for good");
            self.end_job(&job_id, JobState::Failed, Some(message));
        }
    }

    fn end_job(&mut self, job_id: &str, state: JobState, error: Option<String>) {
        let now = unix_ms();
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.state = state;
            job.error = error;
            job.finalizing = false;
            job.finished_unix_ms = Some(now);
        }
        for task_id in self.job_tasks.get(job_id).cloned().unwrap_or_default() {
            if let Some(task) = self.tasks.get_mut(&task_id) {
                if matches!(task.state, TaskState::Pending | TaskState::Running) {
                    task.state = TaskState::Cancelled;
                    self.leases.remove(&task_id);
                    self.dirty_tasks.insert(task_id);
                }
            }
        }
        self.mark_job(job_id);
    }

    /// Takes back the leases whose workers stopped heartbeating, and forgets
    /// workers silent for three lease timeouts.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<(String, String)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(task, lease)| (task.clone(), lease.worker_id.clone()))
            .collect();
        for (task_id, worker_id) in &expired {
            self.leases.remove(task_id);
            let who = if worker_id.is_empty() {
                "its worker".to_string()
            } else {
                format!("worker {worker_id}")
            };
            self.retry_or_fail(
                task_id,
                format!("lease expired: {who} stopped heartbeating"),
                true,
            );
        }
        let silent = self.lease_timeout * 3;
        self.workers
            .retain(|_, worker| now.duration_since(worker.last_seen) < silent);
        expired.len()
    }

    // ------------------------------------------------------------ persistence

    fn mark_job(&mut self, job_id: &str) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.updated_unix_ms = unix_ms();
        }
        self.dirty_jobs.insert(job_id.to_string());
        self.touched_jobs.insert(job_id.to_string());
    }

    /// The records changed since the last call, for the store, borrowed: a task record
    /// carries its work (files, row groups), too much to copy per batch.
    pub fn take_dirty(&mut self) -> (Vec<&JobRecord>, Vec<&TaskRecord>) {
        let job_ids: Vec<String> = self.dirty_jobs.drain().collect();
        let task_ids: Vec<String> = self.dirty_tasks.drain().collect();
        let jobs = job_ids.iter().filter_map(|id| self.jobs.get(id)).collect();
        let tasks = task_ids
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .collect();
        (jobs, tasks)
    }

    /// Jobs changed since the last call, for watchers and the read snapshot.
    pub fn take_touched(&mut self) -> Vec<String> {
        self.touched_jobs.drain().collect()
    }

    pub fn job_state(&self, job_id: &str) -> Option<JobState> {
        self.jobs.get(job_id).map(|j| j.state)
    }

    pub fn task(&self, task_id: &str) -> Option<&TaskRecord> {
        self.tasks.get(task_id)
    }
}

pub mod gang;
#[cfg(test)]
mod tests;
