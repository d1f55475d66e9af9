//! What users do to jobs: submit, cancel, read their status; and how a job ends.

use std::collections::BTreeMap;

use atelier_proto::{JobId, JobSpec, JobState, JobStatus, TagProgress, TaskWork};

use crate::error::{CoordinatorError, Result};
use crate::records::{JobRecord, TaskRecord, TaskState};

use super::{Finalize, Now, State};

/// Where a job writes: a tag job's output, a train job's checkpoint (an
/// evaluation only reads).
fn destination(spec: &JobSpec) -> Option<&str> {
    match spec {
        JobSpec::Tag(tag) => Some(&tag.output),
        JobSpec::Train(train) => Some(&train.checkpoint),
        JobSpec::Eval(_) => None,
    }
}

/// Where a job reads: its catalogue and checkpoints (and a train job's
/// backbone weights).
fn sources(spec: &JobSpec) -> Vec<&str> {
    match spec {
        JobSpec::Tag(tag) => std::iter::once(tag.catalog.as_str())
            .chain(tag.checkpoints.iter().map(String::as_str))
            .collect(),
        JobSpec::Train(train) => std::iter::once(train.catalog.as_str())
            .chain(train.options.backbone_weights.as_deref())
            .collect(),
        JobSpec::Eval(eval) => vec![eval.catalog.as_str(), eval.checkpoint.as_str()],
    }
}

/// Whether two prefixes share objects: the same one however it ends, or
/// one inside the other (`--overwrite` on `tags/` empties `tags/2026/`).
pub(crate) fn places_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    a == b || inside(a, b) || inside(b, a)
}

/// A submit between its reservation and its commit: the place it will write
/// is held, so no other submit can plan or prepare (`--overwrite` deletes)
/// there meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// The place is this submit's until it commits or releases.
    Granted(ReservationId),
    /// An unfinished job with the same spec already writes there: a
    /// retried submit (say a CronJob pod's second try) follows that job.
    Existing(JobId),
}

