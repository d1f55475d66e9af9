//! The one event loop through which every state change passes. It runs on its
//! own OS thread, batches the commands that queued up while it was busy, applies
//! them to [`State`], commits the batch to the store in one transaction, and
//! only then answers: an answer never promises a change that a crash could lose.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use atelier_proto::{JobId, JobStatus};
use tokio::sync::{broadcast, mpsc};

use crate::error::{CoordinatorError, Result};
use crate::ids::new_worker_id;
use crate::manifest::write_manifest;
use crate::state::{Finalize, Now, Reserved, State};
use crate::store::StateStore;

mod handle;
mod waiting;

use handle::{Command, Reply};
pub use handle::{LoopGauges, LoopHandle, Snapshot};
use waiting::{Gathering, Waiter};

/// Commands that queue up while one batch is applied are taken together, up
/// to this many, and committed in one transaction.
const MAX_BATCH: usize = 4096;
const TICK: Duration = Duration::from_millis(100);
/// Progress alone republishes a job at most this often: under a thousand
/// workers batches come every few milliseconds, and each publication clones
/// the job's status into the snapshot and to every watcher. A change of
/// state is published at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// An answer held back until the batch it belongs to is committed.
type Deferred = Box<dyn FnOnce(Option<&str>) + Send>;

fn defer<T: Send + 'static>(reply: Reply<T>, value: Result<T>) -> Deferred {
    Box::new(move |store_error| {
        let value = match store_error {
            // The store error names the store already.
            Some(e) => Err(CoordinatorError::Internal(e.to_string())),
            None => value,
        };
        let _ = reply.send(value);
    })
}

struct EventLoop {
    state: State,
    gatherings: HashMap<JobId, Gathering>,
    store: StateStore,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Weak, so that the loop ends once the last `LoopHandle` is gone.
    myself: mpsc::WeakUnboundedSender<Command>,
    snapshot: Arc<RwLock<Snapshot>>,
    events: broadcast::Sender<JobStatus>,
    waiters: VecDeque<Waiter>,
    max_wait: Duration,
    unpublished: HashSet<JobId>,
    last_publish: Instant,
    gauges: Arc<LoopGauges>,
}

/// Starts the event loop on its own thread. The thread ends, returning its
/// outcome through the join handle, when every `LoopHandle` is dropped or the
/// store fails (the in-memory state can then no longer be trusted).
pub fn start(
    state: State,
    store: StateStore,
    max_wait: Duration,
) -> std::io::Result<(LoopHandle, std::thread::JoinHandle<Result<()>>)> {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(1024);
    let snapshot = Arc::new(RwLock::new(Snapshot::default()));
    let gauges = Arc::new(LoopGauges::default());
    let handle = LoopHandle {
        commands: commands_tx.clone(),
        snapshot: Arc::clone(&snapshot),
        events: events.clone(),
        gauges: Arc::clone(&gauges),
    };
    let mut event_loop = EventLoop {
        state,
        gatherings: HashMap::new(),
        store,
        commands,
        myself: commands_tx.downgrade(),
        snapshot,
        events,
        waiters: VecDeque::new(),
        max_wait,
        unpublished: HashSet::new(),
        last_publish: Instant::now(),
        gauges,
    };
    event_loop.publish_all(Now::read());
    let thread = std::thread::Builder::new()
        .name("coordinator-loop".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CoordinatorError::Internal(format!("event loop runtime: {e}")))?;
            runtime.block_on(event_loop.run())
        })?;
    Ok((handle, thread))
}

