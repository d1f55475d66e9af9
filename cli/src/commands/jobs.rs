//! The user's side of the cluster: `atelier submit | status | jobs | cancel`.

use anyhow::{bail, Context};
use atelier_catalog::StoreLocation;
use atelier_proto::v1;
use atelier_proto::{connect_jobs, JobClient};
use atelier_proto::{CatalogColumns, GangOptions, InferenceOptions, TrainOptions};
use atelier_proto::{EvalJobSpec, JobKind, JobState, JobStatus, TagJobSpec, TrainJobSpec};
use clap::{Args, Subcommand};
use tokio::runtime::Handle;

use super::cluster::AccessArgs;
use super::train::TrainPlaces;
use super::watch::watch;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The coordinator's address.
    #[arg(
        long,
        env = "ATELIER_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: String,
    #[command(flatten)]
    pub token: AccessArgs,
}

impl ClientArgs {
    pub async fn connect(&self) -> anyhow::Result<JobClient> {
        Ok(connect_jobs(&self.coordinator, &self.token.connect()?).await?)
    }
}

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// Tag a catalogue on the cluster's workers.
    Tag(SubmitTagArgs),
    /// Train a model on the workers: one rank, or a data-parallel gang.
    Train(Box<SubmitTrainArgs>),
    /// Evaluate a checkpoint on a worker.
    Test(SubmitTestArgs),
}

#[derive(Debug, Args)]
pub struct SubmitTagArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub catalog: String,
    #[command(flatten)]
    pub columns: CatalogColumns,
    /// Checkpoint prefix; give it twice to combine a classifier and a captioner.
    #[arg(long, required = true)]
    pub checkpoint: Vec<String>,
    /// Output prefix: one `part-NNNNN.parquet` per shard, then `_manifest.json` and `_SUCCESS`.
    #[arg(long)]
    pub out: String,
    /// Replace whatever is under --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Rows per shard; a larger row group is split where its images have an
    /// offset index [default: the coordinator sizes shards from its
    /// --shard-rows and the registered workers].
    #[arg(long)]
    pub shard_rows: Option<u64>,
    /// Attempts per shard [default: the coordinator's --max-attempts].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[command(flatten)]
    pub inference: InferenceOptions,
    /// Watch the job until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct SubmitTrainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub places: TrainPlaces,
    #[command(flatten)]
    pub options: TrainOptions,
    #[command(flatten)]
    pub gang: GangOptions,
    /// Watch the job until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct SubmitTestArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub checkpoint: String,
    #[arg(long)]
    pub catalog: String,
    #[command(flatten)]
    pub columns: CatalogColumns,
    /// Every item rather than the run's validation split.
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 1)]
    pub beams: u32,
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job; without it, every job.
    pub job: Option<String>,
    /// Follow the job with a live progress bar until it ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Show at most this many, newest first (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only jobs in these states (repeat it or separate them with commas):
    /// pending, running, succeeded, failed, cancelled.
    #[arg(long = "state", value_delimiter = ',', value_parser = parse_state)]
    pub states: Vec<JobState>,
}

fn parse_state(name: &str) -> Result<JobState, String> {
    JobState::ALL
        .into_iter()
        .find(|state| state.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.name()).collect();
            format!("not a job state; one of {}", names.join(", "))
        })
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub job: String,
}

/// Paths become absolute URLs: the coordinator and workers run elsewhere.
fn absolute(url: &str) -> anyhow::Result<String> {
    Ok(StoreLocation::parse(url)
        .with_context(|| format!("{url} is not a path or object-store URL"))?
        .url())
}

pub fn submit(command: SubmitCommand, handle: &Handle) -> anyhow::Result<()> {
    handle.block_on(async {
        let (client_args, wait, job_id) = match command {
            SubmitCommand::Tag(args) => {
                let spec = TagJobSpec {
                    catalog: absolute(&args.catalog)?,
                    columns: args.columns.clone(),
                    checkpoints: args
                        .checkpoint
                        .iter()
                        .map(|c| absolute(c))
                        .collect::<anyhow::Result<_>>()?,
                    output: absolute(&args.out)?,
                    target_shard_rows: args.shard_rows,
                    max_attempts: args.max_attempts,
                    inference: args.inference.clone(),
                    overwrite: args.overwrite,
                };
                let mut client = args.client.connect().await?;
                let id = client
                    .submit_tag_job(v1::SubmitTagJobRequest::from(spec))
                    .await?
                    .into_inner()
                    .job_id;
                (args.client, args.wait, id)
            }
            SubmitCommand::Train(args) => {
                let spec = train_spec(&args)?;
                let mut client = args.client.connect().await?;
                let id = client
                    .submit_train_job(v1::SubmitTrainJobRequest::from(spec))
                    .await?
                    .into_inner()
                    .job_id;
                (args.client.clone(), args.wait, id)
            }
            SubmitCommand::Test(args) => {
                let spec = EvalJobSpec {
                    catalog: absolute(&args.catalog)?,
                    columns: args.columns.clone(),
                    checkpoint: absolute(&args.checkpoint)?,
                    all_items: args.all,
                    beams: args.beams,
                };
                let mut client = args.client.connect().await?;
                let id = client
                    .submit_eval_job(v1::SubmitEvalJobRequest::from(spec))
                    .await?
                    .into_inner()
                    .job_id;
                (args.client, args.wait, id)
            }
        };
        println!("submitted {job_id}");
        if wait {
            let mut client = client_args.connect().await?;
            let job = watch(&mut client, &job_id).await?;
            print_job(&job);
            ensure_succeeded(&job)?;
        }
        Ok(())
    })
}

