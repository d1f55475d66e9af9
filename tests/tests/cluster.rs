//! The coordinator and workers as real processes on loopback: exactly-once
//! tagging, killed workers and coordinators, a frozen coordinator, corrupt
//! images, bad catalogues, cancellation, draining, and the bearer token.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow_array::StringArray;
use atelier_catalog::{render_item, GenerateOptions};
use atelier_catalog::{CatalogWriter, StoreLocation, WriterOptions};
use atelier_proto::JobState;
use atelier_tests::cluster::Cluster;
use atelier_tests::output::{assert_exactly_once, read_column};
use atelier_tests::partition::Partition;
use atelier_tests::{atelier_ok, runtime, written_since};

/// Clusters share two cores; one at a time keeps their timing honest.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Made once per test binary: a 5,000-item catalogue and a small model.
struct Fixture {
    _dir: tempfile::TempDir,
    catalog: String,
    checkpoint: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        // 250 rows per group, 8 groups per file: three files of 2,000, 2,000 and 1,000.
        atelier_ok(&[
            "catalog",
            "generate",
            "--items",
            "5000",
            "--out",
            &path("catalog"),
            "--size",
            "48x64",
            "--rows-per-group",
            "250",
        ]);
        atelier_ok(&[
            "catalog",
            "generate",
            "--items",
            "300",
            "--out",
            &path("train"),
            "--size",
            "48x64",
            "--seed",
            "1",
        ]);
        atelier_ok(&[
            "train",
            "--model-type",
            "pool",
            "--arch",
            "resnet18",
            "--image-size",
            "32",
            "--n-epochs",
            "1",
            "--batch-size",
            "32",
            "--catalog",
            &path("train"),
            "--checkpoint",
            &path("model"),
        ]);
        Fixture {
            catalog: path("catalog"),
            checkpoint: path("model"),
            _dir: dir,
        }
    })
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap()
}

const SLOW: Duration = Duration::from_secs(240);

#[test]
fn three_workers_tag_five_thousand_items_exactly_once() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    for _ in 0..3 {
        cluster.add_worker(&[]);
    }
    let out = dir.path().join("tags");
    // Asking for GPU decoding changes nothing on CPU lanes: they decode on
    // their cores.
    let job = cluster.submit_tag_with(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "500",
        &["--gpu-decode"],
    );
    let rt = runtime();
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let tag = done.tag.unwrap();
    assert_eq!(
        (tag.items_total, tag.items_done, tag.items_failed),
        (5000, 5000, 0)
    );
    assert_eq!((tag.shards_total, tag.shards_done), (10, 10));
    assert_exactly_once(Path::new(&fixture.catalog), &out);
    let manifest = manifest(&out);
    assert_eq!(manifest["rows"], 5000);
    assert_eq!(manifest["parts"].as_array().unwrap().len(), 10);
    assert!(manifest["model_version"]
        .as_str()
        .unwrap()
        .contains("step="));
    // Every worker took part.
    for worker in &cluster.workers {
        assert!(
            worker.count("task complete") > 0,
            "{} did no work",
            worker.name
        );
    }
    let listed = cluster.cli_ok(&["jobs"]);
    assert!(
        listed.contains(&job) && listed.contains("succeeded"),
        "{listed}"
    );
    let listed = cluster.cli_ok(&["jobs", "--state", "pending,running", "--state", "failed"]);
    assert_eq!(listed.trim(), "no jobs");
    let listed = cluster.cli_ok(&["jobs", "--state", "succeeded"]);
    assert!(listed.contains(&job), "{listed}");
    let refused = cluster.cli(&["jobs", "--state", "done"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("one of pending, running"),
        "{stderr}"
    );
    // What a downstream team sees, through pyarrow and DuckDB alone.
    let read = atelier_tests::python(&["tests/python/read_tags.py", out.to_str().unwrap(), "5000"]);
    assert!(read.contains("\"rows\": 5000"), "{read}");
}

