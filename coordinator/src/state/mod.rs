//! The coordinator's state machine. Pure: no I/O and no clock of its own, so
//! every transition is a plain function of the state, the request and `now`.
//! The event loop owns the one instance, persists what it marks dirty and
//! answers requests only after that.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atelier_proto::{JobId, JobSpec, JobState, TaskId, TaskWork, WorkerId};

use crate::records::{JobRecord, TaskRecord, TaskState};
use crate::store::Loaded;
use tally::Tallies;

/// Lost workers a task or a gang may suffer when the coordinator is not told
/// otherwise (`--max-lost-workers`).
pub const DEFAULT_MAX_LOST_WORKERS: u32 = 10;
/// How long a tag or eval job waits while no worker at all is registered
/// before it fails: long enough for a cluster's workers to be rescheduled,
/// short enough that an unattended nightly run reports a dead cluster the
/// same night.
pub const DEFAULT_NO_WORKER_TIMEOUT: Duration = Duration::from_secs(1800);

// The keys are ids the coordinator made itself, so SipHash's defence
// against chosen keys buys nothing here.
type HashMap<K, V> = rustc_hash::FxHashMap<K, V>;
type HashSet<T> = rustc_hash::FxHashSet<T>;

#[derive(Debug, Clone)]
struct Lease {
    /// `None` after a restart, until the holder's next heartbeat names it.
    worker_id: Option<WorkerId>,
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
    /// Retryable task failures since the lane last completed one.
    failures_in_a_row: u32,
    /// No work for the lane before then (see `lanes`).
    quarantined_until: Option<Instant>,
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
    /// Lost workers (expired leases) a task or a gang may suffer before its
    /// job fails; they never count against `max_attempts`.
    max_lost_workers: u32,
    /// Tag and eval jobs fail after this long with no worker registered.
    no_worker_timeout: Duration,
    /// Since when no worker has been registered (wall clock); `None` while
    /// one is.
    no_workers_since_unix_ms: Option<i64>,
    jobs: HashMap<JobId, JobRecord>,
    job_order: Vec<JobId>,
    tasks: HashMap<TaskId, TaskRecord>,
    job_tasks: HashMap<JobId, Vec<TaskId>>,
    /// Tasks of each job not yet done, so completion is O(1) per task.
    unfinished: HashMap<JobId, usize>,
    queue: VecDeque<TaskId>,
    /// Train jobs waiting until enough workers are free for all their ranks.
    gangs: VecDeque<JobId>,
    leases: HashMap<TaskId, Lease>,
    workers: HashMap<WorkerId, Worker>,
    dirty_jobs: HashSet<JobId>,
    dirty_tasks: HashSet<TaskId>,
    /// Each job's figures summed over its tasks.
    tallies: Tallies,
    touched_jobs: HashSet<JobId>,
    finalize: Vec<JobId>,
    /// Jobs whose manifest is written and whose `_SUCCESS` may follow: from
    /// then on their output is whole, and a cancel no longer stops them.
    sealed: HashSet<JobId>,
    /// Submits between their reservation and their commit.
    reservations: BTreeMap<ReservationId, JobSpec>,
    next_reservation: u64,
    checkpoint_commits: BTreeMap<u64, CheckpointCommit>,
    next_checkpoint_commit: u64,
}

/// When a transition happens: the monotonic instant that lease deadlines
/// are measured against, and the wall clock that records are stamped with.
/// The event loop reads the clock once per batch and passes it in; the
/// state machine never reads it, so its tests choose the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: i64,
}

impl Now {
    pub fn read() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    /// `elapsed` later on both clocks.
    #[cfg(test)]
    pub fn after(self, elapsed: Duration) -> Self {
        Self {
            at: self.at + elapsed,
            unix_ms: self.unix_ms + elapsed.as_millis() as i64,
        }
    }
}

