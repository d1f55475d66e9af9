//! The worker's standing with the coordinator: its id, registration and
//! re-registration after a coordinator restart, and the RPCs it makes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atelier_proto::{WorkerClient, WorkerId};

use atelier_proto::v1;
use atelier_proto::v1::work_request::Call;
use atelier_proto::v1::work_response::Answer;
use atelier_proto::PROTOCOL_VERSION;
use atelier_proto::{
    Assignment, DeviceInfo, Gang, LeaseRef, Registration, RendezvousOffer, TaskFailure,
    TaskOutcome, TaskProgressReport,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::error::{Result, WorkerError};

/// Longest wait for an answer to a unary call; a hung coordinator turns into
/// an error rather than a stuck worker.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Session {
    client: WorkerClient,
    registration: Registration,
    /// `None` until the first registration.
    worker_id: Mutex<Option<WorkerId>>,
    heartbeat_interval: Mutex<Duration>,
    registering: tokio::sync::Mutex<()>,
    /// The leases this worker holds, with the flag that stops each task.
    held: Mutex<HashMap<LeaseRef, Arc<AtomicBool>>>,
    /// The lane's `Work` stream, opened on first use. A call takes it out
    /// and puts it back only once answered, so a call abandoned half-way
    /// (at shutdown) drops the stream instead of leaving its answer to be
    /// read as the next call's.
    work: tokio::sync::Mutex<Option<WorkStream>>,
}

#[derive(Debug)]
struct WorkStream {
    calls: mpsc::Sender<v1::WorkRequest>,
    answers: Streaming<v1::WorkResponse>,
}

async fn call_with_timeout<T>(
    what: &str,
    future: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(WorkerError::Coordinator(status)),
        Err(_) => Err(WorkerError::Coordinator(Status::deadline_exceeded(
            format!("{what}: no answer within {CALL_TIMEOUT:?}"),
        ))),
    }
}

/// Errors that no retry can fix: the worker must stop and say why.
pub fn is_fatal(error: &WorkerError) -> bool {
    matches!(error, WorkerError::Coordinator(status) if matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition | Code::InvalidArgument
    ))
}

