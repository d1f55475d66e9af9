//! Train jobs run as gangs: all `world_size` ranks start together on
//! distinct workers or none does, and when one rank fails the whole gang
//! stops and starts again from the last checkpoint, up to `max_restarts`
//! failures (and the coordinator's `max_lost_workers` silent workers).

use std::time::Duration;

use atelier_proto::{
    Assignment, Gang, GangSecret, JobId, JobSpec, JobState, LeaseRef, RankStatus, RendezvousOffer,
    Restart, RestartKind, TaskWork, TrainProgress, WorkerId,
};

use super::tasks::Setback;
use super::{Now, State};
use crate::error::{CoordinatorError, Result};
use crate::records::{JobRecord, TaskState};

/// Where a rank stands in its gang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangMember {
    pub job_id: JobId,
    pub rank: usize,
    pub world_size: usize,
}

impl State {
    pub(super) fn wait_for_gang(&mut self, job_id: &JobId, now: Now) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.gang_waiting_since_unix_ms = Some(now.unix_ms);
        }
        if !self.gangs.iter().any(|g| g == job_id) {
            self.gangs.push_back(job_id.clone());
        }
    }

    pub fn has_waiting_gangs(&self) -> bool {
        !self.gangs.is_empty()
    }

    /// Starts the first waiting gang that fits on `idle` (distinct worker
    /// lanes now asking for work, in the order they asked), consecutive
    /// ranks on the lanes of one worker process. Returns who got what.
    pub fn place_gang(
        &mut self,
        idle: &[WorkerId],
        now: Now,
    ) -> Option<Vec<(WorkerId, Assignment)>> {
        let mut chosen = None;
        self.gangs.retain(|job_id| {
            self.jobs
                .get(job_id)
                .is_some_and(|j| !j.state.is_terminal())
        });
        let idle: Vec<WorkerId> = idle
            .iter()
            .filter(|lane| !self.is_quarantined(lane, now))
            .cloned()
            .collect();
        let processes = self.idle_by_process(&idle);
        for (position, job_id) in self.gangs.iter().enumerate() {
            let (ranks, per_process) = self.gang_shape(job_id);
            if let Some(lanes) = pick_lanes(&processes, ranks, per_process) {
                chosen = Some((position, lanes));
                break;
            }
        }
        let (position, lanes) = chosen?;
        let job_id = self.gangs.remove(position)?;
        let tasks = self.job_tasks.get(&job_id)?.clone();
        let mut placed = Vec::with_capacity(tasks.len());
        for (task_id, worker_id) in tasks.iter().zip(&lanes) {
            if let Some(assignment) = self.hand_out(task_id, worker_id, now) {
                placed.push((worker_id.clone(), assignment));
            }
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.gang_waiting_since_unix_ms = None;
        }
        tracing::info!(job = %job_id, ranks = placed.len(), "gang started");
        Some(placed)
    }

    /// The ranks of `job_id`'s gang, and how many go on each worker process
    /// when that is fixed.
    fn gang_shape(&self, job_id: &JobId) -> (usize, Option<usize>) {
        let ranks = self.job_tasks.get(job_id).map_or(0, Vec::len);
        let per_process = match self.jobs.get(job_id).map(|j| &j.spec) {
            Some(JobSpec::Train(spec)) => spec.gang.ranks_per_worker.map(|n| n as usize),
            _ => None,
        };
        (ranks, per_process)
    }

    /// Whether `lane` is held for a waiting gang and so takes no shard.
    ///
    /// Lanes free up one by one as shards finish, and a free lane that took
    /// the next shard would leave a gang waiting until the tag queue is
    /// empty. So the first waiting gang that the live lanes running no
    /// other gang's rank could hold is given lanes as they come free: those
    /// its placement would pick. A gang larger than the cluster holds none,
    /// and lanes it would not pick go on taking shards.
    pub(super) fn reserved_for_gang(&self, lane: &WorkerId, now: Now) -> bool {
        if self.gangs.is_empty() {
            return false;
        }
        let in_gangs: Vec<&WorkerId> = self
            .leases
            .iter()
            .filter(|(task_id, _)| {
                self.tasks
                    .get(*task_id)
                    .is_some_and(|t| matches!(t.work, TaskWork::Train { .. }))
            })
            .filter_map(|(_, lease)| lease.worker_id.as_ref())
            .collect();
        let mut candidates: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(id, worker)| {
                now.at.saturating_duration_since(worker.last_seen) < self.lease_timeout
                    && !in_gangs.contains(id)
                    && !self.is_quarantined(id, now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        // One answer for every caller: the map's order is not one.
        candidates.sort();
        let processes = self.idle_by_process(&candidates);
        let waiting = self.gangs.iter().filter(|job_id| {
            self.jobs
                .get(*job_id)
                .is_some_and(|j| !j.state.is_terminal())
        });
        for job_id in waiting {
            let (ranks, per_process) = self.gang_shape(job_id);
            if let Some(lanes) = pick_lanes(&processes, ranks, per_process) {
                return lanes.contains(lane);
            }
        }
        false
    }

    /// The idle lanes grouped by worker process, processes in the order
    /// their first lane asked.
    fn idle_by_process(&self, idle: &[WorkerId]) -> Vec<Vec<WorkerId>> {
        let mut processes: Vec<(&str, Vec<WorkerId>)> = Vec::new();
        for lane in idle {
            let process = self.workers.get(lane).map_or(lane.as_str(), |w| &w.process);
            match processes.iter_mut().find(|(p, _)| *p == process) {
                Some((_, lanes)) => lanes.push(lane.clone()),
                None => processes.push((process, vec![lane.clone()])),
            }
        }
        processes.into_iter().map(|(_, lanes)| lanes).collect()
    }

    /// Stops every rank of the job and queues the gang again, or fails the
    /// job when the cause cannot be retried or the restarts are used up.
    /// Starts the gang of `job_id` again after rank `rank`'s `setback`, or
    /// fails the job once the setback's budget is spent: failures count
    /// against the job's `max_restarts`, lost workers against the
    /// coordinator's `max_lost_workers`.
    pub(super) fn restart_gang(&mut self, job_id: &JobId, rank: u32, setback: Setback, now: Now) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        if job.state.is_terminal() {
            return;
        }
        let cause = format!("rank {rank}: {}", setback.reason());
        let (kind, budget, what) = match &setback {
            Setback::Failed {
                retryable: false, ..
            } => {
                self.end_job(job_id, JobState::Failed, Some(cause), now);
                return;
            }
            Setback::Failed { .. } => {
                let max_restarts = match &job.spec {
                    JobSpec::Train(spec) => spec.gang.max_restarts,
                    _ => 0,
                };
                (RestartKind::Failure, max_restarts, "restart")
            }
            Setback::LostWorker { .. } => (
                RestartKind::LostWorker,
                self.max_lost_workers,
                "lost worker",
            ),
        };
        let restarts = job.restarts.iter().filter(|r| r.kind == kind).count();
        if restarts >= budget as usize {
            let message = format!(
                "gave up after {restarts} {what}{} (max {budget}); last cause: {cause}",
                if restarts == 1 { "" } else { "s" }
            );
            self.end_job(job_id, JobState::Failed, Some(message), now);
            return;
        }
        let at_step = self.job_step(job_id);
        tracing::warn!(job = %job_id, %cause, at_step, ?kind, count = restarts + 1, "restarting the gang");
        for task_id in self.job_tasks.get(job_id).cloned().unwrap_or_default() {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            if matches!(task.state, TaskState::Running | TaskState::Pending) {
                if task.state == TaskState::Running {
                    task.retries += 1;
                }
                task.state = TaskState::Pending;
                task.items_done = 0;
                task.worker_id = None;
                self.leases.remove(&task_id);
                self.dirty_tasks.insert(task_id);
            }
        }
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.restarts.push(Restart {
                at_step,
                cause,
                unix_ms: now.unix_ms,
                kind,
            });
        }
        self.wait_for_gang(job_id, now);
        self.mark_job(job_id, now);
    }

    fn job_step(&self, job_id: &JobId) -> i64 {
        self.job_tasks
            .get(job_id)
            .into_iter()
            .flatten()
            .filter_map(|t| self.tasks.get(t)?.train.as_ref().map(|p| p.step))
            .max()
            .unwrap_or(0)
    }

    /// Fails gangs that waited longer than their timeout for enough workers.
    pub fn expire_gangs(&mut self, now: Now) {
        let mut expired = Vec::new();
        for job_id in &self.gangs {
            let Some(job) = self.jobs.get(job_id) else {
                continue;
            };
            let (world, per_process, timeout) = match &job.spec {
                JobSpec::Train(spec) => (
                    spec.gang.world_size,
                    spec.gang.ranks_per_worker,
                    Duration::from_secs(u64::from(spec.gang.gang_timeout_s)),
                ),
                _ => continue,
            };
            let waited = job
                .gang_waiting_since_unix_ms
                .map_or(0, |since| (now.unix_ms - since).max(0) as u64);
            if waited >= timeout.as_millis() as u64 {
                expired.push((job_id.clone(), world, per_process, timeout));
            }
        }
        for (job_id, world, per_process, timeout) in expired {
            let placement = match per_process {
                None => String::new(),
                Some(n) => format!(", {n} on each worker process"),
            };
            let message = format!(
                "the gang needs {world} ranks at once{placement}, but not enough worker lanes were free within {timeout:?} ({} registered)",
                self.workers.len()
            );
            tracing::warn!(job = %job_id, %message, "gang did not start");
            self.end_job(&job_id, JobState::Failed, Some(message), now);
        }
    }

    /// The rank a current lease holds in its gang.
    pub fn gang_member(&self, lease: &LeaseRef) -> Result<GangMember> {
        let task = self.check_lease(lease)?;
        match &task.work {
            TaskWork::Train { spec, .. } => Ok(GangMember {
                job_id: task.job_id.clone(),
                rank: task.index as usize,
                world_size: spec.gang.world_size as usize,
            }),
            _ => Err(CoordinatorError::InvalidArgument(format!(
                "task {} is not a train rank",
                lease.task_id
            ))),
        }
    }

    pub fn is_current(&self, lease: &LeaseRef) -> bool {
        self.check_lease(lease).is_ok()
    }

    pub(super) fn train_progress(&self, job: &JobRecord) -> TrainProgress {
        let tasks: Vec<_> = self
            .job_tasks
            .get(&job.id)
            .into_iter()
            .flatten()
            .filter_map(|t| self.tasks.get(t))
            .collect();
        let lead = tasks
            .iter()
            .find(|t| t.index == 0)
            .and_then(|t| t.train.clone())
            .unwrap_or_default();
        let ranks = tasks
            .iter()
            .map(|task| {
                let own = task
                    .train
                    .as_ref()
                    .and_then(|p| p.ranks.first())
                    .cloned()
                    .unwrap_or_default();
                RankStatus {
                    rank: task.index,
                    worker_id: task.worker_id.clone(),
                    ..own
                }
            })
            .collect();
        TrainProgress {
            ranks,
            restarts: job.restarts.clone(),
            ..lead
        }
    }
}

