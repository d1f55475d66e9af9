//! A chaos run. A 20,000-item tag job and a world-2 train job run together
//! on S3 while a worker is killed, the coordinator is killed and restarted, a
//! worker is cut off from the coordinator, and the S3 server restarts, each
//! at a moment drawn from a seed. Every item must come out exactly once from
//! one model version, the train job must leave a loadable checkpoint, and
//! both must end within a bound (no hang).
//!
//! The seed is printed; `ATELIER_CHAOS_SEED=<seed>` replays a run's faults
//! in the same order at the same moments.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use atelier_proto::{JobState, JobStatus};
use atelier_tests::cluster::Cluster;
use atelier_tests::output::{assert_exactly_once, read_column};
use atelier_tests::partition::Partition;
use atelier_tests::s3::S3Server;
use atelier_tests::{atelier_ok, checkpoint_weights, runtime, train_quick_color_model};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const TAG_ITEMS: &str = "20000";
/// Both jobs end within this, whatever the faults: past it the run hangs.
const BOUND: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` of a worker that connects directly; a fresh one replaces it.
    KillWorker,
    /// `kill -9` of the coordinator, then a restart on its state file.
    RestartCoordinator,
    /// The proxied worker loses its route to the coordinator for longer
    /// than a lease, then gets it back (it can still reach S3).
    CutOffWorker,
    /// The S3 server goes away and comes back on the same data.
    RestartS3,
}

fn seed() -> u64 {
    std::env::var("ATELIER_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("ATELIER_CHAOS_SEED is a number"))
        .unwrap_or_else(rand::random)
}

fn submit_train(cluster: &Cluster, catalog: &str, checkpoint: &str) -> String {
    cluster.submit(&[
        "submit",
        "train",
        "--world-size",
        "2",
        "--max-restarts",
        "10",
        "--collective-timeout-s",
        "10",
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
        "5",
        "--val-fraction",
        "0.1",
        "--catalog",
        catalog,
        "--checkpoint",
        checkpoint,
    ])
}

fn states(cluster: &Cluster, jobs: &[&str]) -> Vec<Option<JobState>> {
    let rt = runtime();
    jobs.iter()
        .map(|job| rt.block_on(cluster.job(job)).map(|j| j.state))
        .collect()
}

#[test]
fn a_tag_job_and_a_train_job_come_through_seeded_chaos_exactly_once() {
    let seed = seed();
    eprintln!("chaos seed {seed}: replay with ATELIER_CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&dir.path().join("s3"));
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        TAG_ITEMS,
        "--out",
        "s3://catalogs/shop",
        "--size",
        "32x32",
        "--rows-per-group",
        "500",
    ]);
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "320",
        "--out",
        "s3://catalogs/train",
        "--size",
        "32x32",
        "--rows-per-group",
        "80",
        "--seed",
        "1",
    ]);
    train_quick_color_model("s3://catalogs/train", "s3://models/tagger");

    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let mut cluster = Cluster::start(
        &cluster_dir,
        None,
        &[
            "--lease-timeout-ms",
            "3000",
            "--heartbeat-interval-ms",
            "500",
        ],
    );
    let proxy = Partition::start(&cluster.address);
    let one_core = ["--compute-threads", "1"];
    let mut direct = vec![cluster.add_worker(&one_core), cluster.add_worker(&one_core)];
    cluster.add_worker_via(&proxy.address, &one_core, &[]);

    let tag = cluster.submit_tag_with(
        "s3://catalogs/shop",
        "s3://models/tagger",
        "s3://tags/nightly",
        "1000",
        &["--max-attempts", "3"],
    );
    let train = submit_train(&cluster, "s3://catalogs/train", "s3://models/trained");
    let jobs = [tag.as_str(), train.as_str()];

    let mut faults = [
        Fault::KillWorker,
        Fault::RestartCoordinator,
        Fault::CutOffWorker,
        Fault::RestartS3,
    ];
    faults.shuffle(&mut rng);
    let started = Instant::now();
    for fault in faults {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..6_000)));
        eprintln!(
            "chaos: {fault:?} at {:.1} s, jobs {:?}",
            started.elapsed().as_secs_f64(),
            states(&cluster, &jobs)
        );
        match fault {
            Fault::KillWorker => {
                let victim = direct.remove(rng.random_range(0..direct.len()));
                cluster.workers[victim].kill();
                std::thread::sleep(Duration::from_millis(rng.random_range(500..2_000)));
                direct.push(cluster.add_worker(&one_core));
            }
            Fault::RestartCoordinator => {
                cluster.kill_coordinator();
                std::thread::sleep(Duration::from_millis(rng.random_range(300..2_000)));
                cluster.restart_coordinator();
            }
            Fault::CutOffWorker => {
                proxy.cut();
                std::thread::sleep(Duration::from_millis(rng.random_range(4_000..8_000)));
                proxy.heal();
            }
            Fault::RestartS3 => {
                s3.kill();
                std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));
                s3.restart();
            }
        }
    }
    eprintln!(
        "chaos over at {:.1} s, jobs {:?}",
        started.elapsed().as_secs_f64(),
        states(&cluster, &jobs)
    );

    let rt = runtime();
    let wait = |job: &str| -> JobStatus {
        let left = BOUND.saturating_sub(started.elapsed());
        rt.block_on(cluster.wait_done(job, left))
    };
    let tagged = wait(&tag);
    let trained = wait(&train);
    eprintln!("both ended at {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(tagged.state, JobState::Succeeded, "seed {seed}: {tagged:?}");
    assert_eq!(
        trained.state,
        JobState::Succeeded,
        "seed {seed}: {trained:?}"
    );

    // Every item once, from one model.
    let out = s3.root.join("tags/nightly");
    assert_exactly_once(&s3.root.join("catalogs/shop"), &out);
    let versions: BTreeSet<String> = read_column(&out, "model_version")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(versions.len(), 1, "seed {seed}: {versions:?}");

    // The checkpoint loads, at the last step.
    let progress = trained.train.as_ref().unwrap();
    let (weights, step) = checkpoint_weights("s3://models/trained");
    assert!(!weights.is_empty());
    assert_eq!(step, progress.total_steps, "seed {seed}: {progress:?}");
    assert_no_leftover_staging(&out);
}

/// What a committed output holds besides its parts: nothing a reader of
/// `part-*.parquet` could pick up by mistake.
fn assert_no_leftover_staging(out: &Path) {
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let expected = name.starts_with("part-")
            || name == "_manifest.json"
            || name == "_SUCCESS"
            || name == "_attempts";
        assert!(expected, "unexpected {name} in the output");
    }
}
