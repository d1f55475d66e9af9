#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use std::time::{Duration, Instant};

use atelier_proto::PROTOCOL_VERSION;
use atelier_proto::*;
use atelier_proto::{GangOptions, InferenceOptions, Task, TrainOptions};

use super::{Now, Reserved, State};
use crate::error::CoordinatorError;
use crate::records::TaskState;
use crate::store::{Loaded, StateStore};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Every test's clock starts here: a fixed wall time, so records are
/// stamped alike in every run.
fn start() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: 1_767_225_600_000,
    }
}

thread_local! {
    static WORKERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A fresh worker id, as the event loop would draw one.
fn next_worker_id() -> WorkerId {
    WORKERS.with(|n| {
        n.set(n.get() + 1);
        WorkerId::new(format!("w-{}", n.get()))
    })
}

fn registration() -> Registration {
    Registration {
        protocol_version: PROTOCOL_VERSION,
        hostname: "test".into(),
        devices: vec![],
        memory_bytes: 0,
        cpu_cores: 2,
        atelier_version: "0".into(),
        process_id: String::new(),
        lane: 0,
    }
}

fn shard(index: usize) -> TaskWork {
    TaskWork::Tag(ShardWork {
        catalog: "file:///c".into(),
        columns: Default::default(),
        ranges: vec![FileRowGroups {
            file: "file:///c/part-00000.parquet".into(),
            row_groups: vec![index as u32],
            rows: None,
        }],
        checkpoints: vec!["file:///ck".into()],
        output: format!("file:///o/part-{index:05}.parquet"),
        inference: InferenceOptions::default(),
        rows: 100,
    })
}

fn tag_spec() -> JobSpec {
    tag_spec_into("file:///o")
}

fn tag_spec_into(output: &str) -> JobSpec {
    JobSpec::Tag(TagJobSpec {
        // Inputs elsewhere than the outputs the tests choose.
        catalog: "s3://shop/catalog".into(),
        columns: Default::default(),
        checkpoints: vec!["s3://shop/model".into()],
        output: output.into(),
        target_shard_rows: Some(100),
        max_attempts: None,
        inference: InferenceOptions::default(),
        overwrite: false,
    })
}

fn outcome() -> TaskOutcome {
    TaskOutcome {
        rows_written: 100,
        items_failed: 1,
        ..Default::default()
    }
}

fn job_with(state: &mut State, shards: usize, attempts: u32) -> JobId {
    let now = start();
    let works = (0..shards).map(shard).collect();
    state
        .submit("job-1".into(), tag_spec(), works, attempts, now)
        .unwrap()
        .id
}

#[test]
fn a_job_runs_to_its_manifest_and_counts_its_items() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 2, 3);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let a = state.lease(&worker, now).unwrap().unwrap();
    let b = state.lease(&worker, now).unwrap().unwrap();
    assert!(state.lease(&worker, now).unwrap().is_none());
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Running);
    state.complete(&worker, &a.lease, outcome(), now).unwrap();
    // A repeated report of the same attempt changes nothing.
    state.complete(&worker, &a.lease, outcome(), now).unwrap();
    assert!(state.take_finalize().is_empty());
    state.complete(&worker, &b.lease, outcome(), now).unwrap();
    let finalize = state.take_finalize();
    assert_eq!(finalize.len(), 1);
    assert_eq!(finalize[0].parts.len(), 2);
    state.finalized(&job, Ok(()), now);
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    let tag = status.tag.unwrap();
    assert_eq!(
        (tag.items_done, tag.items_failed, tag.shards_done),
        (200, 2, 2)
    );
}

#[test]
fn an_expired_lease_is_fenced_off_and_the_task_goes_to_another_worker() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 1, 3);
    let slow = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let first = state.lease(&slow, now).unwrap().unwrap();
    // Heartbeats renew the lease...
    let later = now.after(TIMEOUT / 2);
    assert!(state
        .heartbeat(&slow, std::slice::from_ref(&first.lease), later)
        .unwrap()
        .is_empty());
    assert_eq!(state.expire(now.after(TIMEOUT)), 0);
    // ...until they stop.
    let expired_at = later.after(TIMEOUT);
    assert_eq!(state.expire(expired_at), 1);
    let fast = state
        .register(next_worker_id(), registration(), expired_at)
        .unwrap();
    let second = state.lease(&fast, expired_at).unwrap().unwrap();
    assert_eq!(second.lease.attempt, 2);
    // The stalled worker wakes up: every report it makes is refused.
    let report = TaskProgressReport::default();
    let refused = state
        .progress(&slow, &first.lease, report, expired_at)
        .unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::StaleLease { .. }),
        "{refused}"
    );
    assert!(state
        .complete(&slow, &first.lease, outcome(), expired_at)
        .is_err());
    let revoked = state
        .heartbeat(&slow, std::slice::from_ref(&first.lease), expired_at)
        .unwrap();
    assert_eq!(revoked, vec![first.lease.clone()]);
    state
        .complete(&fast, &second.lease, outcome(), expired_at)
        .unwrap();
    state.take_finalize();
    state.finalized(&job, Ok(()), now);
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(status.tag.unwrap().shards_retried, 1);
}