/// A catalogue of one 2,400-row group under `dir`.
fn one_group_catalogue(dir: &Path) -> String {
    let catalog = dir.join("catalog").to_str().unwrap().to_string();
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "2400",
        "--out",
        &catalog,
        "--size",
        "48x64",
        "--rows-per-group",
        "2400",
    ]);
    catalog
}

/// Waits until every worker of `cluster` has registered, so that a job
/// submitted next is planned for all of them.
fn wait_registered(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .workers
        .iter()
        .any(|w| w.count("registered with the coordinator") == 0)
    {
        assert!(Instant::now() < deadline, "the workers did not register");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tag job of `catalog` without `--shard-rows`: the coordinator sizes it.
fn submit_unsized(cluster: &Cluster, catalog: &str, out: &Path) -> String {
    cluster.submit(&[
        "submit",
        "tag",
        "--catalog",
        catalog,
        "--checkpoint",
        &fixture().checkpoint,
        "--out",
        out.to_str().unwrap(),
    ])
}

fn part_rows(out: &Path) -> Vec<u64> {
    manifest(out)["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .collect()
}

/// The coordinator sizes shards from the registered workers when a job does not
/// say: one 2,400-row group on two workers (at least 4 shards each, never under
/// 512 rows) becomes 5 slices of that group, which the workers read in part.
#[test]
fn one_large_row_group_is_sliced_so_every_worker_has_work() {
    fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = one_group_catalogue(dir.path());
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    for _ in 0..2 {
        cluster.add_worker(&[]);
    }
    wait_registered(&cluster);
    let out = dir.path().join("tags");
    let job = submit_unsized(&cluster, &catalog, &out);
    let done = runtime().block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let tag = done.tag.unwrap();
    assert_eq!((tag.items_done, tag.items_failed), (2400, 0));
    assert_eq!((tag.shards_total, tag.shards_done), (5, 5));
    assert_exactly_once(Path::new(&catalog), &out);
    assert_eq!(part_rows(&out), vec![480; 5]);
    for worker in &cluster.workers {
        assert!(
            worker.count("task complete") > 0,
            "{} did no work",
            worker.name
        );
    }
}

/// A cluster whose leases expire 1.5 s after a worker's last heartbeat.
fn quick_lease_cluster(dir: &Path) -> Cluster {
    Cluster::start(
        dir,
        None,
        &[
            "--lease-timeout-ms",
            "1500",
            "--heartbeat-interval-ms",
            "300",
        ],
    )
}

/// `kill -9` of worker `index` as soon as it has leased a task.
fn kill_once_leased(cluster: &mut Cluster, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[index].count("task leased") == 0 {
        assert!(Instant::now() < deadline, "the worker never leased a task");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.workers[index].kill();
}

/// A slice whose worker dies is retried whole: its part file is written once,
/// by the retry, and no row of the group is lost or doubled.
#[test]
fn a_worker_killed_mid_slice_costs_a_retry_not_a_row() {
    fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = one_group_catalogue(dir.path());
    let mut cluster = quick_lease_cluster(dir.path());
    let doomed = cluster.add_worker(&[]);
    cluster.add_worker(&[]);
    wait_registered(&cluster);
    let out = dir.path().join("tags");
    let job = submit_unsized(&cluster, &catalog, &out);
    kill_once_leased(&mut cluster, doomed);
    let done = runtime().block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let tag = done.tag.unwrap();
    assert!(tag.shards_retried >= 1, "{tag:?}");
    assert_eq!((tag.items_done, tag.shards_total), (2400, 5));
    assert_exactly_once(Path::new(&catalog), &out);
    assert_eq!(part_rows(&out), vec![480; 5]);
}

#[test]
fn a_worker_killed_mid_shard_costs_a_retry_not_a_row() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_lease_cluster(dir.path());
    let doomed = cluster.add_worker(&[]);
    let out = dir.path().join("tags");
    let job = cluster.submit_tag(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "1000",
    );
    kill_once_leased(&mut cluster, doomed);
    cluster.add_worker(&[]);
    cluster.add_worker(&[]);
    let rt = runtime();
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(done.tag.as_ref().unwrap().shards_retried >= 1, "{done:?}");
    assert_exactly_once(Path::new(&fixture.catalog), &out);
    let coordinator = cluster.coordinator.as_ref().unwrap();
    assert!(coordinator.count("lease expired") >= 1 || coordinator.count("retrying task") >= 1);
}

#[test]
fn a_coordinator_killed_mid_job_resumes_it_after_a_restart() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        None,
        &[
            "--lease-timeout-ms",
            "3000",
            "--heartbeat-interval-ms",
            "300",
        ],
    );
    cluster.add_worker(&[]);
    cluster.add_worker(&[]);
    let out = dir.path().join("tags");
    let job = cluster.submit_tag(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "500",
    );
    let rt = runtime();
    let before = rt.block_on(cluster.wait_for(&job, SLOW, "some shards done", |j| {
        j.tag.as_ref().is_some_and(|t| t.shards_done >= 2)
    }));
    assert!(
        !before.state.is_terminal(),
        "the job ended before the kill: {before:?}"
    );
    // A user's watch, as a nightly `submit --wait` holds one, outlives the kill.
    let watcher = Watcher::start(cluster.cli_spawn(&["status", &job, "--watch"]));
    watcher.wait_for_a_line(SLOW);
    cluster.kill_coordinator();
    std::thread::sleep(Duration::from_millis(800));
    // It comes back as the libtorch-free binary deployments run, on the
    // state `atelier coordinator` wrote: the two are interchangeable.
    cluster.use_standalone_coordinator();
    cluster.restart_coordinator();
    let restarted = cluster.coordinator.as_ref().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", restarted.pid().unwrap())).unwrap();
    assert!(
        maps.contains("atelier-coordinator"),
        "not the standalone binary"
    );
    assert!(
        !maps.contains("libtorch"),
        "atelier-coordinator maps libtorch"
    );
    let done = rt.block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let tag = done.tag.unwrap();
    assert_eq!((tag.items_done, tag.shards_done), (5000, 10));
    assert_exactly_once(Path::new(&fixture.catalog), &out);
    let restarted = cluster.coordinator.as_ref().unwrap();
    assert!(restarted.count("coordinator state loaded") == 1);
    let (status, stdout, stderr) = watcher.finish(Duration::from_secs(30));
    assert!(
        status.success() && stdout.contains("succeeded"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("lost the coordinator") && stderr.contains("answers again"),
        "{stderr}"
    );
}

/// A CLI process whose stderr is read as it comes.
struct Watcher {
    child: std::process::Child,
    stderr: std::sync::Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(mut child: std::process::Child) -> Self {
        use std::io::BufRead;
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self {
            child,
            stderr,
            reader,
        }
    }

    /// Until the process has said something, i.e. it is connected and
    /// watching.
    fn wait_for_a_line(&self, deadline: Duration) {
        let start = Instant::now();
        while self.stderr.lock().unwrap().is_empty() {
            assert!(start.elapsed() < deadline, "the watch said nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Exit status, stdout and stderr once it exits; killed and failed
    /// after `deadline`.
    fn finish(mut self, deadline: Duration) -> (std::process::ExitStatus, String, String) {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                panic!(
                    "still running after {deadline:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        )
    }
}

#[test]
fn a_frozen_coordinator_costs_a_worker_a_timeout_not_a_hang() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    cluster.add_worker(&[]);
    wait_registered(&cluster);
    let coordinator = cluster.coordinator.as_ref().unwrap();
    // Stopped, the coordinator still takes the bytes (the kernel does) but
    // answers nothing: the idle worker's long poll on its Work stream must
    // end in an error after its wait and allowance, not hang.
    coordinator.pause();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[0].count("lease: no answer within") == 0 {
        if Instant::now() > deadline {
            coordinator.resume();
            panic!("the worker never gave up on the stopped coordinator");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    coordinator.resume();
    // And it carries on: a job submitted now is tagged by it.
    let out = dir.path().join("tags");
    let job = cluster.submit_tag(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "2000",
    );
    let done = runtime().block_on(cluster.wait_done(&job, SLOW));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_exactly_once(Path::new(&fixture.catalog), &out);
    assert!(cluster.workers[0].count("task complete") > 0);
}

fn corrupt_catalogue(dir: &Path) -> (String, BTreeMap<String, bool>) {
    let url = dir.join("corrupt").to_str().unwrap().to_string();
    let options = GenerateOptions {
        width: 48,
        height: 64,
        ..Default::default()
    };
    let mut broken = BTreeMap::new();
    let items: Vec<_> = (0..400u64)
        .map(|i| {
            let mut item = render_item(&options, i).unwrap();
            let corrupt = i % 50 == 7;
            if corrupt {
                let image = item.image.as_mut().unwrap();
                image.truncate(image.len() / 3);
            }
            broken.insert(item.item_id.clone(), corrupt);
            item
        })
        .collect();
    let rt = runtime();
    rt.block_on(async {
        let writer_options = WriterOptions {
            rows_per_group: 100,
            ..Default::default()
        };
        let mut writer =
            CatalogWriter::new(StoreLocation::parse(&url).unwrap(), writer_options).unwrap();
        writer.write(items).await.unwrap();
        writer.finish().await.unwrap();
    });
    (url, broken)
}

#[test]
fn corrupt_images_become_error_rows_and_the_job_still_succeeds() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (catalog, broken) = corrupt_catalogue(dir.path());
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    cluster.add_worker(&[]);
    let out = dir.path().join("tags");
    let args = [
        "submit",
        "tag",
        "--catalog",
        &catalog,
        "--checkpoint",
        &fixture.checkpoint,
        "--out",
        out.to_str().unwrap(),
        "--shard-rows",
        "200",
        "--wait",
    ];
    let output = cluster.cli(&args);
    let stdout = atelier_tests::succeeded(&args, &output);
    assert!(
        stdout.contains("succeeded") && stdout.contains("8 with errors"),
        "{stdout}"
    );
    // Without a terminal the wait reports in lines on stderr, not a hidden bar.
    let job = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{job}: succeeded, 400/400 items"))
            && stderr.contains("8 with errors"),
        "{stderr}"
    );
    let ids = read_column(&out, "item_id");
    let errors = read_column(&out, "error");
    let colours = read_column(&out, "color");
    assert_eq!(ids.len(), 400);
    for ((id, error), colour) in ids.iter().zip(&errors).zip(&colours) {
        let id = id.as_ref().unwrap();
        assert_eq!(error.is_some(), broken[id], "{id}: {error:?}");
        assert_eq!(colour.is_some(), !broken[id], "{id}");
    }
    assert_eq!(manifest(&out)["items_with_errors"], 8);
}

#[test]
fn bad_catalogues_are_refused_at_submit_with_the_reason() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), None, &[]);
    let not_parquet = dir.path().join("garbage");
    std::fs::create_dir_all(&not_parquet).unwrap();
    std::fs::write(
        not_parquet.join("part-00000.parquet"),
        b"this is not parquet",
    )
    .unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let no_image = dir.path().join("no-image");
    std::fs::create_dir_all(&no_image).unwrap();
    write_parquet_without_image(&no_image.join("part-00000.parquet"));
    let cases = [
        (
            not_parquet.to_str().unwrap().to_string(),
            "part-00000.parquet",
        ),
        (empty.to_str().unwrap().to_string(), "empty"),
        (
            dir.path().join("missing").to_str().unwrap().to_string(),
            "not found",
        ),
        (no_image.to_str().unwrap().to_string(), "image"),
    ];
    for (catalog, expected) in cases {
        let out = dir.path().join("out");
        let output = cluster.cli(&[
            "submit",
            "tag",
            "--catalog",
            &catalog,
            "--checkpoint",
            &fixture.checkpoint,
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{catalog} was accepted");
        assert!(
            stderr.contains("catalogue rejected") && stderr.contains(expected),
            "{catalog}: {stderr}"
        );
    }
}

fn write_parquet_without_image(path: &Path) {
    use std::sync::Arc;
    let ids = StringArray::from(vec!["a", "b"]);
    let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "item_id",
        arrow_schema::DataType::Utf8,
        false,
    )]));
    let batch =
        arrow_array::RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ids)]).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn cancel_stops_the_work() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    let worker = cluster.add_worker(&[]);
    let out = dir.path().join("tags");
    let job = cluster.submit_tag(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "250",
    );
    let rt = runtime();
    rt.block_on(cluster.wait_for(&job, SLOW, "progress", |j| {
        j.tag.as_ref().is_some_and(|t| t.items_done > 0)
    }));
    let stdout = cluster.cli_ok(&["cancel", &job]);
    assert!(stdout.contains("cancelled"), "{stdout}");
    std::thread::sleep(Duration::from_millis(1500));
    let leased = cluster.workers[worker].count("task leased");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cluster.workers[worker].count("task leased"),
        leased,
        "the worker kept leasing"
    );
    let job = rt.block_on(cluster.job(&job)).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.tag.unwrap().shards_done < 20);
    assert!(!out.join("_SUCCESS").exists());
}

