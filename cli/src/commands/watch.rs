//! Following a job until it ends (`status --watch`, `submit --wait`). On a
//! terminal that is a progress bar. Anywhere else (a CI log, `kubectl logs`,
//! a pipe) the bar is hidden, and a night's tag job would say nothing until
//! it ended; there a line goes to stderr instead whenever the job's state,
//! epoch or restarts change, and at most every half minute while it moves.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use atelier_proto::v1;
use atelier_proto::JobClient;
use atelier_proto::{JobState, JobStatus, TagProgress, TrainProgress};
use indicatif::ProgressBar;

use crate::progress;

/// How often a line repeats progress when nothing else changed.
const LINE_EVERY: Duration = Duration::from_secs(30);
/// How long a watch keeps calling a coordinator that went away (restarted,
/// its pod rescheduled) before it gives up; the job goes on meanwhile, and
/// a nightly `submit --wait` should not fail for a restart.
const RECONNECT_FOR: Duration = Duration::from_secs(300);
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Follows a job until it ends and returns its last status, through
/// restarts of the coordinator.
pub async fn watch(client: &mut JobClient, job_id: &str) -> anyhow::Result<JobStatus> {
    let mut view = if std::io::stderr().is_terminal() {
        View::Bar(None)
    } else {
        View::Lines(LineLog::default())
    };
    let mut lost_since: Option<Instant> = None;
    let ended = loop {
        let lost = match follow(client, job_id, &mut view, &mut lost_since).await {
            Ok(Some(ended)) => break ended,
            // A coordinator shutting down ends its streams.
            Ok(None) => "the coordinator ended the watch".to_string(),
            Err(status) if reconnectable(status.code()) => atelier_proto::one_line(&status),
            Err(status) => return Err(status.into()),
        };
        let since = *lost_since.get_or_insert_with(|| {
            view.note(&format!(
                "{job_id}: lost the coordinator ({lost}); calling again for up to {} s",
                RECONNECT_FOR.as_secs()
            ));
            Instant::now()
        });
        if since.elapsed() >= RECONNECT_FOR {
            anyhow::bail!(
                "the coordinator has not answered for {} s ({lost}); job {job_id} may still be running",
                RECONNECT_FOR.as_secs()
            );
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    };
    if let View::Bar(Some(bar)) = view {
        bar.finish_and_clear();
    }
    Ok(ended)
}

/// Errors of a coordinator that is down or went away mid-stream, as
/// opposed to one that answered no (an unknown job).
fn reconnectable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// One watch stream until the job ends (its last status) or the stream
/// does (`None`).
async fn follow(
    client: &mut JobClient,
    job_id: &str,
    view: &mut View,
    lost_since: &mut Option<Instant>,
) -> Result<Option<JobStatus>, tonic::Status> {
    let mut stream = client
        .watch_job(v1::WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if lost_since.take().is_some() {
            view.note(&format!("{job_id}: the coordinator answers again"));
        }
        let Some(job) = event.job else { continue };
        let job = JobStatus::try_from(job)?;
        view.show(&job, Instant::now());
        if job.state.is_terminal() {
            return Ok(Some(job));
        }
    }
    Ok(None)
}

/// Where a job stands, in the terms both views show.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    position: u64,
    total: u64,
    unit: &'static str,
    detail: String,
}

fn progress_of(job: &JobStatus) -> Progress {
    match (&job.tag, &job.train) {
        (Some(tag), _) => Progress {
            position: tag.items_done,
            total: tag.items_total,
            unit: "items",
            detail: tag_detail(tag),
        },
        (_, Some(train)) => Progress {
            position: u64::try_from(train.step).unwrap_or(0),
            total: u64::try_from(train.total_steps).unwrap_or(0),
            unit: "steps",
            detail: train_detail(train),
        },
        _ => Progress {
            position: 0,
            total: 0,
            unit: "items",
            detail: String::new(),
        },
    }
}

fn tag_detail(tag: &TagProgress) -> String {
    let mut parts = Vec::new();
    if tag.items_per_second > 0.0 {
        parts.push(format!("{:.1} items/s", tag.items_per_second));
    }
    if tag.items_failed > 0 {
        parts.push(format!("{} with errors", tag.items_failed));
    }
    if tag.shards_retried > 0 {
        parts.push(format!("{} shard(s) retried", tag.shards_retried));
    }
    parts.join(", ")
}

fn train_detail(train: &TrainProgress) -> String {
    let mut parts = Vec::new();
    if train.step > 0 {
        parts.push(format!(
            "epoch {} loss {:.4} {:.1} img/s over {} rank(s)",
            train.epoch,
            train.loss,
            train.ranks.iter().map(|r| r.images_per_second).sum::<f64>(),
            train.ranks.len(),
        ));
    }
    if !train.restarts.is_empty() {
        parts.push(format!("{} restart(s)", train.restarts.len()));
    }
    parts.join(", ")
}

enum View {
    /// Made on the first status, when the total is known.
    Bar(Option<ProgressBar>),
    Lines(LineLog),
}