#[test]
fn a_task_is_retried_up_to_its_attempts_then_fails_the_job_with_its_reason() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 2, 2);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let failure = || TaskFailure {
        reason: "store unreachable".into(),
        kind: FailureKind::Retryable,
    };
    let first = state.lease(&worker, now).unwrap().unwrap();
    state.fail(&worker, &first.lease, failure(), now).unwrap();
    let other = state.lease(&worker, now).unwrap().unwrap();
    let again = state.lease(&worker, now).unwrap().unwrap();
    assert_eq!(again.lease.task_id, first.lease.task_id);
    state.fail(&worker, &again.lease, failure(), now).unwrap();
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("after 2 attempts") && error.contains("store unreachable"),
        "{error}"
    );
    // The job's other running task is told to stop.
    assert!(state
        .progress(&worker, &other.lease, Default::default(), now)
        .unwrap());
}

#[test]
fn a_non_retryable_failure_ends_the_job_at_once() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 1, 5);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let task = state.lease(&worker, now).unwrap().unwrap();
    let failure = TaskFailure {
        reason: "checkpoint has no colour head".into(),
        kind: FailureKind::Permanent,
    };
    state.fail(&worker, &task.lease, failure, now).unwrap();
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Failed);
}

#[test]
fn cancelling_revokes_leases_and_empties_the_queue() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 3, 3);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let running = state.lease(&worker, now).unwrap().unwrap();
    assert_eq!(state.cancel(&job, now).unwrap().state, JobState::Cancelled);
    assert!(state.lease(&worker, now).unwrap().is_none());
    assert!(state
        .progress(&worker, &running.lease, Default::default(), now)
        .unwrap());
    let revoked = state
        .heartbeat(&worker, std::slice::from_ref(&running.lease), now)
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert!(matches!(
        state.cancel(&"job-none".into(), now).unwrap_err(),
        CoordinatorError::JobNotFound(_)
    ));
}

#[test]
fn workers_of_another_protocol_version_and_unknown_workers_are_refused() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let old = Registration {
        protocol_version: PROTOCOL_VERSION + 1,
        ..registration()
    };
    assert!(matches!(
        state.register(next_worker_id(), old, now).unwrap_err(),
        CoordinatorError::ProtocolMismatch { .. }
    ));
    assert!(matches!(
        state.lease(&"w-unknown".into(), now).unwrap_err(),
        CoordinatorError::UnknownWorker(_)
    ));
}

#[test]
fn a_restart_from_the_store_keeps_attempts_and_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 3, 3);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let done = state.lease(&worker, now).unwrap().unwrap();
    let running = state.lease(&worker, now).unwrap().unwrap();
    state
        .complete(&worker, &done.lease, outcome(), now)
        .unwrap();
    let mut store = StateStore::open(&path).unwrap();
    let (jobs, tasks) = state.take_dirty();
    store.save(&jobs, &tasks).unwrap();
    drop(store);

    let loaded: Loaded = StateStore::open(&path).unwrap().load().unwrap();
    let mut restored = State::restore(TIMEOUT, loaded, now);
    // The worker comes back under a new id and still holds its lease.
    let again = restored
        .register(next_worker_id(), registration(), now)
        .unwrap();
    assert!(restored
        .heartbeat(&again, std::slice::from_ref(&running.lease), now)
        .unwrap()
        .is_empty());
    let last = restored.lease(&again, now).unwrap().unwrap();
    // The work comes back from its own table.
    assert_eq!(last.work, shard(2));
    assert!(restored.lease(&again, now).unwrap().is_none());
    restored
        .complete(&again, &running.lease, outcome(), now)
        .unwrap();
    restored
        .complete(&again, &last.lease, outcome(), now)
        .unwrap();
    assert_eq!(restored.take_finalize().len(), 1);
    restored.finalized(&job, Ok(()), now);
    let status = restored.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(status.tag.unwrap().items_done, 300);
    assert_eq!(
        restored.task(&done.lease.task_id).unwrap().state,
        TaskState::Done
    );
}

fn gang_job(state: &mut State, world: u32, max_restarts: u32) -> JobId {
    gang_job_per_worker(state, world, None, max_restarts)
}

fn gang_job_per_worker(
    state: &mut State,
    world: u32,
    ranks_per_worker: Option<u32>,
    max_restarts: u32,
) -> JobId {
    // Each gang job of a test is a job of its own, writing a checkpoint of
    // its own.
    let now = start();
    let n = state.jobs.len() + 1;
    let spec = TrainJobSpec {
        catalog: "file:///c".into(),
        columns: Default::default(),
        checkpoint: format!("file:///k{n}"),
        options: TrainOptions {
            task: Task::Color,
            ..TrainOptions::default()
        },
        gang: GangOptions {
            world_size: world,
            ranks_per_worker,
            max_restarts,
            ..GangOptions::default()
        },
    };
    let works = (0..world)
        .map(|rank| TaskWork::Train {
            spec: spec.clone(),
            rank,
        })
        .collect();
    state
        .submit(
            format!("train-{n}").into(),
            JobSpec::Train(spec),
            works,
            max_restarts + 1,
            now,
        )
        .unwrap()
        .id
}

fn workers(state: &mut State, n: usize, now: Now) -> Vec<WorkerId> {
    (0..n)
        .map(|_| {
            state
                .register(next_worker_id(), registration(), now)
                .unwrap()
        })
        .collect()
}