impl State {
    /// The first step of a submit: holds the place `spec` writes, or finds
    /// the unfinished job that is this submit again. Refuses while another
    /// job or submit writes where this one would. This is the one conflict
    /// check; what a reservation grants, [`State::commit`] takes as given.
    pub fn reserve(&mut self, spec: &JobSpec) -> Result<Reserved> {
        if let Some(url) = destination(spec) {
            // `--overwrite` would delete the job's own input.
            if let Some(source) = sources(spec).into_iter().find(|s| places_overlap(s, url)) {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "the job would write {url}, which holds {source} that it reads; write elsewhere"
                )));
            }
            if let Some(writer) = self.unfinished_writer_of(url) {
                let writer = writer.clone();
                if self.jobs[&writer].spec == *spec {
                    return Ok(Reserved::Existing(writer));
                }
                return Err(CoordinatorError::DestinationBusy {
                    job: writer,
                    url: url.to_string(),
                });
            }
            if let Some((reader, source)) = self.unfinished_reader_of(url) {
                return Err(CoordinatorError::InputInUse {
                    job: reader.clone(),
                    url: source.to_string(),
                });
            }
            if let Some((_, held)) = self
                .reservations
                .iter()
                .find(|(_, held)| destination(held).is_some_and(|d| places_overlap(d, url)))
            {
                return Err(CoordinatorError::DestinationReserved {
                    url: destination(held).unwrap_or(url).to_string(),
                });
            }
            // A cancelled rank's commit may still be writing there.
            if let Some(commit) = self.commit_in_flight(url) {
                return Err(CoordinatorError::CheckpointCommitting {
                    url: commit.checkpoint.clone(),
                });
            }
        }
        let id = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        self.reservations.insert(id, spec.clone());
        Ok(Reserved::Granted(id))
    }

    /// Gives up a reservation whose submit failed before its commit.
    pub fn release(&mut self, reservation: ReservationId) {
        self.reservations.remove(&reservation);
    }

    /// The last step of a submit: adds the reserved job and its tasks, which
    /// wait in the queue behind earlier jobs.
    pub fn commit(
        &mut self,
        reservation: ReservationId,
        id: JobId,
        works: Vec<TaskWork>,
        max_attempts: u32,
        now: Now,
    ) -> Result<JobStatus> {
        let spec = self
            .reservations
            .remove(&reservation)
            .ok_or_else(|| CoordinatorError::Internal(format!("{reservation:?} is not held")))?;
        let job = JobRecord {
            id: id.clone(),
            spec,
            state: JobState::Pending,
            created_unix_ms: now.unix_ms,
            updated_unix_ms: now.unix_ms,
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
            self.wait_for_gang(&id, now);
        }
        self.mark_job(&id, now);
        if self.job_tasks[&id].is_empty() {
            // Nothing to do, e.g. a catalogue of empty files: done at once.
            self.start_finalizing(&id, now);
        }
        self.status(&id, now)
    }

    /// Reserve and commit in one go, as a submit whose planning cannot fail.
    #[cfg(test)]
    pub fn submit(
        &mut self,
        id: JobId,
        spec: JobSpec,
        works: Vec<TaskWork>,
        max_attempts: u32,
        now: Now,
    ) -> Result<JobStatus> {
        match self.reserve(&spec)? {
            Reserved::Existing(job_id) => self.status(&job_id, now),
            Reserved::Granted(reservation) => {
                self.commit(reservation, id, works, max_attempts, now)
            }
        }
    }

    /// The unfinished job, if any, that reads from a place around or inside
    /// `url`, and that place.
    fn unfinished_reader_of(&self, url: &str) -> Option<(&JobId, &str)> {
        self.jobs
            .values()
            .filter(|job| !job.state.is_terminal())
            .find_map(|job| {
                let source = sources(&job.spec)
                    .into_iter()
                    .find(|source| places_overlap(source, url))?;
                Some((&job.id, source))
            })
    }

    /// The unfinished job, if any, that writes to `url` or a prefix around
    /// or inside it.
    fn unfinished_writer_of(&self, url: &str) -> Option<&JobId> {
        self.jobs
            .values()
            .filter(|job| !job.state.is_terminal())
            .find(|job| destination(&job.spec).is_some_and(|d| places_overlap(d, url)))
            .map(|job| &job.id)
    }

    /// The committer asks this before it puts the parts under their names:
    /// true while the job is still finalizing, and from then on a cancel no
    /// longer stops it; false when it was cancelled meanwhile, and then no
    /// `_SUCCESS` may be written.
    pub fn seal(&mut self, job_id: &JobId) -> bool {
        let finalizing = self
            .jobs
            .get(job_id)
            .is_some_and(|job| job.finalizing && !job.state.is_terminal());
        if finalizing {
            self.sealed.insert(job_id.clone());
        }
        finalizing
    }

    pub fn cancel(&mut self, job_id: &JobId, now: Now) -> Result<JobStatus> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.clone()))?;
        if self.sealed.contains(job_id) {
            tracing::info!(job = %job_id, "not cancelled: its output is complete and being marked so");
        } else if !job.state.is_terminal() {
            self.end_job(job_id, JobState::Cancelled, None, now);
        }
        self.status(job_id, now)
    }

    /// The job as users see it; a running job's rate is over its time so far.
    pub fn status(&mut self, job_id: &JobId, now: Now) -> Result<JobStatus> {
        // Tasks changed since their batch was saved (a status read in the
        // middle of a change, as submit and cancel do).
        for id in &self.dirty_tasks {
            self.tallies.count(id, &self.tasks);
        }
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.clone()))?;
        let tally = self.tallies.job(job_id);
        let stages = tally.stages;
        let mut tag = TagProgress {
            shards_total: job.task_count,
            items_total: tally.items_total,
            items_done: tally.items_done,
            items_failed: tally.items_failed,
            shards_done: tally.shards_done,
            shards_failed: tally.shards_failed,
            shards_retried: tally.shards_retried,
            ..TagProgress::default()
        };
        let end = job.finished_unix_ms.unwrap_or(now.unix_ms);
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

    pub(super) fn start_finalizing(&mut self, job_id: &JobId, now: Now) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if matches!(job.spec, JobSpec::Tag(_)) {
            job.finalizing = true;
            self.finalize.push(job_id.clone());
            self.mark_job(job_id, now);
        } else {
            self.end_job(job_id, JobState::Succeeded, None, now);
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
    pub fn finalized(&mut self, job_id: &JobId, result: std::result::Result<(), String>, now: Now) {
        if self.jobs.get(job_id).is_none_or(|j| j.state.is_terminal()) {
            return;
        }
        match result {
            Ok(()) => self.end_job(job_id, JobState::Succeeded, None, now),
            Err(reason) => self.end_job(
                job_id,
                JobState::Failed,
                Some(format!("writing the manifest: {reason}")),
                now,
            ),
        }
    }

    pub(super) fn end_job(
        &mut self,
        job_id: &JobId,
        state: JobState,
        error: Option<String>,
        now: Now,
    ) {
        self.sealed.remove(job_id);
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.state = state;
            job.error = error;
            job.finalizing = false;
            job.finished_unix_ms = Some(now.unix_ms);
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
        self.mark_job(job_id, now);
    }
}