impl View {
    /// A line that is not progress, above the bar if there is one.
    fn note(&self, text: &str) {
        match self {
            Self::Bar(Some(bar)) => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }

    fn show(&mut self, job: &JobStatus, now: Instant) {
        let progress = progress_of(job);
        match self {
            Self::Bar(bar) => {
                let bar = bar.get_or_insert_with(|| {
                    progress::bar(
                        progress.total.max(1),
                        &format!("{} {}", job.id, progress.unit),
                    )
                });
                bar.set_length(progress.total.max(1));
                bar.set_position(progress.position);
                bar.set_message(
                    format!("{} {}", job.state.name(), progress.detail)
                        .trim_end()
                        .to_string(),
                );
            }
            Self::Lines(log) => {
                if let Some(line) = log.line(job, &progress, now) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// What makes a line worth printing at once.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Milestone {
    state: JobState,
    epoch: u32,
    restarts: usize,
}

impl Milestone {
    fn of(job: &JobStatus) -> Self {
        Self {
            state: job.state,
            epoch: job.train.as_ref().map_or(0, |t| t.epoch),
            restarts: job.train.as_ref().map_or(0, |t| t.restarts.len()),
        }
    }
}

#[derive(Debug, Default)]
struct LineLog {
    printed: Option<(Milestone, u64, Instant)>,
}

impl LineLog {
    /// The line for `job` if one is due at `now`, remembering it.
    fn line(&mut self, job: &JobStatus, progress: &Progress, now: Instant) -> Option<String> {
        let milestone = Milestone::of(job);
        let due = match self.printed {
            None => true,
            Some((shown, position, at)) => {
                shown != milestone
                    || (position != progress.position && now.duration_since(at) >= LINE_EVERY)
            }
        };
        if !due {
            return None;
        }
        self.printed = Some((milestone, progress.position, now));
        let mut line = format!("{}: {}", job.id, job.state.name());
        if progress.total > 0 {
            line += &format!(
                ", {}/{} {}",
                progress.position, progress.total, progress.unit
            );
        }
        if !progress.detail.is_empty() {
            line += &format!(", {}", progress.detail);
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use atelier_proto::{JobKind, RankStatus, Restart};

    use super::*;

    fn train_job(state: JobState, epoch: u32, step: i64, restarts: usize) -> JobStatus {
        JobStatus {
            id: "job-1".into(),
            kind: JobKind::Train,
            state,
            created_unix_ms: 0,
            updated_unix_ms: 0,
            error: None,
            description: String::new(),
            tag: None,
            train: Some(TrainProgress {
                epoch,
                step,
                total_steps: 100,
                loss: 1.5,
                ranks: vec![
                    RankStatus {
                        images_per_second: 100.0,
                        ..RankStatus::default()
                    },
                    RankStatus {
                        images_per_second: 50.0,
                        ..RankStatus::default()
                    },
                ],
                restarts: vec![Restart::default(); restarts],
                ..TrainProgress::default()
            }),
            stages: Default::default(),
            metrics: Default::default(),
        }
    }

    fn line_at(log: &mut LineLog, job: &JobStatus, now: Instant) -> Option<String> {
        log.line(job, &progress_of(job), now)
    }

    #[test]
    fn lines_come_at_each_milestone_and_otherwise_at_most_every_half_minute() {
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        let mut log = LineLog::default();
        assert_eq!(
            line_at(&mut log, &train_job(JobState::Pending, 0, 0, 0), start).as_deref(),
            Some("job-1: pending, 0/100 steps")
        );
        // Nothing moved: no line, however long it waits.
        assert_eq!(
            line_at(&mut log, &train_job(JobState::Pending, 0, 0, 0), later(90)),
            None
        );
        assert_eq!(
            line_at(&mut log, &train_job(JobState::Running, 1, 10, 0), later(91)).as_deref(),
            Some("job-1: running, 10/100 steps, epoch 1 loss 1.5000 150.0 img/s over 2 rank(s)")
        );
        // Steps alone wait for the interval.
        assert_eq!(
            line_at(
                &mut log,
                &train_job(JobState::Running, 1, 12, 0),
                later(100)
            ),
            None
        );
        assert!(line_at(
            &mut log,
            &train_job(JobState::Running, 1, 20, 0),
            later(121)
        )
        .is_some());
        // A new epoch, a restart and the end each get a line at once.
        assert!(line_at(
            &mut log,
            &train_job(JobState::Running, 2, 21, 0),
            later(122)
        )
        .is_some());
        assert_eq!(
            line_at(&mut log, &train_job(JobState::Running, 2, 21, 1), later(123)).as_deref(),
            Some("job-1: running, 21/100 steps, epoch 2 loss 1.5000 150.0 img/s over 2 rank(s), 1 restart(s)")
        );
        assert!(line_at(
            &mut log,
            &train_job(JobState::Succeeded, 2, 21, 1),
            later(124)
        )
        .is_some());
    }

    #[test]
    fn tag_lines_carry_the_rate_errors_and_retries() {
        let mut job = train_job(JobState::Running, 0, 0, 0);
        job.kind = JobKind::Tag;
        job.train = None;
        job.tag = Some(TagProgress {
            items_total: 2_000,
            items_done: 500,
            items_failed: 3,
            shards_retried: 1,
            items_per_second: 812.04,
            ..TagProgress::default()
        });
        assert_eq!(
            line_at(&mut LineLog::default(), &job, Instant::now()).as_deref(),
            Some(
                "job-1: running, 500/2000 items, 812.0 items/s, 3 with errors, 1 shard(s) retried"
            )
        );
    }
}
