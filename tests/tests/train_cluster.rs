//! Train jobs as gangs of real worker processes on loopback: W ranks (two
//! lanes of one worker) equal one process with the global batch, a killed
//! rank restarts the gang from its checkpoint, a killed coordinator costs
//! the gang nothing, and a gang never starts on too few workers.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atelier_proto::{JobState, JobStatus};
use atelier_tests::cluster::Cluster;
use atelier_tests::partition::Partition;
use atelier_tests::{atelier_ok, checkpoint_weights, runtime, written_since};

static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

const SLOW: Duration = Duration::from_secs(300);

fn catalogue(dir: &Path) -> String {
    let out = dir.join("catalog").to_str().unwrap().to_string();
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "240",
        "--out",
        &out,
        "--size",
        "64x80",
        "--rows-per-group",
        "40",
        "--seed",
        "5",
    ]);
    out
}

/// Head-only training without augmentation, in the sampler's order: the
/// ranks differ only in the items they see.
fn equivalence_flags<'a>(catalog: &'a str, checkpoint: &'a str, batch: &'a str) -> Vec<&'a str> {
    vec![
        "--model-type",
        "pool",
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--n-epochs",
        "3",
        "--finetune",
        "false",
        "--augment",
        "false",
        "--schedule",
        "constant",
        "--warmup-steps",
        "2",
        "--lr",
        "0.05",
        "--shuffle-window",
        "0",
        "--val-fraction",
        "0.2",
        "--seed",
        "9",
        "--max-steps",
        "6",
        "--log-every",
        "4",
        "--catalog",
        catalog,
        "--checkpoint",
        checkpoint,
        "--batch-size",
        batch,
    ]
}

#[test]
fn a_gang_of_two_lanes_equals_one_process_with_the_global_batch() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path());
    let single = dir.path().join("single").to_str().unwrap().to_string();
    let ranked = dir.path().join("ranked").to_str().unwrap().to_string();
    // One decode thread, as each worker lane below has (the workers' --threads).
    let mut args = vec!["train", "--threads", "1"];
    args.extend(equivalence_flags(&catalog, &single, "16"));
    atelier_ok(&args);

    // One worker process with two CPU lanes holds both ranks, with the
    // all-reduce overlapping backward (off by default on one host).
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    let worker =
        cluster.add_worker_with_env(&["--device", "cpu,cpu"], &[("ATELIER_RING_OVERLAP", "1")]);
    let mut args = vec![
        "submit",
        "train",
        "--world-size",
        "2",
        "--ranks-per-worker",
        "2",
    ];
    args.extend(equivalence_flags(&catalog, &ranked, "8"));
    let job = cluster.submit(&args);
    let rt = runtime();
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let train = done.train.as_ref().unwrap();
    assert_eq!(train.ranks.len(), 2, "{train:?}");
    assert!(train.restarts.is_empty(), "{train:?}");
    // Logged every 4 steps, the status still ends at the last one, and
    // counts to where --max-steps stops the run.
    assert_eq!((train.step, train.total_steps), (6, 6), "{train:?}");
    assert!(
        train.ranks.iter().all(|r| r.images_per_second > 0.0),
        "{train:?}"
    );

    let (reference, reference_step) = checkpoint_weights(&single);
    let (trained, trained_step) = checkpoint_weights(&ranked);
    assert_eq!((reference_step, trained_step), (6, 6));
    let heads: Vec<&String> = reference
        .keys()
        .filter(|k| k.starts_with("heads."))
        .collect();
    assert_eq!(heads.len(), 6);
    for name in heads {
        let diff = (&trained[name] - &reference[name])
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
    let status = cluster.cli_ok(&["status", &job]);
    assert!(status.contains("rank 1 on"), "{status}");
    assert_eq!(cluster.workers[worker].count("gang assembled"), 2);
    // Rank 0 kept the metrics log, so the run plots like a local one.
    atelier_ok(&["plot", "--checkpoint", &ranked]);
    assert!(Path::new(&ranked).join("plots/curves.png").exists());
}

/// A 2-rank gang on `workers` CPU workers, checkpointing every 4 steps,
/// run until step 6 (short leases, so losses show quickly). Returns the
/// cluster, the job, its checkpoint and its status at step 6.
fn gang_at_step_six(dir: &Path, workers: usize) -> (Cluster, String, String, JobStatus) {
    let catalog = catalogue(dir);
    let checkpoint = dir.join("model").to_str().unwrap().to_string();
    let mut cluster = Cluster::start(
        dir,
        None,
        &[
            "--lease-timeout-ms",
            "3000",
            "--heartbeat-interval-ms",
            "300",
        ],
    );
    for _ in 0..workers {
        cluster.add_worker(&[]);
    }
    let job = cluster.submit(&[
        "submit",
        "train",
        "--world-size",
        "2",
        "--max-restarts",
        "2",
        "--collective-timeout-s",
        "10",
        "--model-type",
        "color",
        "--arch",
        "resnet18",
        "--image-size",
        "64",
        "--n-epochs",
        "3",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "4",
        "--val-fraction",
        "0.2",
        "--log-every",
        "1",
        "--catalog",
        &catalog,
        "--checkpoint",
        &checkpoint,
    ]);
    let at_six = runtime().block_on(cluster.wait_for(&job, SLOW, "step 6", |j| {
        j.train.as_ref().is_some_and(|t| t.step >= 6) || j.state.is_terminal()
    }));
    (cluster, job, checkpoint, at_six)
}

