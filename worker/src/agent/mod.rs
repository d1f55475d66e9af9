//! `atelier worker`: one lane per device (`--device cuda:0,cuda:1`). Each
//! lane registers with the coordinator, heartbeats on its own task (also
//! while busy), leases tasks one at a time, runs them on its own compute
//! thread, streams progress, and reports each task done only after its
//! output is written. On shutdown every lane stops leasing, finishes the
//! task in hand, reports it, and returns.

mod address;
mod compute;
mod gang;
mod session;
mod telemetry;
mod train_task;
mod watchdog;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use atelier_proto::{staged_part, Assignment, TaskFailure, TaskProgressReport, TaskWork};
use atelier_proto::{worker_client, Connect};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use crate::error::{Result, WorkerError};
use compute::{ComputeThread, Work};
use session::{describe_machine, is_fatal, Session};
use watchdog::Pulse;

pub use telemetry::{serve_health, WorkerMetrics};
pub use train_task::train_setup;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The coordinator's address, `http://host:port` or `host:port`.
    pub coordinator: String,
    /// The bearer token and the TLS roots to trust.
    pub connect: Connect,
    /// `cpu`, `cuda:N`, a comma list of them (one lane each), or `cuda:all`.
    pub device: String,
    /// Decode threads, shared out among the lanes.
    pub threads: usize,
    /// How long one lease request waits for work.
    pub poll_wait: Duration,
    /// How often progress goes to the coordinator.
    pub progress_every: Duration,
    /// A task whose compute thread shows no sign of life for this long (no
    /// batch, step or poll) is given up and the worker stops.
    pub stall_timeout: Duration,
    /// The host other ranks of a train gang reach this worker at (default:
    /// the address of the interface that routes to the coordinator).
    pub advertise_host: Option<String>,
    /// Counts tasks, items and all-reduce time for `/metrics`.
    pub metrics: Option<Arc<WorkerMetrics>>,
}

impl AgentOptions {
    pub fn new(coordinator: &str) -> Self {
        Self {
            coordinator: coordinator.to_string(),
            connect: Connect::default(),
            device: "cpu".into(),
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            poll_wait: Duration::from_secs(10),
            progress_every: Duration::from_millis(500),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            advertise_host: None,
            metrics: None,
        }
    }
}

/// Long enough for the slowest legitimate gap between two signs of life
/// (loading a model from a store, one validation batch on a slow CPU).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentSummary {
    pub tasks_done: usize,
    pub tasks_failed: usize,
    pub tasks_stopped: usize,
}

impl AgentSummary {
    fn add(&mut self, other: Self) {
        self.tasks_done += other.tasks_done;
        self.tasks_failed += other.tasks_failed;
        self.tasks_stopped += other.tasks_stopped;
    }
}

