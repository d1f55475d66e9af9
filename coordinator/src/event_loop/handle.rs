//! The way into the event loop: the commands it takes, and the snapshot that
//! reads are answered from without waiting for it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use atelier_proto::{
    Assignment, Gang, JobId, JobSpec, JobState, JobStatus, LeaseRef, Registration, RendezvousOffer,
    TaskFailure, TaskOutcome, TaskProgressReport, TaskWork, WorkerId,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{CoordinatorError, Result};
use crate::state::{CheckpointCommit, ReservationId, Reserved};

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

#[derive(Debug)]
pub(super) enum Command {
    Reserve {
        spec: JobSpec,
        reply: Reply<Reserved>,
    },
    Commit {
        reservation: ReservationId,
        id: JobId,
        works: Vec<TaskWork>,
        max_attempts: u32,
        reply: Reply<JobStatus>,
    },
    Release {
        reservation: ReservationId,
    },
    Cancel {
        job_id: JobId,
        reply: Reply<JobStatus>,
    },
    Register {
        registration: Registration,
        reply: Reply<WorkerId>,
    },
    Heartbeat {
        worker_id: WorkerId,
        held: Vec<LeaseRef>,
        reply: Reply<Vec<LeaseRef>>,
    },
    Lease {
        worker_id: WorkerId,
        wait: Duration,
        reply: Reply<Option<Assignment>>,
    },
    Progress {
        worker_id: WorkerId,
        lease: LeaseRef,
        report: TaskProgressReport,
        reply: Reply<bool>,
    },
    Complete {
        worker_id: WorkerId,
        lease: LeaseRef,
        outcome: TaskOutcome,
        lease_next: bool,
        reply: Reply<Option<Assignment>>,
    },
    Fail {
        worker_id: WorkerId,
        lease: LeaseRef,
        failure: TaskFailure,
        reply: Reply<()>,
    },
    Finalized {
        job_id: JobId,
        result: std::result::Result<(), String>,
    },
    /// May `_SUCCESS` be written for this job (see `State::seal`)?
    Seal {
        job_id: JobId,
        reply: oneshot::Sender<bool>,
    },
    Rendezvous {
        lease: LeaseRef,
        offer: RendezvousOffer,
        wait: Duration,
        reply: Reply<Option<Gang>>,
    },
    /// May this rank commit a checkpoint step now (see
    /// `State::begin_checkpoint_commit`)? Answers the checkpoint's URL.
    BeginCheckpointCommit {
        worker_id: WorkerId,
        lease: LeaseRef,
        reply: Reply<CheckpointCommit>,
    },
    EndCheckpointCommit {
        commit: CheckpointCommit,
    },
}

/// The jobs as they stood after the last committed batch; reads never wait
/// for the event loop.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(super) jobs: HashMap<JobId, JobStatus>,
    pub(super) order: Vec<JobId>,
}

impl Snapshot {
    pub fn get(&self, job_id: &JobId) -> Option<JobStatus> {
        self.jobs.get(job_id).cloned()
    }

    /// Newest first.
    pub fn list(&self, states: &[JobState], limit: usize) -> Vec<JobStatus> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.jobs.get(id))
            .filter(|job| states.is_empty() || states.contains(&job.state))
            .take(if limit == 0 { usize::MAX } else { limit })
            .cloned()
            .collect()
    }
}

/// Figures the loop refreshes after every batch, for metrics.
#[derive(Debug, Default)]
pub struct LoopGauges {
    pub workers: AtomicU64,
    pub tasks_running: AtomicU64,
    pub tasks_queued: AtomicU64,
    pub gangs_waiting: AtomicU64,
    pub lease_expiries: AtomicU64,
}

/// The way into the event loop, cheap to clone.
#[derive(Debug, Clone)]
pub struct LoopHandle {
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) snapshot: Arc<RwLock<Snapshot>>,
    pub(super) events: broadcast::Sender<JobStatus>,
    pub(super) gauges: Arc<LoopGauges>,
}