impl EventLoop {
    async fn run(mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        let (mut batches, mut commands, mut saving) = (0u64, 0u64, Duration::ZERO);
        loop {
            let first = tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => Some(command),
                    None => break,
                },
                _ = ticker.tick() => None,
            };
            let now = Now::read();
            let mut deferred = Vec::new();
            if let Some(command) = first {
                self.apply(command, now, &mut deferred);
            }
            while deferred.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => self.apply(command, now, &mut deferred),
                    Err(_) => break,
                }
            }
            // Sweeps walk every lease and waiter, so they run on the tick,
            // not on every batch.
            if now.at.duration_since(last_sweep) >= TICK {
                last_sweep = now.at;
                let expired = self.state.expire(now);
                self.gauges
                    .lease_expiries
                    .fetch_add(expired as u64, Ordering::Relaxed);
                self.state.expire_gangs(now);
                self.state.expire_unserved_jobs(now);
                self.expire_waiters(now, &mut deferred);
                self.expire_gatherings(now, &mut deferred);
            }
            self.serve_waiters(now, &mut deferred);
            for job in self.state.take_finalize() {
                tokio::spawn(commit_output(Arc::new(job), self.myself.clone()));
            }
            batches += 1;
            commands += deferred.len() as u64;
            self.refresh_gauges();
            let save_started = Instant::now();
            let (jobs, tasks) = self.state.take_dirty();
            let saved = self.store.save(&jobs, &tasks);
            saving += save_started.elapsed();
            let error = saved.as_ref().err().map(ToString::to_string);
            // Readers see a change before its requester hears of it, so a
            // submit followed by a GetJob always finds the job.
            if saved.is_ok() {
                self.publish_touched(now);
            }
            for answer in deferred {
                answer(error.as_deref());
            }
            saved?;
        }
        tracing::info!(
            batches,
            answers = commands,
            saving_seconds = saving.as_secs_f64(),
            "coordinator event loop stopped"
        );
        Ok(())
    }

    fn apply(&mut self, command: Command, now: Now, deferred: &mut Vec<Deferred>) {
        let state = &mut self.state;
        match command {
            Command::Reserve { spec, reply } => {
                let reserved = state.reserve(&spec);
                if let Ok(Reserved::Existing(job_id)) = &reserved {
                    tracing::info!(job = %job_id, "the same job submitted again; it goes on");
                }
                deferred.push(defer(reply, reserved));
            }
            Command::Commit {
                reservation,
                id,
                works,
                max_attempts,
                reply,
            } => {
                let status = state.commit(reservation, id, works, max_attempts, now);
                if let Ok(status) = &status {
                    tracing::info!(job = %status.id, description = %status.description, "job submitted");
                }
                deferred.push(defer(reply, status));
            }
            Command::Release { reservation } => state.release(reservation),
            Command::BeginCheckpointCommit {
                worker_id,
                lease,
                reply,
            } => deferred.push(defer(
                reply,
                state.begin_checkpoint_commit(&worker_id, &lease, now),
            )),
            Command::EndCheckpointCommit { commit } => state.end_checkpoint_commit(&commit),
            Command::Cancel { job_id, reply } => {
                let status = state.cancel(&job_id, now);
                if status.is_ok() {
                    tracing::info!(job = %job_id, "job cancelled");
                }
                deferred.push(defer(reply, status));
            }
            Command::Register {
                registration,
                reply,
            } => {
                let hostname = registration.hostname.clone();
                let id = state.register(new_worker_id(&hostname), registration, now);
                if let Ok(id) = &id {
                    tracing::info!(worker = %id, %hostname, "worker registered");
                }
                deferred.push(defer(reply, id));
            }
            Command::Heartbeat {
                worker_id,
                held,
                reply,
            } => deferred.push(defer(reply, state.heartbeat(&worker_id, &held, now))),
            Command::Lease {
                worker_id,
                wait,
                reply,
            } => match state.lease(&worker_id, now) {
                Ok(None) if !wait.is_zero() => self.waiters.push_back(Waiter {
                    worker_id,
                    deadline: now.at + wait.min(self.max_wait),
                    reply,
                }),
                other => deferred.push(defer(reply, other)),
            },
            Command::Progress {
                worker_id,
                lease,
                report,
                reply,
            } => deferred.push(defer(
                reply,
                state.progress(&worker_id, &lease, report, now),
            )),
            Command::Complete {
                worker_id,
                lease,
                outcome,
                lease_next,
                reply,
            } => {
                let completed = state.complete(&worker_id, &lease, outcome, now);
                // A lane held for a waiting gang gets no next shard, and
                // goes back to polling: gangs start on polling lanes.
                let next = match completed {
                    Ok(()) if lease_next => state.lease(&worker_id, now),
                    Ok(()) => Ok(None),
                    Err(e) => Err(e),
                };
                deferred.push(defer(reply, next));
            }
            Command::Fail {
                worker_id,
                lease,
                failure,
                reply,
            } => {
                tracing::warn!(task = %lease.task_id, attempt = lease.attempt, reason = %failure.reason, "worker reported a failed task");
                deferred.push(defer(reply, state.fail(&worker_id, &lease, failure, now)));
            }
            Command::Rendezvous {
                lease,
                offer,
                wait,
                reply,
            } => self.rendezvous(
                lease,
                offer,
                now.at + wait.min(self.max_wait),
                reply,
                deferred,
            ),
            Command::Seal { job_id, reply } => {
                let _ = reply.send(state.seal(&job_id));
            }
            Command::Finalized { job_id, result } => {
                if result.is_ok() {
                    tracing::info!(job = %job_id, "job succeeded");
                }
                state.finalized(&job_id, result, now);
            }
        }
    }

    fn refresh_gauges(&self) {
        let g = &self.gauges;
        let counts = self.state.counts();
        g.workers.store(counts.workers as u64, Ordering::Relaxed);
        g.tasks_running
            .store(counts.running as u64, Ordering::Relaxed);
        g.tasks_queued
            .store(counts.queued as u64, Ordering::Relaxed);
        g.gangs_waiting
            .store(counts.gangs as u64, Ordering::Relaxed);
    }

    fn publish_touched(&mut self, now: Now) {
        self.unpublished.extend(self.state.take_touched());
        if self.unpublished.is_empty() {
            return;
        }
        let state_changed = {
            let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            self.unpublished
                .iter()
                .any(|id| snapshot.jobs.get(id).map(|j| j.state) != self.state.job_state(id))
        };
        if !state_changed && self.last_publish.elapsed() < PUBLISH_EVERY {
            return;
        }
        self.last_publish = Instant::now();
        let touched = std::mem::take(&mut self.unpublished);
        let statuses: Vec<JobStatus> = touched
            .iter()
            .filter_map(|id| self.state.status(id, now).ok())
            .collect();
        {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            for status in &statuses {
                if snapshot
                    .jobs
                    .insert(status.id.clone(), status.clone())
                    .is_none()
                {
                    snapshot.order.push(status.id.clone());
                }
            }
        }
        for status in statuses {
            let _ = self.events.send(status);
        }
    }

    fn publish_all(&mut self, now: Now) {
        let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        for id in self.state.job_ids().to_vec() {
            if let Ok(status) = self.state.status(&id, now) {
                snapshot.jobs.insert(id.clone(), status);
                snapshot.order.push(id);
            }
        }
    }
}