/// Runs the worker's lanes until `shutdown` resolves (then each drains) or a
/// lane meets a fatal error (wrong token, wrong protocol version), which
/// stops them all.
pub async fn run_agent(
    options: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentSummary> {
    let devices = crate::device::parse_devices(&options.device)?;
    let threads = (options.threads / devices.len()).max(1);
    let advertise_host = options
        .advertise_host
        .clone()
        .unwrap_or_else(|| address::advertise_host(&options.coordinator));
    let process_id = format!("{:016x}", rand::random::<u64>());
    let (stop, stopped) = watch::channel(false);
    let mut lanes = tokio::task::JoinSet::new();
    for (index, device) in devices.into_iter().enumerate() {
        let span = tracing::info_span!("lane", lane = index, device = %device);
        let lane = Lane {
            options: AgentOptions {
                device,
                threads,
                advertise_host: Some(advertise_host.clone()),
                ..options.clone()
            },
            process_id: process_id.clone(),
            index: index as u32,
        };
        lanes.spawn(run_lane(lane, stopped.clone()).instrument(span));
    }
    tokio::pin!(shutdown);
    let mut summary = AgentSummary::default();
    let mut failure = None;
    loop {
        let stopping = *stop.borrow();
        tokio::select! {
            () = &mut shutdown, if !stopping => {
                stop.send_replace(true);
            }
            joined = lanes.join_next() => match joined {
                None => break,
                Some(Ok(Ok(lane))) => summary.add(lane),
                Some(Ok(Err(e))) => {
                    stop.send_replace(true);
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    stop.send_replace(true);
                    failure.get_or_insert(WorkerError::Internal(format!("a worker lane stopped: {e}")));
                }
            }
        }
    }
    tracing::info!(?summary, "worker stopped");
    failure.map_or(Ok(summary), Err)
}

/// One device of the worker, registered as a worker of its own.
struct Lane {
    options: AgentOptions,
    process_id: String,
    index: u32,
}

async fn run_lane(lane: Lane, stopped: watch::Receiver<bool>) -> Result<AgentSummary> {
    let options = &lane.options;
    let shutdown = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let device = crate::device::parse_device(&options.device)?;
    let compute = ComputeThread::start(
        device,
        crate::device::device_name(device),
        options.threads.max(1),
        tokio::runtime::Handle::current(),
        options.advertise_host.clone().unwrap_or_default(),
    )
    .map_err(|e| WorkerError::Internal(format!("starting the compute thread: {e}")))?;
    let client = worker_client(&options.coordinator, &options.connect)?;
    let registration = describe_machine(&options.device, &lane.process_id, lane.index);
    let session = Arc::new(Session::new(client, registration));
    tokio::pin!(shutdown);

    let mut backoff = Backoff::default();
    loop {
        let registered = tokio::select! {
            _ = &mut shutdown => return Ok(AgentSummary::default()),
            r = session.register(None) => r.map(drop),
        };
        match registered {
            Ok(()) => break,
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(coordinator = %options.coordinator, error = %e, "cannot register yet; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(AgentSummary::default()),
                    _ = backoff.wait() => {}
                }
            }
        }
    }
    let heartbeats = tokio::spawn(heartbeat_loop(Arc::clone(&session)));

    let mut summary = AgentSummary::default();
    // The task leased together with the last completion, if any.
    let mut next = None;
    let outcome = loop {
        let leased = match next.take() {
            Some(assignment) => Ok(Some(assignment)),
            None => tokio::select! {
                _ = &mut shutdown => break Ok(()),
                leased = session.lease(options.poll_wait) => leased,
            },
        };
        match leased {
            Ok(Some(assignment)) => {
                backoff.reset();
                // Every log line about the task, here and on the compute
                // thread, names its job and task (shard or rank).
                let span = tracing::info_span!(
                    "task",
                    job = %assignment.job_id,
                    task = %assignment.lease.task_id
                );
                let ran = run_task(
                    &session,
                    &compute,
                    assignment,
                    options,
                    &stopped,
                    &mut summary,
                )
                .instrument(span)
                .await;
                match ran {
                    Ok(leased) => next = leased,
                    // The compute thread is stuck: this lane can run nothing more.
                    Err(e) => break Err(e),
                }
            }
            Ok(None) => backoff.reset(),
            Err(e) if is_fatal(&e) => break Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease work; retrying");
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = backoff.wait() => {}
                }
            }
        }
    };
    heartbeats.abort();
    tracing::info!(?summary, device = %options.device, "lane stopped");
    outcome.map(|()| summary)
}

