use std::pin::Pin;
use std::sync::atomic::Ordering;

use atelier_catalog::Catalog;

use atelier_proto::v1::{self, job_service_server::JobService};
use atelier_proto::{EvalJobSpec, JobId, JobSpec, JobState, TagJobSpec, TaskWork, TrainJobSpec};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::event_loop::LoopHandle;
use crate::ids::new_job_id;
use crate::places;
use crate::plan::{check_checkpoints, plan_tag_job, prepare_output};
use crate::state::{Now, ReservationId, Reserved};

use super::watch::job_updates;

#[derive(Debug, Clone)]
pub struct JobApi {
    pub handle: LoopHandle,
    pub config: CoordinatorConfig,
}

/// What planning a job gives its commit.
struct Planned {
    works: Vec<TaskWork>,
    max_attempts: u32,
}

/// Gives a reservation back unless it was committed: a submit that fails
/// while planning, or whose caller goes away, frees the place.
struct HeldReservation<'a> {
    handle: &'a LoopHandle,
    reservation: Option<ReservationId>,
}

impl Drop for HeldReservation<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.handle.release(reservation);
        }
    }
}

impl JobApi {
    /// A submit as a flow through the event loop: resolve the places the
    /// job names and check where it may write, reserve the place it writes,
    /// plan and prepare it here (footers, checkpoints, `--overwrite`
    /// deleting the old output: I/O that must not stall the loop), then
    /// commit. While the place is reserved no other submit can prepare it.
    async fn submit(&self, spec: JobSpec) -> Result<JobId> {
        let spec = places::resolve(spec)?;
        self.config.write_policy.check(&spec)?;
        let reservation = match self.handle.reserve(spec.clone()).await? {
            Reserved::Existing(job_id) => return Ok(job_id),
            Reserved::Granted(reservation) => reservation,
        };
        let mut held = HeldReservation {
            handle: &self.handle,
            reservation: Some(reservation),
        };
        let planned = match spec {
            JobSpec::Tag(spec) => self.plan_tag(spec).await,
            JobSpec::Train(spec) => self.plan_train(spec).await,
            JobSpec::Eval(spec) => self.plan_eval(spec).await,
        }?;
        held.reservation = None;
        let id = new_job_id(Now::read().unix_ms);
        let status = self
            .handle
            .commit(reservation, id, planned.works, planned.max_attempts)
            .await?;
        Ok(status.id)
    }

    async fn plan_tag(&self, spec: TagJobSpec) -> Result<Planned> {
        check_checkpoints(&spec.checkpoints).await?;
        let workers = self.handle.gauges().workers.load(Ordering::Relaxed) as usize;
        let plan = plan_tag_job(
            &spec,
            &self.config.shard_sizing,
            workers,
            self.config.max_shards_per_job,
        )
        .await?;
        prepare_output(&spec.output, spec.overwrite).await?;
        tracing::info!(
            shards = plan.shards.len(),
            rows = plan.rows,
            shard_rows = plan.target_rows,
            workers,
            catalog = %spec.catalog,
            "tag job planned"
        );
        Ok(Planned {
            works: plan.shards.into_iter().map(TaskWork::Tag).collect(),
            max_attempts: spec
                .max_attempts
                .unwrap_or(self.config.default_max_attempts),
        })
    }

    async fn plan_eval(&self, spec: EvalJobSpec) -> Result<Planned> {
        check_checkpoints(std::slice::from_ref(&spec.checkpoint)).await?;
        Catalog::open_mapped(&spec.catalog, &spec.columns)
            .await
            .map_err(CoordinatorError::BadCatalog)?;
        Ok(Planned {
            works: vec![TaskWork::Eval(spec)],
            max_attempts: self.config.default_max_attempts,
        })
    }

    async fn plan_train(&self, spec: TrainJobSpec) -> Result<Planned> {
        let catalog = Catalog::open_mapped(&spec.catalog, &spec.columns)
            .await
            .map_err(CoordinatorError::BadCatalog)?;
        catalog
            .check_label_columns(&spec.options.targets)
            .map_err(CoordinatorError::BadCatalog)?;
        Ok(Planned {
            works: (0..spec.gang.world_size)
                .map(|rank| TaskWork::Train {
                    spec: spec.clone(),
                    rank,
                })
                .collect(),
            // Train ranks are restarted as a gang (max_restarts), not one by one.
            max_attempts: spec.gang.max_restarts + 1,
        })
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_tag_job(
        &self,
        request: Request<v1::SubmitTagJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = TagJobSpec::try_from(request.into_inner())?;
        let job_id = self.submit(JobSpec::Tag(spec)).await?;
        Ok(Response::new(v1::SubmitJobResponse {
            job_id: job_id.into(),
        }))
    }

    async fn submit_train_job(
        &self,
        request: Request<v1::SubmitTrainJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = TrainJobSpec::try_from(request.into_inner())?;
        let job_id = self.submit(JobSpec::Train(spec)).await?;
        Ok(Response::new(v1::SubmitJobResponse {
            job_id: job_id.into(),
        }))
    }

    async fn submit_eval_job(
        &self,
        request: Request<v1::SubmitEvalJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = EvalJobSpec::try_from(request.into_inner())?;
        let job_id = self.submit(JobSpec::Eval(spec)).await?;
        Ok(Response::new(v1::SubmitJobResponse {
            job_id: job_id.into(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let job = self
            .handle
            .job(&atelier_proto::job_id(request.into_inner().job_id)?)?;
        Ok(Response::new(job.into()))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let states = request
            .states
            .into_iter()
            .map(atelier_proto::job_state)
            .collect::<atelier_proto::Result<Vec<JobState>>>()?;
        let jobs = self.handle.jobs(&states, request.limit as usize);
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.into_iter().map(Into::into).collect(),
        }))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let job_id = atelier_proto::job_id(request.into_inner().job_id)?;
        // Subscribe before reading, so no update falls between the two.
        let events = self.handle.subscribe();
        let first = self.handle.job(&job_id)?;
        let handle = self.handle.clone();
        let stream = job_updates(first, events, move |id: &JobId| handle.job(id).ok()).map(|job| {
            let message = format!("{} {}", job.id, job.state.name());
            Ok(v1::JobEvent {
                job: Some(job.into()),
                message,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let job_id = atelier_proto::job_id(request.into_inner().job_id)?;
        let job = self.handle.cancel(job_id).await?;
        Ok(Response::new(job.into()))
    }
}
