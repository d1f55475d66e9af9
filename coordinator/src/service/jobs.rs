use std::pin::Pin;
use std::sync::atomic::Ordering;

use atelier_catalog::Catalog;
use atelier_proto::convert;
use atelier_proto::domain::{EvalJobSpec, JobSpec, JobState, TagJobSpec, TaskWork, TrainJobSpec};
use atelier_proto::v1::{self, job_service_server::JobService};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::event_loop::LoopHandle;
use crate::plan::{check_checkpoints, plan_tag_job, prepare_output};
use crate::state::places_overlap;

#[derive(Debug, Clone)]
pub struct JobApi {
    pub handle: LoopHandle,
    pub config: CoordinatorConfig,
}

fn new_job_id() -> String {
    format!(
        "job-{:x}{:04x}",
        crate::state::unix_ms(),
        rand::random::<u16>()
    )
}

impl JobApi {
    async fn submit_tag(&self, spec: TagJobSpec) -> Result<String> {
        check_checkpoints(&spec.checkpoints).await?;
        let workers = self.handle.gauges().workers.load(Ordering::Relaxed) as usize;
        let plan = plan_tag_job(&spec, &self.config.shard_sizing, workers).await?;
        // An unfinished job's output may hold its finished parts, which
        // --overwrite would delete; the event loop then says whether this is
        // that job again or a second writer.
        if !self.an_unfinished_tag_job_writes(&spec.output) {
            prepare_output(&spec.output, spec.overwrite).await?;
        }
        let attempts = match spec.max_attempts {
            0 => self.config.default_max_attempts,
            n => n,
        };
        tracing::info!(
            shards = plan.shards.len(),
            rows = plan.rows,
            shard_rows = plan.target_rows,
            workers,
            catalog = %spec.catalog,
            "tag job planned"
        );
        let works = plan.shards.into_iter().map(TaskWork::Tag).collect();
        let status = self
            .handle
            .submit(new_job_id(), JobSpec::Tag(spec), works, attempts)
            .await?;
        Ok(status.id)
    }

    fn an_unfinished_tag_job_writes(&self, output: &str) -> bool {
        self.handle
            .jobs(&[JobState::Pending, JobState::Running], 0)
            .iter()
            .any(|job| {
                job.tag
                    .as_ref()
                    .is_some_and(|t| places_overlap(&t.output, output))
            })
    }

    async fn submit_eval(&self, spec: EvalJobSpec) -> Result<String> {
        check_checkpoints(std::slice::from_ref(&spec.checkpoint)).await?;
        Catalog::open(&spec.catalog)
            .await
            .map_err(CoordinatorError::BadCatalog)?;
        let works = vec![TaskWork::Eval(spec.clone())];
        let attempts = self.config.default_max_attempts;
        let status = self
            .handle
            .submit(new_job_id(), JobSpec::Eval(spec), works, attempts)
            .await?;
        Ok(status.id)
    }

    async fn submit_train(&self, spec: TrainJobSpec) -> Result<String> {
        let world_size = spec.world_size.max(1);
        if spec.ranks_per_worker > 0 && !world_size.is_multiple_of(spec.ranks_per_worker) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "world_size {world_size} is not a multiple of ranks_per_worker {}",
                spec.ranks_per_worker
            )));
        }
        Catalog::open(&spec.catalog)
            .await
            .map_err(CoordinatorError::BadCatalog)?;
        let works = (0..world_size)
            .map(|rank| TaskWork::Train {
                spec: spec.clone(),
                rank,
                world_size,
                device: String::new(),
            })
            .collect();
        // Train ranks are restarted as a gang (max_restarts), not one by one.
        let attempts = spec.max_restarts + 1;
        let status = self
            .handle
            .submit(new_job_id(), JobSpec::Train(spec), works, attempts)
            .await?;
        Ok(status.id)
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
        let job_id = self.submit_tag(spec).await?;
        Ok(Response::new(v1::SubmitJobResponse { job_id }))
    }

    async fn submit_train_job(
        &self,
        request: Request<v1::SubmitTrainJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = TrainJobSpec::try_from(request.into_inner())?;
        let job_id = self.submit_train(spec).await?;
        Ok(Response::new(v1::SubmitJobResponse { job_id }))
    }

    async fn submit_eval_job(
        &self,
        request: Request<v1::SubmitEvalJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = EvalJobSpec::try_from(request.into_inner())?;
        let job_id = self.submit_eval(spec).await?;
        Ok(Response::new(v1::SubmitJobResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let job = self.handle.job(&request.into_inner().job_id)?;
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
            .map(convert::job_state)
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
        let job_id = request.into_inner().job_id;
        // Subscribe before reading, so no update falls between the two.
        let events = self.handle.subscribe();
        let first = self.handle.job(&job_id)?;
        let stream = futures::stream::unfold(
            (Some(first), events, job_id, false),
            |(first, mut events, job_id, done)| async move {
                if done {
                    return None;
                }
                let job = match first {
                    Some(job) => job,
                    None => loop {
                        match events.recv().await {
                            Ok(job) if job.id == job_id => break job,
                            Ok(_) | Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return None,
                        }
                    },
                };
                let done = job.state.is_terminal();
                let message = format!("{} {}", job.id, job.state.name());
                let event = v1::JobEvent {
                    job: Some(job.into()),
                    message,
                };
                Some((Ok(event), (None, events, job_id, done)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let job = self.handle.cancel(request.into_inner().job_id).await?;
        Ok(Response::new(job.into()))
    }
}