/// Lanes for `ranks` ranks, consecutive ranks on the same process: exactly
/// `per_process` on every process used, or without it as many as each has,
/// fullest processes first (fewest processes, least traffic between hosts).
fn pick_lanes(
    processes: &[Vec<WorkerId>],
    ranks: usize,
    per_process: Option<usize>,
) -> Option<Vec<WorkerId>> {
    if ranks == 0 {
        return None;
    }
    let mut order: Vec<&Vec<WorkerId>> = processes.iter().collect();
    order.sort_by_key(|lanes| std::cmp::Reverse(lanes.len()));
    let mut chosen = Vec::with_capacity(ranks);
    for lanes in order {
        let take = match per_process {
            None => lanes.len(),
            Some(n) if lanes.len() >= n => n,
            Some(_) => continue,
        };
        let take = take.min(ranks - chosen.len());
        chosen.extend(lanes.iter().take(take).cloned());
        if chosen.len() == ranks {
            return Some(chosen);
        }
    }
    None
}

/// The gang once every rank's current lease has offered; `offers[r]` is
/// rank r's lease and offer; `ring_secret` is freshly drawn by the caller.
pub fn gather(offers: &[(LeaseRef, RendezvousOffer)], ring_secret: GangSecret) -> Gang {
    // FNV-1a over the leases: a new attempt of any rank is a new session.
    let mut session: u64 = 0xcbf2_9ce4_8422_2325;
    for (lease, _) in offers {
        for byte in format!("{}:{};", lease.task_id, lease.attempt).bytes() {
            session ^= u64::from(byte);
            session = session.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Gang {
        peer_addresses: offers.iter().map(|(_, o)| o.address.clone()).collect(),
        nccl_unique_id: offers
            .first()
            .map(|(_, o)| o.nccl_unique_id.clone())
            .unwrap_or_default(),
        session,
        ring_secret,
    }
}