#[test]
fn a_gang_starts_all_at_once_on_distinct_workers_or_not_at_all() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 3, 1);
    let idle = workers(&mut state, 3, now);
    // Ranks never go out one by one through the plain queue.
    assert!(state.lease(&idle[0], now).unwrap().is_none());
    assert!(state.place_gang(&idle[..2], now).is_none());
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Pending);
    let placed = state.place_gang(&idle, now).unwrap();
    let ranks: Vec<(WorkerId, u32)> = placed
        .iter()
        .map(|(w, a)| match &a.work {
            TaskWork::Train { rank, .. } => (w.clone(), *rank),
            _ => panic!("not a rank"),
        })
        .collect();
    assert_eq!(
        ranks,
        vec![
            (idle[0].clone(), 0),
            (idle[1].clone(), 1),
            (idle[2].clone(), 2)
        ]
    );
    assert!(!state.has_waiting_gangs());
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Running);
}

/// `lanes` lanes of one worker process.
fn process(state: &mut State, name: &str, lanes: u32, now: Now) -> Vec<WorkerId> {
    (0..lanes)
        .map(|lane| {
            let registration = Registration {
                process_id: name.into(),
                lane,
                ..registration()
            };
            state.register(next_worker_id(), registration, now).unwrap()
        })
        .collect()
}

fn rank_lanes(placed: &[(WorkerId, Assignment)]) -> Vec<WorkerId> {
    let mut ranks: Vec<(u32, WorkerId)> = placed
        .iter()
        .map(|(w, a)| match &a.work {
            TaskWork::Train { rank, .. } => (*rank, w.clone()),
            _ => panic!("not a rank"),
        })
        .collect();
    ranks.sort();
    ranks.into_iter().map(|(_, w)| w).collect()
}

#[test]
fn ranks_per_worker_puts_exactly_that_many_consecutive_ranks_on_each_worker() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    gang_job_per_worker(&mut state, 4, Some(2), 0);
    let small = process(&mut state, "small", 1, now);
    let a = process(&mut state, "a", 2, now);
    let b = process(&mut state, "b", 3, now);
    // The one-lane worker is no use; "a" and "b" alone are not enough yet
    // when only one lane of "a" is free.
    let idle: Vec<WorkerId> = [&small[..], &a[..1], &b[..]].concat();
    assert!(state.place_gang(&idle, now).is_none());
    let idle: Vec<WorkerId> = [&small[..], &a[..], &b[..]].concat();
    let lanes = rank_lanes(&state.place_gang(&idle, now).unwrap());
    // Fullest worker first: ranks 0-1 on "b", 2-3 on "a".
    assert_eq!(
        lanes,
        vec![b[0].clone(), b[1].clone(), a[0].clone(), a[1].clone()]
    );
}

#[test]
fn by_default_a_gang_packs_onto_the_fewest_workers() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    gang_job(&mut state, 3, 0);
    let single = workers(&mut state, 2, now);
    let four = process(&mut state, "four", 4, now);
    let idle: Vec<WorkerId> = [&single[..], &four[..]].concat();
    let lanes = rank_lanes(&state.place_gang(&idle, now).unwrap());
    assert_eq!(lanes, four[..3].to_vec());
    // Without a multi-lane worker the ranks spread over single-lane ones.
    gang_job(&mut state, 2, 0);
    let lanes = rank_lanes(&state.place_gang(&single, now).unwrap());
    assert_eq!(lanes, single);
}

#[test]
fn a_failed_rank_restarts_the_whole_gang_until_the_restarts_run_out() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 2, 1);
    let idle = workers(&mut state, 2, now);
    let placed = state.place_gang(&idle, now).unwrap();
    let failure = TaskFailure {
        reason: "all-reduce with rank 0: connection reset".into(),
        kind: FailureKind::Retryable,
    };
    state
        .fail(&placed[1].0, &placed[1].1.lease, failure.clone(), now)
        .unwrap();
    // The other rank's lease is gone too: its heartbeat tells it to stop.
    let revoked = state
        .heartbeat(&placed[0].0, &[placed[0].1.lease.clone()], now)
        .unwrap();
    assert_eq!(revoked, vec![placed[0].1.lease.clone()]);
    let status = state.status(&job, now).unwrap();
    let train = status.train.unwrap();
    assert_eq!(train.restarts.len(), 1);
    assert!(
        train.restarts[0].cause.starts_with("rank 1: all-reduce"),
        "{:?}",
        train.restarts
    );
    assert!(state.has_waiting_gangs());

    let again = state.place_gang(&idle, now).unwrap();
    assert!(again.iter().all(|(_, a)| a.lease.attempt == 2));
    state
        .fail(&again[0].0, &again[0].1.lease, failure, now)
        .unwrap();
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("gave up after 1 restart"));
}

#[test]
fn a_non_retryable_rank_failure_fails_the_job_at_once() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 2, 5);
    let idle = workers(&mut state, 2, now);
    let placed = state.place_gang(&idle, now).unwrap();
    let failure = TaskFailure {
        reason: "invalid options: --lr must be positive".into(),
        kind: FailureKind::Permanent,
    };
    state
        .fail(&placed[0].0, &placed[0].1.lease, failure, now)
        .unwrap();
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("--lr"));
}

#[test]
fn a_gang_that_waits_too_long_fails_with_the_reason() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 4, 0);
    workers(&mut state, 2, now);
    let submitted = state.status(&job, now).unwrap().created_unix_ms;
    state.expire_gangs(Now {
        unix_ms: submitted + 599_000,
        ..now
    });
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Pending);
    state.expire_gangs(Now {
        unix_ms: submitted + 601_000,
        ..now
    });
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("needs 4 ranks") && error.contains("2 registered"),
        "{error}"
    );
}

