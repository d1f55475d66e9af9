use std::time::Duration;

use atelier_proto::convert;
use atelier_proto::domain::{
    LeaseRef, Registration, RendezvousOffer, TaskFailure, TaskOutcome, TaskProgressReport,
};
use atelier_proto::v1::{self, worker_service_server::WorkerService};
use tonic::{Request, Response, Status};

use crate::config::CoordinatorConfig;
use crate::event_loop::LoopHandle;

#[derive(Debug, Clone)]
pub struct WorkerApi {
    pub handle: LoopHandle,
    pub config: CoordinatorConfig,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let registration = Registration::from(request.into_inner());
        let worker_id = self.handle.register(registration).await?;
        Ok(Response::new(v1::RegisterResponse {
            worker_id,
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
        let revoked = self.handle.heartbeat(request.worker_id, held).await?;
        Ok(Response::new(v1::HeartbeatResponse {
            revoked: revoked.into_iter().map(Into::into).collect(),
        }))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Result<Response<v1::LeaseTaskResponse>, Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let task = self.handle.lease(request.worker_id, wait).await?;
        Ok(Response::new(v1::LeaseTaskResponse {
            task: task.map(Into::into),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<v1::ReportProgressRequest>,
    ) -> Result<Response<v1::ReportProgressResponse>, Status> {
        let mut request = request.into_inner();
        let lease = convert::lease(request.lease.take())?;
        let worker_id = std::mem::take(&mut request.worker_id);
        let report = TaskProgressReport::from(request);
        let cancelled = self.handle.progress(worker_id, lease, report).await?;
        Ok(Response::new(v1::ReportProgressResponse { cancelled }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let mut request = request.into_inner();
        let lease = convert::lease(request.lease.take())?;
        let worker_id = std::mem::take(&mut request.worker_id);
        let lease_next = request.lease_next;
        let outcome = TaskOutcome::from(request);
        let next = self
            .handle
            .complete(worker_id, lease, outcome, lease_next)
            .await?;
        Ok(Response::new(v1::CompleteTaskResponse {
            next: next.map(Into::into),
        }))
    }

    async fn fail_task(
        &self,
        request: Request<v1::FailTaskRequest>,
    ) -> Result<Response<v1::FailTaskResponse>, Status> {
        let mut request = request.into_inner();
        let lease = convert::lease(request.lease.take())?;
        let worker_id = std::mem::take(&mut request.worker_id);
        let failure = TaskFailure::from(request);
        self.handle.fail(worker_id, lease, failure).await?;
        Ok(Response::new(v1::FailTaskResponse {}))
    }

    async fn rendezvous(
        &self,
        request: Request<v1::RendezvousRequest>,
    ) -> Result<Response<v1::RendezvousResponse>, Status> {
        let mut request = request.into_inner();
        let lease = convert::lease(request.lease.take())?;
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let offer = RendezvousOffer::from(request);
        let gang = self.handle.rendezvous(lease, offer, wait).await?;
        Ok(Response::new(convert::rendezvous_response(gang)))
    }
}