impl State {
    pub fn new(lease_timeout: Duration) -> Self {
        Self {
            lease_timeout,
            max_lost_workers: DEFAULT_MAX_LOST_WORKERS,
            no_worker_timeout: DEFAULT_NO_WORKER_TIMEOUT,
            no_workers_since_unix_ms: None,
            jobs: HashMap::default(),
            job_order: Vec::new(),
            tasks: HashMap::default(),
            job_tasks: HashMap::default(),
            unfinished: HashMap::default(),
            queue: VecDeque::new(),
            gangs: VecDeque::new(),
            leases: HashMap::default(),
            workers: HashMap::default(),
            dirty_jobs: HashSet::default(),
            dirty_tasks: HashSet::default(),
            tallies: Tallies::default(),
            touched_jobs: HashSet::default(),
            finalize: Vec::new(),
            sealed: HashSet::default(),
            reservations: BTreeMap::new(),
            next_reservation: 0,
            checkpoint_commits: BTreeMap::new(),
            next_checkpoint_commit: 0,
        }
    }

    /// Sets how many lost workers a task or a gang may suffer.
    pub fn with_max_lost_workers(mut self, max_lost_workers: u32) -> Self {
        self.max_lost_workers = max_lost_workers.max(1);
        self
    }

    /// Sets how long a tag or eval job waits with no worker registered.
    pub fn with_no_worker_timeout(mut self, timeout: Duration) -> Self {
        self.no_worker_timeout = timeout;
        self
    }

    /// Rebuilds the state after a restart. Tasks that were running keep their
    /// attempt number and get one lease timeout for their worker to
    /// heartbeat again; after that they are retried like any expired lease.
    pub fn restore(lease_timeout: Duration, loaded: Loaded, now: Now) -> Self {
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
        let mut pending: Vec<(i64, TaskId, u32)> = Vec::new();
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
                            // Whoever held it heartbeats again under its new id.
                            worker_id: None,
                            deadline: now.at + lease_timeout,
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
            let id = task.id.clone();
            state.tasks.insert(id.clone(), task);
            state.tallies.count(&id, &state.tasks);
        }
        pending.sort();
        state.queue = pending.into_iter().map(|(_, id, _)| id).collect();
        state
    }

    /// Job ids, oldest first.
    pub fn job_ids(&self) -> &[JobId] {
        &self.job_order
    }

    pub(super) fn mark_job(&mut self, job_id: &JobId, now: Now) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.updated_unix_ms = now.unix_ms;
        }
        self.dirty_jobs.insert(job_id.clone());
        self.touched_jobs.insert(job_id.clone());
    }

    /// The records changed since the last call, for the store, borrowed: a task record
    /// carries its work (files, row groups), too much to copy per batch.
    pub fn take_dirty(&mut self) -> (Vec<&JobRecord>, Vec<&TaskRecord>) {
        let job_ids: Vec<JobId> = self.dirty_jobs.drain().collect();
        let task_ids: Vec<TaskId> = self.dirty_tasks.drain().collect();
        for id in &task_ids {
            self.tallies.count(id, &self.tasks);
        }
        let jobs = job_ids.iter().filter_map(|id| self.jobs.get(id)).collect();
        let tasks = task_ids
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .collect();
        (jobs, tasks)
    }

    /// Jobs changed since the last call, for watchers and the read snapshot.
    pub fn take_touched(&mut self) -> Vec<JobId> {
        self.touched_jobs.drain().collect()
    }

    pub fn job_state(&self, job_id: &JobId) -> Option<JobState> {
        self.jobs.get(job_id).map(|j| j.state)
    }

    #[cfg(test)]
    pub fn task(&self, task_id: &TaskId) -> Option<&TaskRecord> {
        self.tasks.get(task_id)
    }
}

mod checkpoints;
pub mod gang;
mod jobs;
mod lanes;
pub use checkpoints::CheckpointCommit;
pub(crate) use jobs::places_overlap;
pub use jobs::{ReservationId, Reserved};
mod tally;
mod tasks;
#[cfg(test)]
mod tests;
