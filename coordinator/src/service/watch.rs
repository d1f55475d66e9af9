//! `WatchJob`'s stream: the job as it stands, then each change, until it
//! ends. Changes come from the event loop's broadcast; a watcher too slow to
//! keep up loses some of them, and then reads the job as it stands now, so
//! it never misses the end.

use atelier_proto::{JobId, JobStatus};
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

/// `first`, then `job_id`'s changes from `events`; after a lag, the job as
/// `current` reads it. Ends after a terminal state, or when the events end.
pub(super) fn job_updates<F>(
    first: JobStatus,
    events: broadcast::Receiver<JobStatus>,
    current: F,
) -> impl Stream<Item = JobStatus> + Send
where
    F: Fn(&JobId) -> Option<JobStatus> + Send + Sync + 'static,
{
    let job_id = first.id.clone();
    futures::stream::unfold(
        (Some(first), events, job_id, current, false),
        |(first, mut events, job_id, current, done)| async move {
            if done {
                return None;
            }
            let job = match first {
                Some(job) => job,
                None => loop {
                    match events.recv().await {
                        Ok(job) if job.id == job_id => break job,
                        Ok(_) => continue,
                        // Changes were lost, this job's end among them
                        // perhaps: the job as it stands now stands for them.
                        Err(RecvError::Lagged(_)) => match current(&job_id) {
                            Some(job) => break job,
                            None => continue,
                        },
                        Err(RecvError::Closed) => return None,
                    }
                },
            };
            let done = job.state.is_terminal();
            Some((job, (None, events, job_id, current, done)))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use atelier_proto::{JobKind, JobState, StageTimes};
    use futures::StreamExt;

    use super::*;

    fn job(id: &str, state: JobState) -> JobStatus {
        JobStatus {
            id: id.into(),
            kind: JobKind::Tag,
            state,
            created_unix_ms: 0,
            updated_unix_ms: 0,
            error: None,
            description: String::new(),
            tag: None,
            train: None,
            stages: StageTimes::default(),
            metrics: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_watcher_that_fell_behind_still_sees_its_job_end() {
        // A buffer of 4, and a watcher that reads nothing while 20 changes
        // of other jobs and the end of its own go by.
        let (sender, events) = broadcast::channel(4);
        let watched = job("job-w", JobState::Running);
        let updates = job_updates(watched.clone(), events, |id: &JobId| {
            (id.as_str() == "job-w").then(|| job("job-w", JobState::Succeeded))
        });
        futures::pin_mut!(updates);
        assert_eq!(updates.next().await.unwrap().state, JobState::Running);
        for n in 0..10 {
            sender
                .send(job(&format!("job-{n}"), JobState::Running))
                .unwrap();
        }
        sender.send(job("job-w", JobState::Succeeded)).unwrap();
        for n in 10..20 {
            sender
                .send(job(&format!("job-{n}"), JobState::Running))
                .unwrap();
        }
        let rest: Vec<JobStatus> =
            tokio::time::timeout(Duration::from_secs(5), updates.collect::<Vec<_>>())
                .await
                .expect("the watch ends instead of waiting for a change that was lost");
        assert_eq!(rest.last().map(|j| j.state), Some(JobState::Succeeded));
        drop(sender);
    }

    #[tokio::test]
    async fn a_watcher_that_keeps_up_sees_each_change_of_its_job_and_ends_with_it() {
        let (sender, events) = broadcast::channel(16);
        let updates = job_updates(job("job-w", JobState::Pending), events, |_: &JobId| None);
        futures::pin_mut!(updates);
        assert_eq!(updates.next().await.unwrap().state, JobState::Pending);
        sender.send(job("job-x", JobState::Running)).unwrap();
        sender.send(job("job-w", JobState::Running)).unwrap();
        sender.send(job("job-w", JobState::Failed)).unwrap();
        sender.send(job("job-w", JobState::Running)).unwrap();
        let states: Vec<JobState> = updates.map(|j| j.state).collect().await;
        assert_eq!(states, vec![JobState::Running, JobState::Failed]);
    }
}