fn is_unknown_worker(error: &WorkerError) -> bool {
    matches!(error, WorkerError::Coordinator(status) if status.code() == Code::NotFound)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What lane `lane` (on `device`) of worker process `process_id` registers as.
pub fn describe_machine(device: &str, process_id: &str, lane: u32) -> Registration {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    Registration {
        protocol_version: PROTOCOL_VERSION,
        hostname,
        devices: vec![DeviceInfo {
            name: device.to_string(),
            memory_bytes: 0,
        }],
        memory_bytes,
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        atelier_version: env!("CARGO_PKG_VERSION").to_string(),
        process_id: process_id.to_string(),
        lane,
    }
}

impl Session {
    pub fn new(client: WorkerClient, registration: Registration) -> Self {
        Self {
            client,
            registration,
            worker_id: Mutex::new(None),
            heartbeat_interval: Mutex::new(Duration::from_secs(2)),
            registering: tokio::sync::Mutex::new(()),
            held: Mutex::new(HashMap::new()),
            work: tokio::sync::Mutex::new(None),
        }
    }

    /// One call on the `Work` stream, answered within `wait` plus the usual
    /// allowance; a refused call comes back as the status a unary call
    /// would have ended with.
    async fn work(&self, what: &str, call: Call, wait: Duration) -> Result<Answer> {
        let unavailable = |why: String| WorkerError::Coordinator(Status::unavailable(why));
        let mut slot = self.work.lock().await;
        let mut stream = match slot.take() {
            Some(stream) => stream,
            None => {
                let (calls, queued) = mpsc::channel(1);
                let answers = call_with_timeout(
                    "opening the work stream",
                    self.client.clone().work(ReceiverStream::new(queued)),
                )
                .await?;
                WorkStream { calls, answers }
            }
        };
        let request = v1::WorkRequest { call: Some(call) };
        let limit = wait + CALL_TIMEOUT;
        // The send is under the limit too: a stalled connection stops
        // taking requests as well as answering them.
        let exchange = async {
            if stream.calls.send(request).await.is_err() {
                return Err(unavailable(format!("{what}: the work stream is closed")));
            }
            match stream.answers.message().await {
                Ok(Some(response)) => Ok(response),
                Ok(None) => Err(unavailable(format!(
                    "{what}: the coordinator closed the work stream"
                ))),
                Err(status) => Err(WorkerError::Coordinator(status)),
            }
        };
        let response = match tokio::time::timeout(limit, exchange).await {
            Ok(answered) => answered?,
            Err(_) => {
                return Err(WorkerError::Coordinator(Status::deadline_exceeded(
                    format!("{what}: no answer within {limit:?}"),
                )))
            }
        };
        *slot = Some(stream);
        match response.answer {
            Some(Answer::Error(error)) => {
                Err(WorkerError::Coordinator(atelier_proto::work_status(error)))
            }
            Some(answer) => Ok(answer),
            None => Err(unavailable(format!("{what}: an empty answer"))),
        }
    }

    pub fn worker_id(&self) -> Option<WorkerId> {
        lock(&self.worker_id).clone()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        *lock(&self.heartbeat_interval)
    }

    /// Registers unless someone already did since `stale_id` was current
    /// (`None`: registers unless registered).
    pub async fn register(&self, stale_id: Option<&WorkerId>) -> Result<WorkerId> {
        let _one_at_a_time = self.registering.lock().await;
        if let Some(current) = self.worker_id().filter(|id| Some(id) != stale_id) {
            return Ok(current);
        }
        let request = v1::RegisterRequest::from(self.registration.clone());
        let response = call_with_timeout("register", self.client.clone().register(request)).await?;
        tracing::info!(worker = %response.worker_id, "registered with the coordinator");
        *lock(&self.heartbeat_interval) =
            Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(50)));
        let id = atelier_proto::worker_id(response.worker_id)?;
        *lock(&self.worker_id) = Some(id.clone());
        Ok(id)
    }

    /// Runs `op` with the current id, registering again once if the
    /// coordinator no longer knows this worker (it restarted).
    async fn as_registered<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(WorkerId) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let id = match self.worker_id() {
            Some(id) => id,
            None => self.register(None).await?,
        };
        match op(id.clone()).await {
            Err(error) if is_unknown_worker(&error) => op(self.register(Some(&id)).await?).await,
            other => other,
        }
    }

    pub async fn lease(&self, wait: Duration) -> Result<Option<Assignment>> {
        let task = self
            .as_registered(|worker_id| {
                let request = v1::LeaseTaskRequest {
                    worker_id: worker_id.into(),
                    wait_ms: wait.as_millis() as u32,
                };
                async move {
                    match self.work("lease", Call::Lease(request), wait).await? {
                        Answer::Lease(answer) => Ok(answer.task),
                        _ => Err(WorkerError::Coordinator(Status::internal(
                            "lease: answered as another call",
                        ))),
                    }
                }
            })
            .await?;
        Ok(task.map(Assignment::try_from).transpose()?)
    }

    pub fn hold(&self, lease: &LeaseRef) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.held).insert(lease.clone(), Arc::clone(&flag));
        flag
    }

    pub fn release(&self, lease: &LeaseRef) {
        lock(&self.held).remove(lease);
    }

    /// One heartbeat; leases the coordinator revoked have their tasks stopped.
    pub async fn heartbeat(&self) -> Result<()> {
        let held: Vec<LeaseRef> = lock(&self.held).keys().cloned().collect();
        let response = self
            .as_registered(|worker_id| {
                let request = v1::HeartbeatRequest {
                    worker_id: worker_id.into(),
                    leases: held.iter().cloned().map(Into::into).collect(),
                };
                {
                    let mut client = self.client.clone();
                    async move { call_with_timeout("heartbeat", client.heartbeat(request)).await }
                }
            })
            .await?;
        for revoked in response.revoked {
            let lease = LeaseRef::try_from(revoked)?;
            if let Some(flag) = lock(&self.held).get(&lease) {
                tracing::warn!(task = %lease.task_id, attempt = lease.attempt, "lease revoked; stopping the task");
                flag.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Reports progress; `Ok(true)` means stop (job cancelled or lease lost).
    pub async fn progress(&self, lease: &LeaseRef, report: TaskProgressReport) -> Result<bool> {
        let result = self
            .as_registered(|worker_id| {
                let request = atelier_proto::progress_request(&worker_id, lease, report.clone());
                {
                    let mut client = self.client.clone();
                    async move { call_with_timeout("progress", client.report_progress(request)).await }
                }
            })
            .await;
        match result {
            Ok(response) => Ok(response.cancelled),
            Err(WorkerError::Coordinator(status)) if status.code() == Code::FailedPrecondition => {
                tracing::warn!(task = %lease.task_id, reason = status.message(), "lease lost");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Reports the task done; with `lease_next`, the answer may carry the
    /// next task, leased in the same call.
    pub async fn complete(
        &self,
        lease: &LeaseRef,
        outcome: TaskOutcome,
        lease_next: bool,
    ) -> Result<Option<Assignment>> {
        let response = self
            .as_registered(|worker_id| {
                let request =
                    atelier_proto::complete_request(&worker_id, lease, outcome.clone(), lease_next);
                async move {
                    match self
                        .work("complete", Call::Complete(request), Duration::ZERO)
                        .await?
                    {
                        Answer::Complete(answer) => Ok(answer),
                        _ => Err(WorkerError::Coordinator(Status::internal(
                            "complete: answered as another call",
                        ))),
                    }
                }
            })
            .await?;
        Ok(response.next.map(Assignment::try_from).transpose()?)
    }

    /// Offers this rank to its gang; `None` until every rank has offered.
    pub async fn rendezvous(
        &self,
        lease: &LeaseRef,
        offer: RendezvousOffer,
        wait: Duration,
    ) -> Result<Option<Gang>> {
        let response = self
            .as_registered(|worker_id| {
                let request = atelier_proto::rendezvous_request(
                    &worker_id,
                    lease,
                    offer.clone(),
                    wait.as_millis() as u32,
                );
                let mut client = self.client.clone();
                async move {
                    match tokio::time::timeout(wait + CALL_TIMEOUT, client.rendezvous(request))
                        .await
                    {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        Ok(Err(status)) => Err(WorkerError::Coordinator(status)),
                        Err(_) => Err(WorkerError::Coordinator(Status::deadline_exceeded(
                            "rendezvous: no answer",
                        ))),
                    }
                }
            })
            .await?;
        Ok(atelier_proto::gang(response)?)
    }

    /// Has the coordinator make `manifest` the checkpoint; refused
    /// (`FAILED_PRECONDITION`) once this lease is lost.
    pub async fn commit_checkpoint(&self, lease: &LeaseRef, manifest: bytes::Bytes) -> Result<()> {
        self.as_registered(|worker_id| {
            let request = atelier_proto::commit_checkpoint_request(&worker_id, lease, &manifest);
            let mut client = self.client.clone();
            async move {
                call_with_timeout("commit checkpoint", client.commit_checkpoint(request)).await
            }
        })
        .await
        .map(drop)
    }

    pub async fn fail(&self, lease: &LeaseRef, failure: TaskFailure) -> Result<()> {
        self.as_registered(|worker_id| {
            let request = atelier_proto::fail_request(&worker_id, lease, failure.clone());
            {
                let mut client = self.client.clone();
                async move { call_with_timeout("fail", client.fail_task(request)).await }
            }
        })
        .await
        .map(|_| ())
    }
}