/// How long a job's commit waits out a store outage before the job fails.
const COMMIT_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// Commits a finished tag job's output and tells the loop how it went. A
/// store outage does not fail the job (its parts are all staged): the
/// commit is tried again, backing off, for [`COMMIT_PATIENCE`]. It holds
/// the loop only weakly: a coordinator shutting down does not wait for it
/// (the next start commits the job again).
async fn commit_output(job: Arc<Finalize>, event_loop: mpsc::WeakUnboundedSender<Command>) {
    let job_id = job.job.id.clone();
    let started = Instant::now();
    let mut pause = Duration::from_secs(1);
    let result = loop {
        let seal = {
            let (event_loop, job_id) = (event_loop.clone(), job_id.clone());
            async move {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let asked = event_loop
                    .upgrade()
                    .is_some_and(|l| l.send(Command::Seal { job_id, reply }).is_ok());
                asked && answer.await.unwrap_or(false)
            }
        };
        match write_manifest(Arc::clone(&job), seal).await {
            Err(e) if e.is_store_outage() && started.elapsed() < COMMIT_PATIENCE => {
                tracing::warn!(job = %job_id, error = %e, retry_in = ?pause, "output not committed yet: the store failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            result => break result,
        }
    };
    if let Err(e) = &result {
        tracing::error!(job = %job_id, error = %e, "manifest not written");
    }
    if let Some(event_loop) = event_loop.upgrade() {
        let _ = event_loop.send(Command::Finalized {
            job_id,
            result: result.map_err(|e| e.to_string()),
        });
    }
}