#[test]
fn a_tag_job_with_no_worker_for_the_timeout_fails_saying_so() {
    let now = start();
    let mut state = State::new(TIMEOUT).with_no_worker_timeout(Duration::from_secs(600));
    let job = job_with(&mut state, 2, 3);
    let at = |seconds: u64| now.after(Duration::from_secs(seconds));
    // A worker comes and goes: the wait counts from when it went.
    workers(&mut state, 1, at(0));
    state.expire_unserved_jobs(at(0));
    state.expire(at(100));
    state.expire_unserved_jobs(at(100));
    state.expire_unserved_jobs(at(699));
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Pending);
    state.expire_unserved_jobs(at(701));
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("no worker") && error.contains("600s"),
        "{error}"
    );
}

#[test]
fn a_job_submitted_to_a_coordinator_long_without_workers_still_gets_its_wait() {
    let now = start();
    let mut state = State::new(TIMEOUT).with_no_worker_timeout(Duration::from_secs(600));
    state.expire_unserved_jobs(now);
    let later = now.after(Duration::from_secs(5000));
    let job = state
        .submit(
            "job-late".into(),
            tag_spec(),
            (0..2).map(shard).collect(),
            3,
            later,
        )
        .unwrap()
        .id;
    state.expire_unserved_jobs(later.after(Duration::from_secs(10)));
    assert_eq!(state.status(&job, later).unwrap().state, JobState::Pending);
    // With a worker registered, waiting in the queue is no reason to fail.
    workers(&mut state, 1, later);
    state.expire_unserved_jobs(later.after(Duration::from_secs(700)));
    assert_eq!(state.status(&job, later).unwrap().state, JobState::Pending);
}

#[test]
fn waiting_gangs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 2, 0);
    let mut store = StateStore::open(&path).unwrap();
    let (jobs, tasks) = state.take_dirty();
    store.save(&jobs, &tasks).unwrap();
    drop(store);
    let loaded: Loaded = StateStore::open(&path).unwrap().load().unwrap();
    let mut restored = State::restore(TIMEOUT, loaded, now);
    assert!(restored.has_waiting_gangs());
    let idle = workers(&mut restored, 2, now);
    assert_eq!(restored.place_gang(&idle, now).unwrap().len(), 2);
    assert_eq!(restored.status(&job, now).unwrap().state, JobState::Running);
}

/// A job's figures counted from scratch, task by task.
fn recount(state: &State, job: &JobId) -> super::tally::Tally {
    let mut total = super::tally::Tally::default();
    for task in &state.job_tasks[job] {
        total.add(&super::tally::Tally::of(&state.tasks[task]));
    }
    total
}

fn assert_figures_match(state: &mut State, job: &JobId, context: &str) {
    let now = start();
    let expected = recount(state, job);
    let status = state.status(job, now).unwrap();
    let tag = status.tag.unwrap();
    assert_eq!(
        (
            tag.items_total,
            tag.items_done,
            tag.items_failed,
            tag.shards_done,
            tag.shards_failed,
            tag.shards_retried
        ),
        (
            expected.items_total,
            expected.items_done,
            expected.items_failed,
            expected.shards_done,
            expected.shards_failed,
            expected.shards_retried
        ),
        "{context}"
    );
    for (kept, counted) in status.stages.values().iter().zip(expected.stages.values()) {
        assert!(
            (kept - counted).abs() < 1e-6,
            "{context}: stages {kept} vs {counted}"
        );
    }
}

