use std::pin::Pin;
use std::time::Duration;

use atelier_proto::v1::{self, worker_service_server::WorkerService};
use atelier_proto::{
    LeaseRef, Registration, RendezvousOffer, TaskFailure, TaskOutcome, TaskProgressReport,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::CoordinatorConfig;
use crate::event_loop::LoopHandle;

#[derive(Debug, Clone)]
pub struct WorkerApi {
    pub handle: LoopHandle,
    pub config: CoordinatorConfig,
}

impl WorkerApi {
    async fn lease(&self, request: v1::LeaseTaskRequest) -> Result<v1::LeaseTaskResponse, Status> {
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let worker_id = atelier_proto::worker_id(request.worker_id)?;
        let task = self.handle.lease(worker_id, wait).await?;
        Ok(v1::LeaseTaskResponse {
            task: task.map(Into::into),
        })
    }

    async fn complete(
        &self,
        mut request: v1::CompleteTaskRequest,
    ) -> Result<v1::CompleteTaskResponse, Status> {
        let lease = atelier_proto::lease(request.lease.take())?;
        let worker_id = atelier_proto::worker_id(std::mem::take(&mut request.worker_id))?;
        let lease_next = request.lease_next;
        let outcome = TaskOutcome::from(request);
        let next = self
            .handle
            .complete(worker_id, lease, outcome, lease_next)
            .await?;
        Ok(v1::CompleteTaskResponse {
            next: next.map(Into::into),
        })
    }

    /// One call on the `Work` stream; a refused call becomes an error answer.
    async fn answer(&self, request: v1::WorkRequest) -> v1::WorkResponse {
        use v1::work_request::Call;
        use v1::work_response::Answer;
        let answer = match request.call {
            Some(Call::Lease(lease)) => self.lease(lease).await.map(Answer::Lease),
            Some(Call::Complete(complete)) => self.complete(complete).await.map(Answer::Complete),
            None => Err(Status::invalid_argument("a work request without a call")),
        };
        v1::WorkResponse {
            answer: Some(answer.unwrap_or_else(|status| atelier_proto::work_error(&status))),
        }
    }
}

type WorkAnswers = Pin<Box<dyn Stream<Item = Result<v1::WorkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type WorkStream = WorkAnswers;

    /// Answers each request in turn, as the answer stream is read: no task
    /// or channel of its own per worker.
    async fn work(
        &self,
        request: Request<Streaming<v1::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let calls = request.into_inner();
        let answers =
            futures::stream::unfold((calls, self.clone()), |(mut calls, api)| async move {
                match calls.message().await {
                    Ok(Some(request)) => {
                        let answer = api.answer(request).await;
                        Some((Ok(answer), (calls, api)))
                    }
                    Ok(None) => None,
                    Err(status) => {
                        tracing::debug!(%status, "work stream ended");
                        None
                    }
                }
            });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let registration = Registration::from(request.into_inner());
        let worker_id = self.handle.register(registration).await?;
        Ok(Response::new(v1::RegisterResponse {
            worker_id: worker_id.into(),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            lease_timeout_ms: self.config.lease_timeout.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let held = request
            .leases
            .into_iter()
            .map(LeaseRef::try_from)
            .collect::<atelier_proto::Result<Vec<_>>>()?;
        let worker_id = atelier_proto::worker_id(request.worker_id)?;
        let revoked = self.handle.heartbeat(worker_id, held).await?;
        Ok(Response::new(v1::HeartbeatResponse {
            revoked: revoked.into_iter().map(Into::into).collect(),
        }))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Result<Response<v1::LeaseTaskResponse>, Status> {
        self.lease(request.into_inner()).await.map(Response::new)
    }

    async fn report_progress(
        &self,
        request: Request<v1::ReportProgressRequest>,
    ) -> Result<Response<v1::ReportProgressResponse>, Status> {
        let mut request = request.into_inner();
        let lease = atelier_proto::lease(request.lease.take())?;
        let worker_id = atelier_proto::worker_id(std::mem::take(&mut request.worker_id))?;
        let report = TaskProgressReport::from(request);
        let cancelled = self.handle.progress(worker_id, lease, report).await?;
        Ok(Response::new(v1::ReportProgressResponse { cancelled }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        self.complete(request.into_inner()).await.map(Response::new)
    }

    async fn fail_task(
        &self,
        request: Request<v1::FailTaskRequest>,
    ) -> Result<Response<v1::FailTaskResponse>, Status> {
        let mut request = request.into_inner();
        let lease = atelier_proto::lease(request.lease.take())?;
        let worker_id = atelier_proto::worker_id(std::mem::take(&mut request.worker_id))?;
        let failure = TaskFailure::from(request);
        self.handle.fail(worker_id, lease, failure).await?;
        Ok(Response::new(v1::FailTaskResponse {}))
    }

    async fn rendezvous(
        &self,
        request: Request<v1::RendezvousRequest>,
    ) -> Result<Response<v1::RendezvousResponse>, Status> {
        let mut request = request.into_inner();
        let lease = atelier_proto::lease(request.lease.take())?;
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let offer = RendezvousOffer::from(request);
        let gang = self.handle.rendezvous(lease, offer, wait).await?;
        Ok(Response::new(atelier_proto::rendezvous_response(gang)))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<v1::CommitCheckpointRequest>,
    ) -> Result<Response<v1::CommitCheckpointResponse>, Status> {
        let mut request = request.into_inner();
        let lease = atelier_proto::lease(request.lease.take())?;
        let worker_id = atelier_proto::worker_id(std::mem::take(&mut request.worker_id))?;
        let commit = self
            .handle
            .begin_checkpoint_commit(worker_id, lease)
            .await?;
        let manifest = bytes::Bytes::from(request.manifest);
        let handle = self.handle.clone();
        // On a task of its own, so that a caller that goes away neither cuts
        // the write short nor leaves the place held.
        let written = tokio::spawn(async move {
            let written = write_checkpoint_manifest(&commit.checkpoint, manifest).await;
            handle.end_checkpoint_commit(commit);
            written
        })
        .await
        .map_err(|e| Status::internal(format!("committing the checkpoint: {e}")))?;
        written.map(|()| Response::new(v1::CommitCheckpointResponse {}))
    }
}

/// Writes a rank's manifest as the checkpoint at `url`. A store fault that
/// may pass is `UNAVAILABLE`, another `INTERNAL`: either way the rank's
/// task fails and the gang goes on from the checkpoint as it stands.
async fn write_checkpoint_manifest(url: &str, manifest: bytes::Bytes) -> Result<(), Status> {
    let failed = |e: atelier_catalog::CatalogError| {
        let message = format!("committing the checkpoint {url}: {e}");
        if e.is_retryable() {
            Status::unavailable(message)
        } else {
            Status::internal(message)
        }
    };
    let dir = atelier_catalog::StoreLocation::parse(url).map_err(failed)?;
    atelier_catalog::commit_checkpoint(&dir, manifest)
        .await
        .map_err(failed)
}
