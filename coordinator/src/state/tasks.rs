//! What workers do: register, heartbeat, lease tasks, report progress,
//! complete or fail them; and leases that expire.

use atelier_proto::PROTOCOL_VERSION;
use atelier_proto::{
    Assignment, FailureKind, JobId, JobSpec, JobState, LeaseRef, Registration, TaskFailure, TaskId,
    TaskOutcome, TaskProgressReport, TaskWork, WorkerId,
};

use crate::error::{CoordinatorError, Result};
use crate::records::{JobRecord, TaskRecord, TaskState};

use super::{Counts, Lease, Now, State, Worker};

impl State {
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

    /// Adds a worker lane under `id`, a name never given before (the event
    /// loop draws it at random, so that an id from before a restart never
    /// names a new worker).
    pub fn register(
        &mut self,
        id: WorkerId,
        registration: Registration,
        now: Now,
    ) -> Result<WorkerId> {
        if registration.protocol_version != PROTOCOL_VERSION {
            return Err(CoordinatorError::ProtocolMismatch {
                worker: registration.protocol_version,
                coordinator: PROTOCOL_VERSION,
            });
        }
        let process = if registration.process_id.is_empty() {
            id.to_string()
        } else {
            registration.process_id
        };
        self.workers.insert(
            id.clone(),
            Worker {
                last_seen: now.at,
                process,
                failures_in_a_row: 0,
                quarantined_until: None,
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

    pub(super) fn see_worker(&mut self, worker_id: &WorkerId, now: Now) -> Result<&mut Worker> {
        match self.workers.get_mut(worker_id) {
            Some(worker) => {
                worker.last_seen = now.at;
                Ok(worker)
            }
            None => Err(CoordinatorError::UnknownWorker(worker_id.clone())),
        }
    }

    /// Renews the leases the worker still holds and names those it lost.
    pub fn heartbeat(
        &mut self,
        worker_id: &WorkerId,
        held: &[LeaseRef],
        now: Now,
    ) -> Result<Vec<LeaseRef>> {
        self.see_worker(worker_id, now)?;
        let mut revoked = Vec::new();
        for lease in held {
            if self.check_lease(lease).is_ok() {
                if let Some(entry) = self.leases.get_mut(&lease.task_id) {
                    entry.deadline = now.at + self.lease_timeout;
                    entry.worker_id = Some(worker_id.clone());
                }
            } else {
                revoked.push(lease.clone());
            }
        }
        Ok(revoked)
    }

    /// The next queued task, leased to `worker_id`, unless the lane is held
    /// for a waiting gang.
    pub fn lease(&mut self, worker_id: &WorkerId, now: Now) -> Result<Option<Assignment>> {
        let quarantined = self.see_worker(worker_id, now)?.is_quarantined(now);
        if quarantined || self.reserved_for_gang(worker_id, now) {
            return Ok(None);
        }
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
    pub(super) fn hand_out(
        &mut self,
        task_id: &TaskId,
        worker_id: &WorkerId,
        now: Now,
    ) -> Option<Assignment> {
        let task = self.tasks.get_mut(task_id)?;
        task.state = TaskState::Running;
        task.attempt += 1;
        task.items_done = 0;
        task.items_failed = 0;
        task.started_unix_ms = Some(now.unix_ms);
        task.worker_id = Some(worker_id.clone());
        let assignment = Assignment {
            lease: LeaseRef {
                task_id: task.id.clone(),
                attempt: task.attempt,
            },
            job_id: task.job_id.clone(),
            work: task.work.clone(),
        };
        self.leases.insert(
            task_id.clone(),
            Lease {
                worker_id: Some(worker_id.clone()),
                deadline: now.at + self.lease_timeout,
            },
        );
        self.dirty_tasks.insert(task_id.clone());
        let job_id = assignment.job_id.clone();
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job.state == JobState::Pending {
                job.state = JobState::Running;
                job.started_unix_ms = Some(now.unix_ms);
            }
        }
        self.mark_job(&job_id, now);
        Some(assignment)
    }

    pub fn has_queued_work(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Records progress; `Ok(true)` tells the worker to stop because the job ended.
    pub fn progress(
        &mut self,
        worker_id: &WorkerId,
        lease: &LeaseRef,
        report: TaskProgressReport,
        now: Now,
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
            entry.deadline = now.at + self.lease_timeout;
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
            // Progress is not saved, so it is counted here.
            self.tallies.count(&lease.task_id, &self.tasks);
        }
        Ok(false)
    }

    pub(super) fn job_of(&self, task_id: &TaskId) -> Option<&JobRecord> {
        self.tasks
            .get(task_id)
            .and_then(|t| self.jobs.get(&t.job_id))
    }

    /// Accepts a finished task. Repeating the report of the same attempt is
    /// harmless, so a worker may resend it after a lost answer.
    pub fn complete(
        &mut self,
        worker_id: &WorkerId,
        lease: &LeaseRef,
        outcome: TaskOutcome,
        now: Now,
    ) -> Result<()> {
        let _ = self.see_worker(worker_id, now);
        if let Some(task) = self.tasks.get(&lease.task_id) {
            if task.state == TaskState::Done && task.attempt == lease.attempt {
                return Ok(());
            }
        }
        self.check_lease(lease)?;
        self.leases.remove(&lease.task_id);
        self.lane_succeeded(worker_id);
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
        task.finished_unix_ms = Some(now.unix_ms);
        let job_id = task.job_id.clone();
        self.dirty_tasks.insert(lease.task_id.clone());
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job.model_version.is_empty() {
                job.model_version = outcome.model_version;
            }
            job.metrics.extend(outcome.metrics);
        }
        self.mark_job(&job_id, now);
        let unfinished = self.unfinished.entry(job_id.clone()).or_default();
        *unfinished = unfinished.saturating_sub(1);
        if *unfinished == 0 {
            self.start_finalizing(&job_id, now);
        }
        Ok(())
    }

    pub fn fail(
        &mut self,
        worker_id: &WorkerId,
        lease: &LeaseRef,
        failure: TaskFailure,
        now: Now,
    ) -> Result<()> {
        let _ = self.see_worker(worker_id, now);
        self.check_lease(lease)?;
        self.leases.remove(&lease.task_id);
        let reason = failure.reason;
        let setback = match failure.kind {
            FailureKind::Permanent => Setback::Failed {
                reason,
                retryable: false,
            },
            FailureKind::Retryable => {
                self.lane_failed(worker_id, now);
                Setback::Failed {
                    reason,
                    retryable: true,
                }
            }
            // The rank's peer is the one that went away.
            FailureKind::PeerLost => Setback::LostWorker { reason },
        };
        self.retry_or_fail(&lease.task_id, setback, now);
        Ok(())
    }

    /// Queues the task again, or fails its job once `setback` has used up
    /// its budget: a failure the job's `max_attempts`, a lost worker the
    /// coordinator's `max_lost_workers`. A train rank's setback restarts its
    /// gang under the same two budgets.
    pub(super) fn retry_or_fail(&mut self, task_id: &TaskId, setback: Setback, now: Now) {
        let max_lost_workers = self.max_lost_workers;
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        let job_id = task.job_id.clone();
        if matches!(setback, Setback::LostWorker { .. }) {
            task.lost_workers += 1;
        }
        task.last_error = Some(setback.reason().to_string());
        self.dirty_tasks.insert(task_id.clone());
        if matches!(task.work, TaskWork::Train { .. }) {
            let index = task.index;
            self.restart_gang(&job_id, index, setback, now);
            return;
        }
        let max_attempts = self.jobs.get(&job_id).map_or(1, |j| j.max_attempts);
        // Every attempt handed out either ended in a failure, lost its
        // worker, or is this one.
        let failures = task.attempt - task.lost_workers;
        let give_up = match &setback {
            Setback::Failed { retryable, .. } => {
                (!retryable || failures >= max_attempts).then(|| {
                    format!(
                        "failed after {failures} attempt{}",
                        if failures == 1 { "" } else { "s" }
                    )
                })
            }
            Setback::LostWorker { .. } => (task.lost_workers >= max_lost_workers).then(|| {
                format!(
                    "lost its worker {} times (max {max_lost_workers}: a task that keeps \
                     losing workers may be crashing them)",
                    task.lost_workers
                )
            }),
        };
        match give_up {
            None => {
                tracing::info!(task = %task_id, attempt = task.attempt, reason = setback.reason(), "retrying task");
                task.state = TaskState::Pending;
                task.retries += 1;
                task.items_done = 0;
                task.items_failed = 0;
                self.queue.push_back(task_id.clone());
                self.mark_job(&job_id, now);
            }
            Some(why) => {
                task.state = TaskState::Failed;
                task.finished_unix_ms = Some(now.unix_ms);
                let message = format!("task {task_id} {why}: {}", setback.reason());
                tracing::warn!(task = %task_id, reason = setback.reason(), "task failed for good");
                self.end_job(&job_id, JobState::Failed, Some(message), now);
            }
        }
    }

    /// Takes back the leases whose workers stopped heartbeating, and forgets
    /// workers silent for three lease timeouts.
    pub fn expire(&mut self, now: Now) -> usize {
        let expired: Vec<(TaskId, Option<WorkerId>)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now.at)
            .map(|(task, lease)| (task.clone(), lease.worker_id.clone()))
            .collect();
        for (task_id, worker_id) in &expired {
            // A gang's restart takes back every rank's lease: the ranks
            // expiring in this same sweep are that one failure, counted once.
            if self.leases.remove(task_id).is_none() {
                continue;
            }
            let who = match worker_id {
                Some(worker_id) => format!("worker {worker_id}"),
                None => "its worker".to_string(),
            };
            self.retry_or_fail(
                task_id,
                Setback::LostWorker {
                    reason: format!("lease expired: {who} stopped heartbeating"),
                },
                now,
            );
        }
        let silent = self.lease_timeout * 3;
        self.workers
            .retain(|_, worker| now.at.duration_since(worker.last_seen) < silent);
        expired.len()
    }

    /// Fails the tag and eval jobs that have waited `no_worker_timeout`
    /// with no worker registered at all, counted from their submit or from
    /// when the last worker went, whichever is later. (Train gangs have
    /// their own `gang_timeout_s`.) An unattended run then ends, saying
    /// why, rather than waiting for ever.
    pub fn expire_unserved_jobs(&mut self, now: Now) {
        if !self.workers.is_empty() {
            self.no_workers_since_unix_ms = None;
            return;
        }
        let since = *self.no_workers_since_unix_ms.get_or_insert(now.unix_ms);
        let timeout = self.no_worker_timeout;
        let unserved: Vec<JobId> = self
            .jobs
            .values()
            .filter(|job| !job.state.is_terminal() && !self.sealed.contains(&job.id))
            .filter(|job| matches!(job.spec, JobSpec::Tag(_) | JobSpec::Eval(_)))
            .filter(|job| {
                let waited = now.unix_ms - since.max(job.created_unix_ms);
                waited >= 0 && waited as u128 >= timeout.as_millis()
            })
            .map(|job| job.id.clone())
            .collect();
        for job_id in unserved {
            let message = format!(
                "no worker has been registered with the coordinator for {}s \
                 (--no-worker-timeout-s); start workers, then resubmit the job",
                timeout.as_secs()
            );
            tracing::warn!(job = %job_id, %message, "job had no worker");
            self.end_job(&job_id, JobState::Failed, Some(message), now);
        }
    }
}

/// How an attempt ended short of completion, which decides the budget it
/// counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Setback {
    /// The worker reported a failure; only a retryable one is tried again.
    Failed { reason: String, retryable: bool },
    /// The worker went silent until its lease expired: preempted, killed
    /// or cut off. Says nothing about the task, so it does not use up
    /// `max_attempts`; `max_lost_workers` still ends a task that keeps
    /// taking its workers down.
    LostWorker { reason: String },
}

impl Setback {
    pub(super) fn reason(&self) -> &str {
        match self {
            Self::Failed { reason, .. } | Self::LostWorker { reason } => reason,
        }
    }
}