#[test]
fn job_figures_kept_as_tasks_change_equal_a_recount_after_every_step() {
    use rand::{Rng, SeedableRng};
    for seed in 0..16 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("state.db")).unwrap();
        let mut now = start();
        let mut state = State::new(TIMEOUT);
        let jobs: Vec<JobId> = (0..2)
            .map(|j| {
                let works = (0..6).map(shard).collect();
                state
                    .submit(
                        format!("job-{j}").into(),
                        tag_spec_into(&format!("file:///o{j}")),
                        works,
                        3,
                        now,
                    )
                    .unwrap()
                    .id
            })
            .collect();
        let mut workers: Vec<WorkerId> = (0..3)
            .map(|_| {
                state
                    .register(next_worker_id(), registration(), now)
                    .unwrap()
            })
            .collect();
        let mut held: Vec<(WorkerId, LeaseRef)> = Vec::new();
        for step in 0..150 {
            let pick = |rng: &mut rand::rngs::StdRng, n: usize| rng.random_range(0..n);
            match rng.random_range(0..10) {
                0..=2 => {
                    let worker = workers[pick(&mut rng, workers.len())].clone();
                    if let Ok(Some(assignment)) = state.lease(&worker, now) {
                        held.push((worker, assignment.lease));
                    }
                }
                3 | 4 if !held.is_empty() => {
                    let (worker, lease) = &held[pick(&mut rng, held.len())];
                    let report = TaskProgressReport {
                        items_done: rng.random_range(0..100),
                        items_failed: rng.random_range(0..3),
                        stages: StageTimes {
                            decode: rng.random_range(0.0..2.0),
                            gpu_decode: rng.random_range(0.0..1.0),
                            forward: rng.random_range(0.0..2.0),
                            ..Default::default()
                        },
                        train: None,
                    };
                    let _ = state.progress(worker, lease, report, now);
                }
                5 | 6 if !held.is_empty() => {
                    let (worker, lease) = held.swap_remove(pick(&mut rng, held.len()));
                    let outcome = TaskOutcome {
                        rows_written: 100,
                        items_failed: rng.random_range(0..5),
                        stages: StageTimes {
                            write: rng.random_range(0.0..1.0),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let _ = state.complete(&worker, &lease, outcome, now);
                }
                7 if !held.is_empty() => {
                    let (worker, lease) = held.swap_remove(pick(&mut rng, held.len()));
                    let failure = TaskFailure {
                        reason: "broken".into(),
                        kind: if rng.random_bool(0.8) {
                            FailureKind::Retryable
                        } else {
                            FailureKind::Permanent
                        },
                    };
                    let _ = state.fail(&worker, &lease, failure, now);
                }
                8 => {
                    // Every lease runs out; the workers come back under new ids.
                    now = now.after(TIMEOUT * 4);
                    state.expire(now);
                    held.clear();
                    workers = (0..3)
                        .map(|_| {
                            state
                                .register(next_worker_id(), registration(), now)
                                .unwrap()
                        })
                        .collect();
                }
                9 if rng.random_bool(0.1) => {
                    let _ = state.cancel(&jobs[pick(&mut rng, jobs.len())], now);
                }
                _ => {}
            }
            let (dirty_jobs, dirty_tasks) = state.take_dirty();
            store.save(&dirty_jobs, &dirty_tasks).unwrap();
            for job in &jobs {
                assert_figures_match(&mut state, job, &format!("seed {seed} step {step}"));
            }
        }
        // Rebuilt from the store, the figures are counted afresh and agree.
        drop(store);
        let loaded = StateStore::open(&dir.path().join("state.db"))
            .unwrap()
            .load()
            .unwrap();
        let mut restored = State::restore(TIMEOUT, loaded, now);
        for job in &jobs {
            let before = state.status(job, now).unwrap().tag.unwrap();
            let after = restored.status(job, now).unwrap().tag.unwrap();
            assert_eq!(
                (before.items_done, before.shards_done, before.shards_retried),
                (after.items_done, after.shards_done, after.shards_retried),
                "seed {seed}: restored"
            );
            assert_figures_match(&mut restored, job, &format!("seed {seed}: restored"));
        }
    }
}

#[test]
fn a_second_writer_to_an_unfinished_jobs_output_or_checkpoint_is_refused() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let first = job_with(&mut state, 2, 1);
    let refused = state
        .submit(
            "job-2".into(),
            tag_spec_into("file:///o/"),
            vec![shard(0)],
            1,
            now,
        )
        .unwrap_err();
    assert!(
        matches!(&refused, CoordinatorError::DestinationBusy { job, .. } if *job == first),
        "{refused}"
    );
    assert_eq!(refused.grpc_code(), tonic::Code::AlreadyExists);
    assert!(
        state.status(&"job-2".into(), now).is_err(),
        "a refused job leaves no trace"
    );
    // The very same job again is the first one, not a second.
    let again = state
        .submit("job-2".into(), tag_spec(), vec![shard(0)], 1, now)
        .unwrap();
    assert_eq!(again.id, first);
    assert!(state.status(&"job-2".into(), now).is_err());
    // Inside the first one's output, or around it, is the same objects.
    for (id, output) in [("job-7", "file:///o/2026"), ("job-8", "file:///")] {
        let refused = state
            .submit(id.into(), tag_spec_into(output), vec![shard(0)], 1, now)
            .unwrap_err();
        assert!(
            refused.to_string().contains(first.as_str()),
            "{output}: {refused}"
        );
    }
    // Elsewhere is fine, and so is the same place once the first has ended.
    state
        .submit(
            "job-3".into(),
            tag_spec_into("file:///oo"),
            vec![shard(0)],
            1,
            now,
        )
        .unwrap();
    state.cancel(&first, now).unwrap();
    state
        .submit("job-4".into(), tag_spec(), vec![shard(0)], 1, now)
        .unwrap();

    let training = gang_job(&mut state, 2, 0);
    let JobSpec::Train(train_spec) = state.jobs[&training].spec.clone() else {
        unreachable!()
    };
    let mut other_run = train_spec.clone();
    other_run.options.lr = 0.5;
    let other_run = JobSpec::Train(other_run);
    let refused = state
        .submit("job-5".into(), other_run.clone(), Vec::new(), 1, now)
        .unwrap_err();
    assert!(refused.to_string().contains(training.as_str()), "{refused}");
    let again = state
        .submit(
            "job-5".into(),
            JobSpec::Train(train_spec),
            Vec::new(),
            1,
            now,
        )
        .unwrap();
    assert_eq!(again.id, training);
    state.cancel(&training, now).unwrap();
    state
        .submit("job-6".into(), other_run, Vec::new(), 1, now)
        .unwrap();
}