#[test]
fn a_killed_rank_restarts_the_gang_from_its_checkpoint() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, job, checkpoint, _) = gang_at_step_six(dir.path(), 3);
    let busy = (0..cluster.workers.len())
        .find(|&w| cluster.workers[w].count("task leased") > 0)
        .expect("a worker holds a rank");
    cluster.workers[busy].kill();
    let killed_at = Instant::now();

    let done = runtime().block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let train = done.train.as_ref().unwrap();
    assert!(!train.restarts.is_empty(), "{train:?}");
    let restart = &train.restarts[0];
    assert!(restart.cause.contains("rank"), "{restart:?}");
    assert_eq!(train.step, train.total_steps, "{train:?}");
    let (_, step) = checkpoint_weights(&checkpoint);
    assert_eq!(step, train.total_steps);
    let status = cluster.cli_ok(&["status", &job]);
    assert!(status.contains("restart 1 at step"), "{status}");
    // The survivor noticed the dead peer through the ring, not a lease timeout.
    assert!(killed_at.elapsed() < SLOW);
}

#[test]
fn a_coordinator_killed_mid_training_still_ends_the_job_once() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, job, checkpoint, before) = gang_at_step_six(dir.path(), 2);
    assert!(
        !before.state.is_terminal(),
        "ended before the kill: {before:?}"
    );
    cluster.kill_coordinator();
    std::thread::sleep(Duration::from_millis(800));
    cluster.use_standalone_coordinator();
    cluster.restart_coordinator();

    let done = runtime().block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let train = done.train.as_ref().unwrap();
    assert_eq!(train.step, train.total_steps, "{train:?}");
    // The ranks talk to each other, not through the coordinator: they train
    // on through its absence, and its restart costs the gang no restart.
    assert!(train.restarts.is_empty(), "{train:?}");
    let (_, step) = checkpoint_weights(&checkpoint);
    assert_eq!(step, train.total_steps);
    for worker in &cluster.workers[..2] {
        assert!(worker.count("heartbeats reach the coordinator again") >= 1);
        assert_eq!(worker.count("task complete"), 1);
    }
    let restarted = cluster.coordinator.as_ref().unwrap();
    assert_eq!(restarted.count("coordinator state loaded"), 1);
}

#[test]
fn a_gang_never_starts_on_too_few_workers() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path());
    let checkpoint = dir.path().join("model").to_str().unwrap().to_string();
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    let lonely = cluster.add_worker(&[]);
    let job = cluster.submit(&[
        "submit",
        "train",
        "--world-size",
        "2",
        "--gang-timeout-s",
        "2",
        "--model-type",
        "color",
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--n-epochs",
        "1",
        "--catalog",
        &catalog,
        "--checkpoint",
        &checkpoint,
    ]);
    let rt = runtime();
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("needs 2 ranks"), "{error}");
    assert_eq!(cluster.workers[lonely].count("task leased"), 0);

    // Ranks that cannot split evenly over workers are refused at submit.
    let refused = cluster.cli(&[
        "submit",
        "train",
        "--world-size",
        "3",
        "--ranks-per-worker",
        "2",
        "--model-type",
        "color",
        "--catalog",
        &catalog,
        "--checkpoint",
        &checkpoint,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--world-size 3 is not a multiple of --ranks-per-worker 2"),
        "{stderr}"
    );
}

/// Rank 0 cut off from the coordinator (not from the store) mid-training,
/// and paused while the gang restarted elsewhere and finished the job,
/// comes back still cut off and saves a checkpoint step: the checkpoint
/// stays the one the job finished with, every file it names still there.
#[test]
fn a_rank_cut_off_mid_training_cannot_change_the_checkpoint() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path());
    let checkpoint = dir.path().join("model");
    let mut cluster = Cluster::start(
        dir.path(),
        None,
        &[
            "--lease-timeout-ms",
            "1500",
            "--heartbeat-interval-ms",
            "300",
        ],
    );
    let upstream = cluster.address.trim_start_matches("http://").to_string();
    let line = Partition::start(&upstream);
    let cut_off = cluster.add_worker_via(&format!("http://{}", line.address), &[], &[]);
    let job = cluster.submit(&[
        "submit",
        "train",
        "--world-size",
        "1",
        "--max-restarts",
        "2",
        "--model-type",
        "color",
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--n-epochs",
        "2",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "4",
        "--val-fraction",
        "0.2",
        "--log-every",
        "1",
        "--catalog",
        &catalog,
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    let rt = runtime();
    rt.block_on(cluster.wait_for(&job, SLOW, "step 2", |j| {
        j.train.as_ref().is_some_and(|t| t.step >= 2) || j.state.is_terminal()
    }));
    line.cut();
    cluster.workers[cut_off].pause();

    cluster.add_worker(&[]);
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let total_steps = done.train.as_ref().unwrap().total_steps;
    let finished = std::fs::read(checkpoint.join("manifest.json")).unwrap();

    let resumed = std::time::SystemTime::now();
    cluster.workers[cut_off].resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    let late = loop {
        let late: Vec<String> = written_since(&checkpoint, resumed)
            .iter()
            .filter_map(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
            .collect();
        if !late.is_empty() {
            break late;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off rank never saved:\n{}",
            cluster.workers[cut_off].log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Give a manifest write and the deletes after it time to land.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        late.iter().all(|name| name.contains(&format!("{job}-a1"))),
        "the late rank wrote {late:?}"
    );
    assert_eq!(
        std::fs::read(checkpoint.join("manifest.json")).unwrap(),
        finished,
        "the late rank changed the manifest"
    );
    let (weights, step) = checkpoint_weights(checkpoint.to_str().unwrap());
    assert_eq!(step, total_steps);
    assert!(!weights.is_empty());
    let manifest: serde_json::Value = serde_json::from_slice(&finished).unwrap();
    for field in ["weights", "optimizer_state", "metrics_log"] {
        let name = manifest[field].as_str().unwrap();
        assert!(checkpoint.join(name).exists(), "{name} is gone");
    }
}