#[test]
fn sigterm_drains_the_task_in_hand() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    let worker = cluster.add_worker(&[]);
    let out = dir.path().join("tags");
    let job = cluster.submit_tag(
        &fixture.catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "1000",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[worker].count("task leased") == 0 {
        assert!(Instant::now() < deadline, "the worker never leased a task");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = cluster.workers[worker]
        .terminate(Duration::from_secs(60))
        .unwrap();
    assert!(status.success(), "the worker exited with {status}");
    let log = cluster.workers[worker].log_text();
    assert_eq!(cluster.workers[worker].count("task leased"), 1, "{log}");
    assert_eq!(cluster.workers[worker].count("task complete"), 1, "{log}");
    // Committed before the worker heard back; the read snapshot follows
    // within a tick (progress-only changes are published at most every 50 ms).
    let rt = runtime();
    let job = rt.block_on(cluster.wait_for(
        &job,
        Duration::from_secs(10),
        "the drained shard",
        |j| j.tag.as_ref().is_some_and(|t| t.shards_done >= 1),
    ));
    assert_eq!(job.tag.unwrap().shards_done, 1);
}

#[test]
fn a_wrong_or_missing_token_is_refused() {
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), Some("s3cret"), &[]);
    cluster.cli_ok(&["jobs"]);
    let missing = std::process::Command::new(atelier_tests::atelier_bin())
        .args(["jobs", "--coordinator", &cluster.address])
        .env_remove("ATELIER_TOKEN")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing bearer token"));
    let wrong = std::process::Command::new(atelier_tests::atelier_bin())
        .args([
            "jobs",
            "--coordinator",
            &cluster.address,
            "--token",
            "guess",
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong bearer token"));
    // A worker with the wrong token stops at once and says why.
    cluster.token = Some("guess".into());
    let worker = cluster.add_worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cluster.workers[worker].exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker kept running with a wrong token"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(cluster.workers[worker]
        .log_text()
        .contains("wrong bearer token"));
}