#[test]
fn a_reserved_place_is_held_until_its_submit_commits_or_releases() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let Reserved::Granted(first) = state.reserve(&tag_spec()).unwrap() else {
        panic!("an empty place is granted");
    };
    // While the first submit plans (and may empty the output), no other
    // submit may prepare a place that shares objects with it.
    for output in ["file:///o", "file:///o/2026", "file:///"] {
        let refused = state.reserve(&tag_spec_into(output)).unwrap_err();
        assert!(
            matches!(refused, CoordinatorError::DestinationReserved { .. }),
            "{output}: {refused}"
        );
        assert!(refused.is_retryable());
    }
    assert!(matches!(
        state.reserve(&tag_spec_into("file:///elsewhere")),
        Ok(Reserved::Granted(_))
    ));
    // A failed plan gives the place back.
    state.release(first);
    let Reserved::Granted(second) = state.reserve(&tag_spec()).unwrap() else {
        panic!("a released place is granted again");
    };
    let job = state
        .commit(second, "job-1".into(), vec![shard(0)], 1, now)
        .unwrap();
    // Committed, the same spec again is that job; another is refused by it.
    assert_eq!(
        state.reserve(&tag_spec()).unwrap(),
        Reserved::Existing(job.id.clone())
    );
    assert!(matches!(
        state.reserve(&tag_spec_into("file:///o/x")),
        Err(CoordinatorError::DestinationBusy { .. })
    ));
    // A reservation commits once.
    assert!(state
        .commit(second, "job-2".into(), vec![shard(0)], 1, now)
        .is_err());
}

#[test]
fn transitions_stamp_the_time_they_are_given() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = job_with(&mut state, 1, 1);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let later = now.after(Duration::from_secs(5));
    let task = state.lease(&worker, later).unwrap().unwrap();
    let status = state.status(&job, later).unwrap();
    assert_eq!(status.created_unix_ms, now.unix_ms);
    assert_eq!(status.updated_unix_ms, later.unix_ms);
    let done = later.after(Duration::from_secs(2));
    state
        .complete(&worker, &task.lease, outcome(), done)
        .unwrap();
    state.finalized(&job, Ok(()), done);
    let status = state
        .status(&job, done.after(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(status.updated_unix_ms, done.unix_ms);
    // 100 items over the 2 s from the first lease to the end, whenever asked.
    assert_eq!(status.tag.unwrap().items_per_second, 50.0);
}

#[test]
fn a_gang_whose_ranks_all_expire_at_once_restarts_once() {
    // One process holding all ranks dies: every rank's lease expires in the
    // same sweep, and that is one failure, not world_size of them.
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 4, 3);
    let idle = workers(&mut state, 4, now);
    state.place_gang(&idle, now).unwrap();
    assert_eq!(state.expire(now.after(TIMEOUT)), 4);
    let status = state.status(&job, now).unwrap();
    // Still running: the gang waits to start again from its checkpoint.
    assert_eq!(status.state, JobState::Running, "{:?}", status.error);
    assert!(state.has_waiting_gangs());
    let restarts = status.train.unwrap().restarts;
    assert_eq!(restarts.len(), 1, "{restarts:?}");
}

#[test]
fn a_gang_running_when_the_coordinator_restarted_restarts_once_if_its_ranks_are_gone() {
    let now = start();
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(&dir.path().join("state.db")).unwrap();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 3, 1);
    let idle = workers(&mut state, 3, now);
    state.place_gang(&idle, now).unwrap();
    let (jobs, tasks) = state.take_dirty();
    store.save(&jobs, &tasks).unwrap();
    let mut restored = State::restore(TIMEOUT, store.load().unwrap(), now);
    // None of the ranks heartbeats again: their leases lapse together.
    restored.expire(now.after(TIMEOUT));
    let status = restored.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Running, "{:?}", status.error);
    assert_eq!(status.train.unwrap().restarts.len(), 1);
}

/// A one-shard job with its shard done: the manifest is being written.
fn finalizing_job(state: &mut State, now: Now) -> JobId {
    let job = job_with(state, 1, 1);
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let task = state.lease(&worker, now).unwrap().unwrap();
    state
        .complete(&worker, &task.lease, outcome(), now)
        .unwrap();
    assert_eq!(state.take_finalize().len(), 1);
    job
}

#[test]
fn a_job_cancelled_while_its_manifest_is_written_gets_no_success_marker() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = finalizing_job(&mut state, now);
    assert_eq!(state.cancel(&job, now).unwrap().state, JobState::Cancelled);
    // The manifest writer asks before it writes _SUCCESS, and is told no.
    assert!(!state.seal(&job));
    state.finalized(&job, Err("cancelled while finalizing".into()), now);
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Cancelled);
}

#[test]
fn a_cancel_after_the_success_marker_was_allowed_leaves_the_job_to_succeed() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = finalizing_job(&mut state, now);
    assert!(state.seal(&job));
    // Its output is whole and about to be marked so: the cancel changes nothing.
    assert_ne!(state.cancel(&job, now).unwrap().state, JobState::Cancelled);
    state.finalized(&job, Ok(()), now);
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Succeeded);
}

fn tag_reading(catalog: &str, output: &str) -> JobSpec {
    let JobSpec::Tag(spec) = tag_spec_into(output) else {
        unreachable!()
    };
    JobSpec::Tag(TagJobSpec {
        catalog: catalog.into(),
        columns: Default::default(),
        overwrite: true,
        ..spec
    })
}

