//! Observability of real processes: Prometheus counters on the coordinator
//! and a worker move while a tag job runs, the worker answers the gRPC health
//! check, and JSON log lines about a task carry its job and task ids.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use atelier_proto::JobState;
use atelier_tests::cluster::{Cluster, Process};
use atelier_tests::{atelier_ok, runtime, train_quick_color_model};

/// The address a process printed as "`what` listening on ADDR".
fn announced(process: &Process, what: &str) -> String {
    let prefix = format!("{what} listening on ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = process
            .log_text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
        {
            return line.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never announced {what}",
            process.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(address: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `series` (name and labels, as written).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn counters_move_during_a_job_and_logs_name_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "2000",
        "--out",
        &path("catalog"),
        "--size",
        "48x64",
        "--rows-per-group",
        "250",
    ]);
    train_quick_color_model(&path("catalog"), &path("model"));
    let mut cluster = Cluster::start(dir.path(), None, &["--metrics-addr", "127.0.0.1:0"]);
    let coordinator_metrics = announced(cluster.coordinator.as_ref().unwrap(), "metrics");
    let worker = cluster.add_worker(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--health-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let worker_metrics = announced(&cluster.workers[worker], "metrics");
    let worker_health = announced(&cluster.workers[worker], "health");

    let before = scrape(&coordinator_metrics);
    assert_eq!(value(&before, "atelier_jobs{state=\"succeeded\"}"), 0.0);
    assert_eq!(
        value(&scrape(&worker_metrics), "atelier_worker_items_total"),
        0.0
    );

    let job = cluster.submit_tag(&path("catalog"), &path("model"), &path("tags"), "250");
    let rt = runtime();
    rt.block_on(
        cluster.wait_for(&job, Duration::from_secs(300), "a first shard", |j| {
            j.tag.as_ref().is_some_and(|t| t.shards_done >= 1) || j.state.is_terminal()
        }),
    );
    let during = scrape(&worker_metrics);
    let items_during = value(&during, "atelier_worker_items_total");
    assert!(items_during >= 250.0, "{during}");
    let done = rt.block_on(cluster.wait_done(&job, Duration::from_secs(300)));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");

    let after = scrape(&worker_metrics);
    assert_eq!(value(&after, "atelier_worker_items_total"), 2000.0);
    assert_eq!(
        value(&after, "atelier_worker_tasks_total{outcome=\"done\"}"),
        8.0
    );
    let coordinator = scrape(&coordinator_metrics);
    assert_eq!(
        value(&coordinator, "atelier_jobs{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(value(&coordinator, "atelier_items_tagged_total"), 2000.0);
    assert_eq!(value(&coordinator, "atelier_tasks{state=\"done\"}"), 8.0);
    assert_eq!(value(&coordinator, "atelier_workers"), 1.0);
    // Where the time went, stage by stage, on both sides and in `status`.
    for stage in ["read", "decode", "transform", "forward", "write"] {
        let series = format!("atelier_stage_seconds_total{{stage=\"{stage}\"}}");
        assert!(value(&coordinator, &series) > 0.0, "{series}");
        let series = format!("atelier_worker_stage_seconds_total{{stage=\"{stage}\"}}");
        assert!(value(&after, &series) > 0.0, "{series}");
    }
    // The H2D stage is exported too (about zero on a CPU worker).
    let upload = "atelier_worker_stage_seconds_total{stage=\"upload\"}";
    assert!(value(&after, upload) >= 0.0, "{upload}");
    let status = cluster.cli_ok(&["status", &job]);
    assert!(
        status.contains("seconds by stage") && status.contains("upload "),
        "{status}"
    );

    let healthy = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{worker_health}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        healthy,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Every series the Grafana dashboard plots exists (GPU memory only on GPUs).
    let dashboard = std::fs::read_to_string(
        atelier_tests::workspace_root().join("deploy/grafana/atelier.json"),
    )
    .unwrap();
    let exposed = format!("{coordinator}{after}");
    let mut checked = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("atelier_") && word != "atelier_worker_gpu_memory_used_bytes" {
            assert!(
                exposed.contains(&format!("# TYPE {word} ")),
                "the dashboard plots {word}, which nothing exposes"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");

    // JSON lines; the one saying a shard is complete carries the task's span.
    let log = cluster.workers[worker].log_text();
    let complete = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "task complete")
        .unwrap_or_else(|| panic!("no JSON 'task complete' line in\n{log}"));
    assert_eq!(complete["span"]["job"], job.as_str(), "{complete}");
    assert!(
        complete["span"]["task"].as_str().unwrap().starts_with(&job),
        "{complete}"
    );
}