fn train_spec(args: &SubmitTrainArgs) -> anyhow::Result<TrainJobSpec> {
    let mut options = args.options.clone();
    options.backbone_weights = options
        .backbone_weights
        .as_deref()
        .map(absolute)
        .transpose()?;
    Ok(TrainJobSpec {
        catalog: absolute(&args.places.catalog)?,
        columns: args.places.columns.clone(),
        checkpoint: absolute(&args.places.checkpoint)?,
        options,
        gang: args.gang,
    })
}

pub fn ensure_succeeded(job: &JobStatus) -> anyhow::Result<()> {
    match job.state {
        JobState::Succeeded => Ok(()),
        state => bail!(
            "job {} {}{}",
            job.id,
            state.name(),
            job.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}

pub fn print_job(job: &JobStatus) {
    println!("job {} ({}): {}", job.id, job.kind.name(), job.state.name());
    println!("  {}", job.description);
    if let Some(tag) = &job.tag {
        println!(
            "  items {}/{} done, {} with errors; shards {}/{} done, {} failed, {} retried; {:.1} items/s",
            tag.items_done,
            tag.items_total,
            tag.items_failed,
            tag.shards_done,
            tag.shards_total,
            tag.shards_failed,
            tag.shards_retried,
            tag.items_per_second
        );
        println!("  output {}", tag.output);
    }
    if let Some(train) = &job.train {
        println!(
            "  epoch {} step {}/{} loss {:.4}",
            train.epoch, train.step, train.total_steps, train.loss
        );
        for rank in &train.ranks {
            println!(
                "  rank {} on {} ({}): {:.1} images/s, {:.2} s in all-reduce",
                rank.rank,
                rank.worker_id.as_ref().map_or("-", |id| id.as_str()),
                if rank.device.is_empty() {
                    "-"
                } else {
                    &rank.device
                },
                rank.images_per_second,
                rank.allreduce_seconds
            );
        }
        for (n, restart) in train.restarts.iter().enumerate() {
            let kind = match restart.kind {
                atelier_proto::RestartKind::Failure => "a rank failed",
                atelier_proto::RestartKind::LostWorker => "a worker was lost",
            };
            println!(
                "  restart {} at step {} ({kind}): {}",
                n + 1,
                restart.at_step,
                restart.cause
            );
        }
    }
    let s = &job.stages;
    if let Some(line) = crate::commands::stages::describe(s) {
        println!("  {line}");
    }
    if !job.metrics.is_empty() {
        println!("  {}", super::score_line::describe(&job.metrics));
    }
    if let Some(error) = &job.error {
        println!("  error: {error}");
    }
}

fn one_line(job: &JobStatus) -> String {
    let progress = match (&job.tag, job.kind) {
        (Some(tag), JobKind::Tag) => format!("{}/{} items", tag.items_done, tag.items_total),
        _ => String::new(),
    };
    format!(
        "{:<22} {:<5} {:<9} {:<18} {}",
        job.id,
        job.kind.name(),
        job.state.name(),
        progress,
        job.description
    )
}

pub fn status(args: &StatusArgs, handle: &Handle) -> anyhow::Result<()> {
    let Some(job_id) = &args.job else {
        return jobs(
            &JobsArgs {
                client: args.client.clone(),
                limit: 50,
                states: Vec::new(),
            },
            handle,
        );
    };
    handle.block_on(async {
        let mut client = args.client.connect().await?;
        let job = if args.watch {
            watch(&mut client, job_id).await?
        } else {
            let job = client
                .get_job(v1::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await?
                .into_inner();
            JobStatus::try_from(job)?
        };
        print_job(&job);
        if args.watch {
            ensure_succeeded(&job)?;
        }
        Ok(())
    })
}

pub fn jobs(args: &JobsArgs, handle: &Handle) -> anyhow::Result<()> {
    handle.block_on(async {
        let mut client = args.client.connect().await?;
        let jobs = client
            .list_jobs(v1::ListJobsRequest {
                states: args
                    .states
                    .iter()
                    .map(|&state| v1::JobState::from(state) as i32)
                    .collect(),
                limit: args.limit,
            })
            .await?
            .into_inner()
            .jobs;
        if jobs.is_empty() {
            println!("no jobs");
        }
        for job in jobs {
            println!("{}", one_line(&JobStatus::try_from(job)?));
        }
        Ok(())
    })
}

pub fn cancel(args: &CancelArgs, handle: &Handle) -> anyhow::Result<()> {
    handle.block_on(async {
        let mut client = args.client.connect().await?;
        let job = client
            .cancel_job(v1::CancelJobRequest {
                job_id: args.job.clone(),
            })
            .await?
            .into_inner();
        print_job(&JobStatus::try_from(job)?);
        Ok(())
    })
}