#[test]
fn a_job_may_not_write_where_an_unfinished_job_reads_or_writes() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    // A train job writes file:///k1 and reads file:///c.
    let training = gang_job(&mut state, 1, 0);
    // --overwrite around its checkpoint would delete it.
    let refused = state
        .reserve(&tag_reading("s3://shop/other", "file:///"))
        .unwrap_err();
    assert!(refused.to_string().contains(training.as_str()), "{refused}");
    // Nor may a job write over the catalogue another one reads.
    let refused = state
        .reserve(&tag_reading("s3://shop/elsewhere", "file:///c/old-tags"))
        .unwrap_err();
    assert!(
        matches!(&refused, CoordinatorError::InputInUse { job, .. } if *job == training),
        "{refused}"
    );
    assert!(refused.to_string().contains("reads file:///c"), "{refused}");
    // Reading what another job reads is fine.
    assert!(matches!(
        state.reserve(&tag_reading("file:///c", "file:///tags")),
        Ok(Reserved::Granted(_))
    ));
    let _ = now;
}

#[test]
fn a_job_may_not_write_over_its_own_inputs() {
    let mut state = State::new(TIMEOUT);
    // --overwrite into a prefix holding its own catalogue would delete it.
    let refused = state
        .reserve(&tag_reading("file:///shop/catalog", "file:///shop"))
        .unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::InvalidArgument(_)),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("file:///shop/catalog"),
        "{refused}"
    );
}

#[test]
fn lanes_freed_by_shards_are_held_for_a_waiting_gang() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    job_with(&mut state, 50, 1);
    let lanes = workers(&mut state, 3, now);
    let mut running: Vec<Assignment> = lanes
        .iter()
        .map(|lane| state.lease(lane, now).unwrap().unwrap())
        .collect();
    gang_job(&mut state, 2, 0);
    // Each lane finishes its shard and asks for more: two are held for the
    // gang, the third goes on tagging.
    let mut held = Vec::new();
    for (lane, assignment) in lanes.iter().zip(running.drain(..)) {
        state
            .complete(lane, &assignment.lease, outcome(), now)
            .unwrap();
        match state.lease(lane, now).unwrap() {
            None => held.push(lane.clone()),
            Some(next) => assert!(matches!(next.work, TaskWork::Tag(_))),
        }
    }
    assert_eq!(held.len(), 2, "lanes held: {held:?}");
    let placed = state.place_gang(&held, now).unwrap();
    assert_eq!(placed.len(), 2);
    assert!(!state.has_waiting_gangs());
}

#[test]
fn a_gang_larger_than_the_cluster_holds_no_lanes() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    job_with(&mut state, 10, 1);
    let lanes = workers(&mut state, 2, now);
    gang_job(&mut state, 3, 0);
    for lane in &lanes {
        assert!(state.lease(lane, now).unwrap().is_some());
    }
    // Nor does a lane that was last seen a lease timeout ago count.
    let later = now.after(TIMEOUT * 2);
    let third = workers(&mut state, 1, later);
    assert!(state.lease(&third[0], later).unwrap().is_some());
}

#[test]
fn only_rank_0_holding_its_lease_commits_a_checkpoint_and_the_place_is_held_meanwhile() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    let job = gang_job(&mut state, 2, 1);
    let lanes = workers(&mut state, 2, now);
    let placed = state.place_gang(&lanes, now).unwrap();
    let rank = |r: u32| {
        placed
            .iter()
            .find(|(_, a)| matches!(a.work, TaskWork::Train { rank, .. } if rank == r))
            .unwrap()
            .clone()
    };
    let (lane_0, rank_0) = rank(0);
    let (lane_1, rank_1) = rank(1);
    let refused = state
        .begin_checkpoint_commit(&lane_1, &rank_1.lease, now)
        .unwrap_err();
    assert!(refused.to_string().contains("rank 0"), "{refused}");
    let commit = state
        .begin_checkpoint_commit(&lane_0, &rank_0.lease, now)
        .unwrap();
    assert_eq!(commit.job_id, job);
    // Cancelled mid-commit: the place stays held until the write is over.
    state.cancel(&job, now).unwrap();
    let JobSpec::Train(spec) = state.jobs[&job].spec.clone() else {
        unreachable!()
    };
    let mut again = spec.clone();
    again.options.seed += 1;
    let refused = state.reserve(&JobSpec::Train(again.clone())).unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::CheckpointCommitting { .. }),
        "{refused}"
    );
    state.end_checkpoint_commit(&commit);
    assert!(state.reserve(&JobSpec::Train(again)).is_ok());
    // And the cancelled rank may commit no more.
    let refused = state
        .begin_checkpoint_commit(&lane_0, &rank_0.lease, now)
        .unwrap_err();
    assert!(
        matches!(refused, CoordinatorError::StaleLease { .. }),
        "{refused}"
    );
}