impl LoopHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        answer.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }

    /// Holds the place `spec` writes for a submit (see [`State::reserve`]).
    ///
    /// [`State::reserve`]: crate::state::State::reserve
    pub async fn reserve(&self, spec: JobSpec) -> Result<Reserved> {
        self.ask(|reply| Command::Reserve { spec, reply }).await
    }

    /// Adds the reserved job with its planned tasks.
    pub async fn commit(
        &self,
        reservation: ReservationId,
        id: JobId,
        works: Vec<TaskWork>,
        max_attempts: u32,
    ) -> Result<JobStatus> {
        self.ask(|reply| Command::Commit {
            reservation,
            id,
            works,
            max_attempts,
            reply,
        })
        .await
    }

    /// Gives a reservation up; needs no answer, so a dropped submit can
    /// send it from its guard.
    pub fn release(&self, reservation: ReservationId) {
        let _ = self.commands.send(Command::Release { reservation });
    }

    /// Holds the job's checkpoint for one commit by the rank holding
    /// `lease`; refused unless that lease is current.
    pub async fn begin_checkpoint_commit(
        &self,
        worker_id: WorkerId,
        lease: LeaseRef,
    ) -> Result<CheckpointCommit> {
        self.ask(|reply| Command::BeginCheckpointCommit {
            worker_id,
            lease,
            reply,
        })
        .await
    }

    /// The commit is over (written or not); needs no answer.
    pub fn end_checkpoint_commit(&self, commit: CheckpointCommit) {
        let _ = self.commands.send(Command::EndCheckpointCommit { commit });
    }

    pub async fn cancel(&self, job_id: JobId) -> Result<JobStatus> {
        self.ask(|reply| Command::Cancel { job_id, reply }).await
    }

    pub async fn register(&self, registration: Registration) -> Result<WorkerId> {
        self.ask(|reply| Command::Register {
            registration,
            reply,
        })
        .await
    }

    pub async fn heartbeat(
        &self,
        worker_id: WorkerId,
        held: Vec<LeaseRef>,
    ) -> Result<Vec<LeaseRef>> {
        self.ask(|reply| Command::Heartbeat {
            worker_id,
            held,
            reply,
        })
        .await
    }

    pub async fn lease(&self, worker_id: WorkerId, wait: Duration) -> Result<Option<Assignment>> {
        self.ask(|reply| Command::Lease {
            worker_id,
            wait,
            reply,
        })
        .await
    }

    pub async fn progress(
        &self,
        worker_id: WorkerId,
        lease: LeaseRef,
        report: TaskProgressReport,
    ) -> Result<bool> {
        self.ask(|reply| Command::Progress {
            worker_id,
            lease,
            report,
            reply,
        })
        .await
    }

    /// Completes the task; with `lease_next`, also leases the worker its
    /// next task if one is ready now.
    pub async fn complete(
        &self,
        worker_id: WorkerId,
        lease: LeaseRef,
        outcome: TaskOutcome,
        lease_next: bool,
    ) -> Result<Option<Assignment>> {
        self.ask(|reply| Command::Complete {
            worker_id,
            lease,
            outcome,
            lease_next,
            reply,
        })
        .await
    }

    pub async fn fail(
        &self,
        worker_id: WorkerId,
        lease: LeaseRef,
        failure: TaskFailure,
    ) -> Result<()> {
        self.ask(|reply| Command::Fail {
            worker_id,
            lease,
            failure,
            reply,
        })
        .await
    }

    /// Offers this rank to its gang; the gang once every rank has offered.
    pub async fn rendezvous(
        &self,
        lease: LeaseRef,
        offer: RendezvousOffer,
        wait: Duration,
    ) -> Result<Option<Gang>> {
        self.ask(|reply| Command::Rendezvous {
            lease,
            offer,
            wait,
            reply,
        })
        .await
    }

    pub fn job(&self, job_id: &JobId) -> Result<JobStatus> {
        self.read()
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.clone()))
    }

    pub fn jobs(&self, states: &[JobState], limit: usize) -> Vec<JobStatus> {
        self.read().list(states, limit)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        // A panic while holding the lock cannot leave the snapshot half-written
        // (inserts are single calls), so a poisoned lock is still readable.
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Job updates as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<JobStatus> {
        self.events.subscribe()
    }

    pub fn gauges(&self) -> &LoopGauges {
        &self.gauges
    }
}