/// A worker cut off from the coordinator (not from the store) mid-shard,
/// and stalled while job A finished without it and job B replaced A's
/// output using another model, comes back still cut off and writes its
/// shard. Its write lands where nothing reads it: every part of B's output
/// carries B's model.
#[test]
fn a_worker_cut_off_mid_shard_cannot_write_into_a_later_jobs_output() {
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_lease_cluster(dir.path());
    let upstream = cluster.address.trim_start_matches("http://").to_string();
    let line = Partition::start(&upstream);
    let cut_off = cluster.add_worker_via(&format!("http://{}", line.address), &[], &[]);
    let out = dir.path().join("tags");
    let out_url = out.to_str().unwrap();
    let job_a = cluster.submit_tag(&fixture.catalog, &fixture.checkpoint, out_url, "1000");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[cut_off].count("task leased") == 0 {
        assert!(Instant::now() < deadline, "the worker never leased a task");
        std::thread::sleep(Duration::from_millis(5));
    }
    line.cut();
    cluster.workers[cut_off].pause();

    cluster.add_worker(&[]);
    let rt = runtime();
    let a = rt.block_on(cluster.wait_done(&job_a, SLOW));
    assert_eq!(a.state, JobState::Succeeded, "{a:?}");
    let model_b = dir.path().join("model-b");
    copy_dir(Path::new(&fixture.checkpoint), &model_b);
    let job_b = cluster.submit_tag_with(
        &fixture.catalog,
        model_b.to_str().unwrap(),
        out_url,
        "1000",
        &["--overwrite"],
    );
    let b = rt.block_on(cluster.wait_done(&job_b, SLOW));
    assert_eq!(b.state, JobState::Succeeded, "{b:?}");

    let resumed = std::time::SystemTime::now();
    cluster.workers[cut_off].resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    let late = loop {
        let late = written_since(&out, resumed);
        if !late.is_empty() {
            break late;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off worker never wrote its shard:\n{}",
            cluster.workers[cut_off].log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let a write in progress finish before the output is read.
    std::thread::sleep(Duration::from_millis(500));
    let late = written_since(&out, resumed).into_iter().chain(late);
    for path in late {
        let relative = path
            .strip_prefix(&out)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            relative.starts_with(&format!("_attempts/{job_a}/")),
            "a late write landed at {relative}"
        );
    }
    let versions = read_column(&out, "model_version");
    assert_eq!(versions.len(), 5000);
    assert!(
        versions
            .iter()
            .all(|v| v.as_deref().is_some_and(|v| v.contains("model-b"))),
        "a part of B's output carries another model"
    );
    assert_exactly_once(Path::new(&fixture.catalog), &out);
    assert!(out.join("_SUCCESS").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A catalogue of 40 photos behind `file://` URIs; one of them is a named
/// pipe that no one writes, so reading it hangs as a dead NFS mount would.
fn catalogue_with_a_hanging_read(dir: &Path) -> String {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let stuck = photos.join("stuck.jpg");
    let path = std::ffi::CString::new(stuck.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    let options = GenerateOptions {
        width: 48,
        height: 64,
        ..Default::default()
    };
    let items: Vec<_> = (0..40u64)
        .map(|i| {
            let mut item = render_item(&options, i).unwrap();
            let file = if i == 17 {
                stuck.clone()
            } else {
                let file = photos.join(format!("{i}.jpg"));
                std::fs::write(&file, item.image.take().unwrap()).unwrap();
                file
            };
            item.image = None;
            item.image_uri = Some(format!("file://{}", file.display()));
            item
        })
        .collect();
    let url = dir.join("catalog").to_str().unwrap().to_string();
    runtime().block_on(async {
        let writer_options = WriterOptions {
            image: false,
            image_uri: true,
            ..Default::default()
        };
        let mut writer =
            CatalogWriter::new(StoreLocation::parse(&url).unwrap(), writer_options).unwrap();
        writer.write(items).await.unwrap();
        writer.finish().await.unwrap();
    });
    url
}

#[test]
fn a_compute_thread_stuck_in_a_read_gives_its_lease_up_instead_of_hanging_the_job() {
    // Heartbeats come from another thread and would keep the stuck task's
    // lease alive for ever; the watchdog sees no batch for 3 s and gives up.
    let fixture = fixture();
    let _one = one_cluster();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue_with_a_hanging_read(dir.path());
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    let worker = cluster.add_worker(&["--stall-timeout-s", "3"]);
    let out = dir.path().join("tags");
    let job = cluster.submit_tag_with(
        &catalog,
        &fixture.checkpoint,
        out.to_str().unwrap(),
        "1000",
        &["--max-attempts", "1"],
    );
    let done = runtime().block_on(cluster.wait_done(&job, Duration::from_secs(90)));
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let error = done.error.unwrap_or_default();
    assert!(error.contains("no sign of life for"), "{error}");
    // The worker cannot run anything on a stuck thread: it stops, failing,
    // for its supervisor to start a fresh one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cluster.workers[worker].exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the stuck worker did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    assert!(cluster.workers[worker].count("stuck in a read or a device call") > 0);
}
