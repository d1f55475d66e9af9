//! Catalogues, checkpoints and tags on S3: a real S3 server (s3s-fs, on
//! loopback, data on disk) behind object_store's standard AWS_* settings. A
//! whole tag job on s3://, an outage of the server mid-job (ridden out,
//! exactly once), and permanent faults that name the bucket.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atelier_proto::JobState;
use atelier_tests::cluster::Cluster;
use atelier_tests::s3::S3Server;
use atelier_tests::{atelier, atelier_ok, python, runtime, train_quick_color_model};

/// The AWS_* variables are process-wide: one S3 test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn cluster_dir(root: &Path) -> PathBuf {
    let dir = root.join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A catalogue generated straight into S3 and a model trained from it into S3.
fn catalogue_and_model(items: &str, rows_per_group: &str) -> (String, String) {
    let catalog = "s3://catalogs/fashion".to_string();
    let model = "s3://models/color".to_string();
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        items,
        "--out",
        &catalog,
        "--size",
        "48x64",
        "--rows-per-group",
        rows_per_group,
    ]);
    train_quick_color_model(&catalog, &model);
    (catalog, model)
}

#[test]
fn a_tag_job_reads_and_writes_s3() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let (catalog, model) = catalogue_and_model("1200", "200");
    let mut cluster = Cluster::start(&cluster_dir(dir.path()), None, &[]);
    cluster.add_worker(&[]);
    cluster.add_worker(&[]);
    let job = cluster.submit_tag(&catalog, &model, "s3://tags/run-1", "200");
    let done = runtime().block_on(cluster.wait_done(&job, Duration::from_secs(300)));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    // The objects are files under the server's root: read them as a consumer would.
    let out = s3.root.join("tags/run-1");
    let read = python(&["tests/python/read_tags.py", out.to_str().unwrap(), "1200"]);
    assert!(read.contains("\"parts\": 6"), "{read}");
    // And through S3 itself, as a reader elsewhere would.
    let read = python(&["tests/python/read_tags.py", "s3://tags/run-1", "1200"]);
    assert!(read.contains("\"parts\": 6"), "{read}");

    // The same output again with --overwrite: the old objects go in one bulk
    // delete at submit and the run writes a fresh set, never a mix.
    std::fs::write(out.join("part-00099.parquet"), b"left from another run").unwrap();
    let again = cluster.submit(&[
        "submit",
        "tag",
        "--catalog",
        &catalog,
        "--checkpoint",
        &model,
        "--out",
        "s3://tags/run-1",
        "--shard-rows",
        "400",
        "--overwrite",
    ]);
    let done = runtime().block_on(cluster.wait_done(&again, Duration::from_secs(300)));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(!out.join("part-00099.parquet").exists());
    let read = python(&["tests/python/read_tags.py", out.to_str().unwrap(), "1200"]);
    assert!(read.contains("\"parts\": 3"), "{read}");
}

#[test]
fn an_s3_outage_mid_job_is_ridden_out_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&dir.path().join("s3"));
    let (catalog, model) = catalogue_and_model("2000", "100");
    let mut cluster = Cluster::start(&cluster_dir(dir.path()), None, &[]);
    cluster.add_worker(&[]);
    let job = cluster.submit_tag(&catalog, &model, "s3://tags/run-2", "100");
    let rt = runtime();
    let midway = rt.block_on(
        cluster.wait_for(&job, Duration::from_secs(300), "two shards", |j| {
            j.tag.as_ref().is_some_and(|t| t.shards_done >= 2) || j.state.is_terminal()
        }),
    );
    s3.kill();
    // The outage must hit a running job, not one already done.
    assert_eq!(midway.state, JobState::Running, "{midway:?}");
    eprintln!("s3 down at {:?}", midway.tag);
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    s3.restart();
    let done = rt.block_on(cluster.wait_done(&job, Duration::from_secs(300)));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(down.elapsed() >= Duration::from_secs(3));
    let out = s3.root.join("tags/run-2");
    python(&["tests/python/read_tags.py", out.to_str().unwrap(), "2000"]);
}

#[test]
fn permanent_s3_faults_name_the_bucket_or_key() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let _s3 = S3Server::start(&dir.path().join("s3"));
    let (catalog, model) = catalogue_and_model("200", "100");
    let cluster = Cluster::start(&cluster_dir(dir.path()), None, &[]);

    let missing = cluster.cli(&[
        "submit",
        "tag",
        "--catalog",
        "s3://no-such-bucket/fashion",
        "--checkpoint",
        &model,
        "--out",
        "s3://tags/run-3",
    ]);
    assert!(!missing.status.success());
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(error.contains("no-such-bucket"), "{error}");

    let missing_key = cluster.cli(&[
        "submit",
        "tag",
        "--catalog",
        &catalog,
        "--checkpoint",
        "s3://models/no-such-model",
        "--out",
        "s3://tags/run-3",
    ]);
    let error = String::from_utf8_lossy(&missing_key.stderr);
    assert!(
        !missing_key.status.success() && error.contains("no-such-model"),
        "{error}"
    );

    let bad_credentials = Command::new(atelier_tests::atelier_bin())
        .args(["catalog", "inspect", &catalog])
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&bad_credentials.stderr);
    assert!(!bad_credentials.status.success(), "{error}");
    assert!(error.contains("catalogs"), "{error}");
    // The right credentials read it.
    let ok = atelier(&["catalog", "inspect", &catalog]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