#[test]
fn a_lane_that_keeps_failing_is_quarantined_and_its_shards_go_elsewhere() {
    let now = start();
    let mut state = State::new(TIMEOUT);
    job_with(&mut state, 10, 10);
    let lanes = workers(&mut state, 2, now);
    let (broken, healthy) = (&lanes[0], &lanes[1]);
    let machine_fault = TaskFailure {
        reason: "CUDA out of memory".into(),
        kind: FailureKind::Retryable,
    };
    for _ in 0..super::lanes::QUARANTINE_AFTER {
        let task = state.lease(broken, now).unwrap().unwrap();
        state
            .fail(broken, &task.lease, machine_fault.clone(), now)
            .unwrap();
    }
    assert!(state.is_quarantined(broken, now));
    assert!(state.lease(broken, now).unwrap().is_none());
    // The shards it failed are queued again for the healthy lane.
    let task = state.lease(healthy, now).unwrap().unwrap();
    state
        .complete(healthy, &task.lease, outcome(), now)
        .unwrap();
    // After the quarantine, one task on probation; success clears the record.
    let later = now.after(super::lanes::QUARANTINE_FOR + Duration::from_secs(1));
    let task = state.lease(broken, later).unwrap().unwrap();
    state
        .complete(broken, &task.lease, outcome(), later)
        .unwrap();
    assert!(!state.is_quarantined(broken, later));

    // A failure the input causes never counts against the lane.
    let bad_input = TaskFailure {
        reason: "no colour labels".into(),
        kind: FailureKind::Permanent,
    };
    let mut state = State::new(TIMEOUT);
    for n in 0..4 {
        let works = vec![shard(n)];
        let spec = tag_spec_into(&format!("file:///o{n}"));
        state
            .submit(format!("job-{n}").into(), spec, works, 1, now)
            .unwrap();
    }
    let lane = workers(&mut state, 1, now).remove(0);
    for _ in 0..4 {
        let task = state.lease(&lane, now).unwrap().unwrap();
        state
            .fail(&lane, &task.lease, bad_input.clone(), now)
            .unwrap();
    }
    assert!(!state.is_quarantined(&lane, now));
}

#[test]
fn lost_workers_do_not_use_up_a_tasks_attempts_but_have_a_budget_of_their_own() {
    // Preempted workers: each lease expires. With max_attempts 2 the task
    // still runs a third, fourth... time, until the lost-worker budget ends
    // a task that keeps taking its workers down.
    let mut now = start();
    let mut state = State::new(TIMEOUT).with_max_lost_workers(4);
    let job = job_with(&mut state, 1, 2);
    for lost in 1..=3 {
        let worker = state
            .register(next_worker_id(), registration(), now)
            .unwrap();
        let task = state.lease(&worker, now).unwrap().unwrap();
        assert_eq!(task.lease.attempt, lost);
        now = now.after(TIMEOUT);
        assert_eq!(state.expire(now), 1);
        let status = state.status(&job, now).unwrap();
        assert_eq!(status.state, JobState::Running, "{:?}", status.error);
    }
    // A reported failure still counts against max_attempts: one of two.
    let worker = state
        .register(next_worker_id(), registration(), now)
        .unwrap();
    let task = state.lease(&worker, now).unwrap().unwrap();
    let failure = TaskFailure {
        reason: "store unreachable".into(),
        kind: FailureKind::Retryable,
    };
    state.fail(&worker, &task.lease, failure, now).unwrap();
    assert_eq!(state.status(&job, now).unwrap().state, JobState::Running);
    // The fourth lost worker ends it, saying why.
    let task = state.lease(&worker, now).unwrap().unwrap();
    assert_eq!(task.lease.attempt, 5);
    let later = now.after(TIMEOUT * 2);
    assert_eq!(state.expire(later), 1);
    let status = state.status(&job, later).unwrap();
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("lost its worker 4 times (max 4") && error.contains("stopped heartbeating"),
        "{error}"
    );
}

#[test]
fn a_gang_counts_lost_workers_apart_from_rank_failures() {
    let mut now = start();
    let mut state = State::new(TIMEOUT).with_max_lost_workers(2);
    // max_restarts 1: one rank failure may be retried.
    let job = gang_job(&mut state, 2, 1);
    let failure = TaskFailure {
        reason: "all-reduce with rank 0: connection reset".into(),
        kind: FailureKind::Retryable,
    };
    // A preemption, then a failure, then a lost peer: the job runs on.
    let idle = workers(&mut state, 2, now);
    state.place_gang(&idle, now).unwrap();
    now = now.after(TIMEOUT);
    state.expire(now);
    let idle = workers(&mut state, 2, now);
    let placed = state.place_gang(&idle, now).unwrap();
    state
        .fail(&placed[1].0, &placed[1].1.lease, failure.clone(), now)
        .unwrap();
    // Rank 0's peer vanishes: rank 0 reports its lost peer before the
    // peer's lease expires, and that counts as a lost worker too.
    let placed = state.place_gang(&idle, now).unwrap();
    let peer_lost = TaskFailure {
        reason: "all-reduce with rank 1: connection reset".into(),
        kind: FailureKind::PeerLost,
    };
    state
        .fail(&placed[0].0, &placed[0].1.lease, peer_lost, now)
        .unwrap();
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Running, "{:?}", status.error);
    let kinds: Vec<RestartKind> = status
        .train
        .unwrap()
        .restarts
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            RestartKind::LostWorker,
            RestartKind::Failure,
            RestartKind::LostWorker
        ]
    );
    // A third lost worker is past the budget of two.
    let idle = workers(&mut state, 2, now);
    state.place_gang(&idle, now).unwrap();
    now = now.after(TIMEOUT);
    state.expire(now);
    let status = state.status(&job, now).unwrap();
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("gave up after 2 lost workers (max 2)"),
        "{error}"
    );
}

#[test]
fn a_restart_from_before_kinds_were_recorded_reads_as_a_failure() {
    let old = serde_json::json!({"at_step": 7, "cause": "rank 1: boom", "unix_ms": 5});
    let restart: Restart = serde_json::from_value(old).unwrap();
    assert_eq!(restart.kind, RestartKind::Failure);
}