async fn heartbeat_loop(session: Arc<Session>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(session.heartbeat_interval()).await;
        match session.heartbeat().await {
            Ok(()) => {
                if failing {
                    tracing::info!("heartbeats reach the coordinator again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                failing = true;
            }
        }
    }
}

/// Runs one task to its report; returns the next task when the completion
/// leased one (never once the worker is `stopped`: it drains), or
/// [`WorkerError::Stalled`] when the watchdog gave the task up.
async fn run_task(
    session: &Arc<Session>,
    compute: &ComputeThread,
    assignment: Assignment,
    options: &AgentOptions,
    stopped: &watch::Receiver<bool>,
    summary: &mut AgentSummary,
) -> Result<Option<Assignment>> {
    let lease = assignment.lease.clone();
    tracing::info!(task = %lease.task_id, attempt = lease.attempt, "task leased");
    if let Some(metrics) = &options.metrics {
        metrics.started();
    }
    let cancelled = session.hold(&lease);
    let pulse = Arc::new(Pulse::new());
    let (progress, mut progress_rx) = watch::channel(TaskProgressReport::default());
    let mut last_sent = TaskProgressReport::default();
    let (done, mut done_rx) = oneshot::channel();
    let rendezvous = {
        let (session, lease) = (Arc::clone(session), lease.clone());
        let handle = tokio::runtime::Handle::current();
        Box::new(move |offer| handle.block_on(session.rendezvous(&lease, offer, RENDEZVOUS_WAIT)))
    };
    let commit_checkpoint = {
        let (session, lease) = (Arc::clone(session), lease.clone());
        let handle = tokio::runtime::Handle::current();
        Box::new(move |manifest| handle.block_on(session.commit_checkpoint(&lease, manifest)))
    };
    let writer = format!("{}-a{}", assignment.job_id, lease.attempt);
    let mut task = assignment.work;
    if let TaskWork::Tag(shard) = &mut task {
        // The attempt writes an object of its own, which the coordinator
        // commits as the part only if this lease is the one that completes.
        shard.output = staged_part(&shard.output, &assignment.job_id, lease.attempt);
    }
    let submitted = compute.submit(Work {
        span: tracing::Span::current(),
        task,
        cancelled: Arc::clone(&cancelled),
        pulse: Arc::clone(&pulse),
        progress,
        done,
        rendezvous,
        commit_checkpoint,
        writer,
    });
    let result = match submitted {
        Err(e) => Err(e),
        Ok(()) => {
            let mut ticker = tokio::time::interval(options.progress_every);
            loop {
                tokio::select! {
                    result = &mut done_rx => {
                        break result.unwrap_or_else(|_| Err(WorkerError::Internal("the compute thread stopped".into())));
                    }
                    _ = ticker.tick() => {
                        let silent = pulse.silent_for();
                        if silent >= options.stall_timeout {
                            // No cancel reaches a thread stuck in a call, so
                            // nothing is waited for: the lease is given up.
                            cancelled.store(true, Ordering::Relaxed);
                            break Err(WorkerError::Stalled { silent });
                        }
                        if !progress_rx.has_changed().unwrap_or(false) {
                            continue;
                        }
                        let report = progress_rx.borrow_and_update().clone();
                        last_sent = report.clone();
                        match session.progress(&lease, report).await {
                            Ok(true) => cancelled.store(true, Ordering::Relaxed),
                            Ok(false) => {}
                            Err(e) => tracing::debug!(error = %e, "progress not delivered"),
                        }
                    }
                }
            }
        }
    };
    // The last figures (a short task may end before its first report), so
    // the job shows each rank's final images/s and all-reduce time.
    // (The compute thread has dropped its sender by now, so compare values.)
    let latest = progress_rx.borrow().clone();
    if result.is_ok() && latest != last_sent {
        if let Err(e) = session.progress(&lease, latest.clone()).await {
            tracing::debug!(error = %e, "last progress not delivered");
        }
    }
    if let Some(metrics) = &options.metrics {
        let failed = matches!(&result, Err(e) if !matches!(e, WorkerError::Cancelled));
        metrics.finished(result.as_ref().ok(), failed, &latest);
    }
    let mut next = None;
    let mut stalled = None;
    match result {
        Ok(outcome) => {
            let rows = outcome.rows_written;
            // Only the first try asks for the next task: an answer lost on
            // the way would leave that lease to expire.
            let lease_next = !*stopped.borrow();
            let reported = report_with_retries(|attempt| {
                session.complete(&lease, outcome.clone(), lease_next && attempt == 0)
            })
            .await;
            match reported {
                Ok(leased) => {
                    tracing::info!(task = %lease.task_id, rows, "task complete");
                    summary.tasks_done += 1;
                    next = leased;
                }
                Err(e) => {
                    tracing::warn!(task = %lease.task_id, error = %e, "completion refused");
                    summary.tasks_stopped += 1;
                }
            }
        }
        Err(WorkerError::Cancelled) => {
            tracing::info!(task = %lease.task_id, "task stopped: its job was cancelled or its lease lost");
            summary.tasks_stopped += 1;
        }
        Err(error) => {
            tracing::warn!(task = %lease.task_id, error = %error, "task failed");
            let failure = TaskFailure {
                reason: error.to_string(),
                kind: error.failure_kind(),
            };
            if let Err(e) = report_with_retries(|_| session.fail(&lease, failure.clone())).await {
                tracing::warn!(task = %lease.task_id, error = %e, "failure report refused");
            }
            summary.tasks_failed += 1;
            if matches!(error, WorkerError::Stalled { .. }) {
                stalled = Some(error);
            }
        }
    }
    session.release(&lease);
    stalled.map_or(Ok(next), Err)
}

/// One rendezvous call waits this long for the rest of the gang.
const RENDEZVOUS_WAIT: Duration = Duration::from_secs(5);

/// Retries a report while the coordinator is unreachable (it may be
/// restarting); stops at once on an answer that no retry changes.
async fn report_with_retries<F, Fut, T>(report: F) -> Result<T>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::default();
    let mut attempts = 0;
    loop {
        match report(attempts).await {
            Ok(answer) => return Ok(answer),
            Err(e) if is_fatal(&e) || !e.is_retryable() || attempts >= 60 => return Err(e),
            Err(e) => {
                attempts += 1;
                tracing::debug!(error = %e, "report not delivered; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Exponential back-off from 100 ms to 2 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    async fn wait(&mut self) {
        let millis = (100u64 << self.failures.min(5)).min(2000);
        self.failures += 1;
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}
