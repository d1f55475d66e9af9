//! Scale benchmark of the coordinator (see bench/coordinator/scale.sh and BENCHMARKS.md):
//! plans a 10^6-item catalogue spread over 250 Parquet files, then lets 1,000
//! simulated workers (no model: each leases a shard and completes it at once)
//! drain the job over real gRPC, while pollers time GetJob. The coordinator is
//! the real binary in its own process, so its peak memory is its own.
//! Workers take their next shard with each completion, as `atelier worker`
//! does; `LEASE_NEXT=0` makes them call LeaseTask for every shard instead.
//! They speak gRPC through a lean h2 client (`lean_client.rs`), so that they
//! take less of the CPU they share with the coordinator; `SIM_CLIENT=tonic`
//! makes them use tonic's client, as `atelier worker` does. Like real
//! workers, each also heartbeats at the interval the coordinator gives it,
//! on the same connection, naming the lease it holds.
//!
//!   cargo run --release -p atelier-coordinator --example scale -- COORDINATOR_BIN WORKDIR
//!
//! COORDINATOR_BIN is `atelier-coordinator`, or `atelier` to measure
//! `atelier coordinator` (the same server with libtorch mapped).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atelier_catalog::{CatalogItem, CatalogWriter, Labels, StoreLocation, WriterOptions};
mod lean_client;
mod sim_client;

use atelier_proto::v1;
use atelier_proto::PROTOCOL_VERSION;
use atelier_proto::{connect_jobs, Connect};
use sim_client::SimClient;
use v1::work_request::Call;
use v1::work_response::Answer;

const ITEMS: usize = 1_000_000;
const FILES: usize = 250;
const ROWS_PER_GROUP: usize = 100;
const WORKERS: usize = 1000;
const POLLERS: usize = 8;

fn peak_memory_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn write_catalogue(dir: &std::path::Path) -> anyhow::Result<String> {
    let url = dir.join("catalog").to_str().unwrap_or_default().to_string();
    if dir.join("catalog/_DONE").exists() {
        return Ok(url);
    }
    let per_file = ITEMS / FILES;
    let options = WriterOptions {
        rows_per_group: ROWS_PER_GROUP,
        groups_per_file: per_file / ROWS_PER_GROUP,
        image: false,
        image_uri: true,
        extra_columns: vec![],
    };
    let location = StoreLocation::parse(&url)?;
    atelier_catalog::prepare_output(&location, true).await?;
    let mut writer = CatalogWriter::new(location, options)?;
    for chunk in 0..ITEMS / 10_000 {
        let items = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| CatalogItem {
            item_id: format!("item-{i:07}"),
            image: None,
            image_uri: Some(format!("s3://photos/{i:07}.jpg")),
            labels: Labels::default(),
            extra: vec![],
        });
        writer.write(items).await?;
    }
    writer.finish().await?;
    std::fs::write(dir.join("catalog/_DONE"), b"")?;
    Ok(url)
}

/// User plus system CPU seconds in a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// User plus system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of the coordinator's event-loop thread.
fn loop_cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "coordinator-loo" {
            return stat_cpu_seconds(&task.path().join("stat").to_string_lossy());
        }
    }
    f64::NAN
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (bin, work) = match args.as_slice() {
        [_, bin, work] => (bin.clone(), std::path::PathBuf::from(work)),
        _ => anyhow::bail!("usage: scale COORDINATOR_BIN WORKDIR"),
    };
    std::fs::create_dir_all(&work)?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(files) = limits.lines().find(|l| l.starts_with("Max open files")) {
        println!("{}", files.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let started = Instant::now();
    let catalog = write_catalogue(&work).await?;
    println!(
        "catalogue: {ITEMS} items in {FILES} files, {} row groups ({:.1}s)",
        ITEMS / ROWS_PER_GROUP,
        started.elapsed().as_secs_f64()
    );
    let checkpoint = work.join("model");
    std::fs::create_dir_all(&checkpoint)?;
    std::fs::write(checkpoint.join("manifest.json"), b"{}")?;
    let _ = std::fs::remove_file(work.join("state.db"));
    let _ = std::fs::remove_file(work.join("state.db-wal"));
    let _ = std::fs::remove_file(work.join("state.db-shm"));

    let standalone = bin.ends_with("atelier-coordinator");
    println!(
        "coordinator: {}",
        if standalone {
            "atelier-coordinator"
        } else {
            "atelier coordinator"
        }
    );
    let coordinator = Command::new(&bin)
        .args((!standalone).then_some("coordinator"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(work.join("state.db"))
        .args(["--lease-timeout-ms", "60000"])
        .env("RUST_LOG", "warn,atelier_coordinator::event_loop=info")
        .stdout(Stdio::piped())
        .spawn()?;
    // A run that fails half-way must not leave the coordinator behind (it
    // would hold the caller's pipe open and look like a hang).
    let mut coordinator = KillOnDrop(coordinator);
    let pid = coordinator.0.id();
    let stdout = coordinator
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("coordinator listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?
        .to_string();
    let idle_kib = peak_memory_kib(pid);

    let mut jobs = connect_jobs(&address, &Connect::default()).await?;
    let submitter = jobs.clone();
    let submit = |rows: u64, out: &str| {
        let request = v1::SubmitTagJobRequest {
            catalog: catalog.clone(),
            checkpoints: vec![checkpoint.to_str().unwrap_or_default().to_string()],
            output: work.join(out).to_str().unwrap_or_default().to_string(),
            target_shard_rows: Some(rows),
            overwrite: true,
            ..Default::default()
        };
        let mut jobs = submitter.clone();
        async move {
            let t = Instant::now();
            let id = jobs.submit_tag_job(request).await?.into_inner().job_id;
            anyhow::Ok((id, t.elapsed().as_secs_f64()))
        }
    };
    let (coarse_id, plan_coarse) = submit(8192, "out-coarse").await?;
    let coarse_shards = jobs
        .get_job(v1::GetJobRequest { job_id: coarse_id })
        .await?
        .into_inner()
        .tag
        .map_or(0, |t| t.shards_total);
    println!("planning, 10^6 items / 250 files into {coarse_shards} shards (one per file): {plan_coarse:.2}s");
    // Get the coarse job out of the way so that the workers drain only the fine one.
    let coarse_jobs = jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    for job in coarse_jobs {
        jobs.cancel_job(v1::CancelJobRequest { job_id: job.job_id })
            .await?;
    }
    let (job_id, plan_fine) = submit(ROWS_PER_GROUP as u64, "out-fine").await?;
    let planned_kib = peak_memory_kib(pid);
    let shards = jobs
        .get_job(v1::GetJobRequest {
            job_id: job_id.clone(),
        })
        .await?
        .into_inner()
        .tag
        .map_or(0, |t| t.shards_total);
    println!("planning, 10^6 items / 250 files into {shards} shards of {ROWS_PER_GROUP} rows: {plan_fine:.2}s");

    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let lease_next = std::env::var("LEASE_NEXT").as_deref() != Ok("0");
    println!("workers lease with each completion: {lease_next}");
    let lean = std::env::var("SIM_CLIENT").as_deref() != Ok("tonic");
    let streamed = std::env::var("SIM_CALLS").as_deref() != Ok("unary");
    println!(
        "simulated workers lease and complete {}",
        if streamed {
            "on the Work stream, as atelier worker does"
        } else {
            "with unary calls"
        }
    );
    println!(
        "simulated workers' gRPC client: {}",
        if lean { "lean h2" } else { "tonic" }
    );
    // Connecting and registering 1,000 workers is a start-up storm, not
    // dispatch: every worker is registered before the dispatch clock starts.
    let registered = Arc::new(tokio::sync::Barrier::new(WORKERS + 1));
    let registration_started = Instant::now();
    let mut workers = Vec::new();
    let heartbeats = Arc::new(AtomicU64::new(0));
    let heartbeat_failures = Arc::new(AtomicU64::new(0));
    for index in 0..WORKERS {
        let heartbeats = Arc::clone(&heartbeats);
        let heartbeat_failures = Arc::clone(&heartbeat_failures);
        let address = address.clone();
        let done = Arc::clone(&done);
        let completed = Arc::clone(&completed);
        let registered = Arc::clone(&registered);
        workers.push(tokio::spawn(async move {
            let registration = async {
                let mut client = SimClient::connect(&address, lean).await?;
                let registered = client
                    .register(v1::RegisterRequest {
                        protocol_version: PROTOCOL_VERSION,
                        hostname: "sim".into(),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok((client, registered))
            }
            .await;
            // Every worker reaches the barrier, failed or not, so that
            // the run never waits for one that will not come.
            registered.wait().await;
            let (mut client, registered) = registration?;
            let worker_id = registered.worker_id;
            let held = Arc::new(std::sync::Mutex::new(None::<v1::LeaseRef>));
            {
                let mut client = client.clone();
                let worker_id = worker_id.clone();
                let held = Arc::clone(&held);
                let done = Arc::clone(&done);
                let interval =
                    Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(1)));
                tokio::spawn(async move {
                    // Spread over the interval, as workers started apart would be.
                    tokio::time::sleep(interval.mul_f64(index as f64 / WORKERS as f64)).await;
                    let mut ticker = tokio::time::interval(interval);
                    while !done.load(Ordering::Relaxed) {
                        ticker.tick().await;
                        let leases = held.lock().map(|h| h.clone()).unwrap_or_default();
                        let request = v1::HeartbeatRequest {
                            worker_id: worker_id.clone(),
                            leases: leases.into_iter().collect(),
                        };
                        let counter = match client.heartbeat(request).await {
                            Ok(_) => &heartbeats,
                            Err(_) => &heartbeat_failures,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let mut work = match streamed {
                true => Some(client.open_work().await?),
                false => None,
            };
            let mut next = None;
            while !done.load(Ordering::Relaxed) {
                let task = match next.take() {
                    Some(task) => task,
                    None => {
                        let request = v1::LeaseTaskRequest {
                            worker_id: worker_id.clone(),
                            wait_ms: 200,
                        };
                        let leased = match work.as_mut() {
                            Some(work) => match work.call(Call::Lease(request)).await? {
                                Answer::Lease(answer) => answer.task,
                                _ => anyhow::bail!("a lease answered with something else"),
                            },
                            None => client.lease_task(request).await?.task,
                        };
                        let Some(task) = leased else { continue };
                        task
                    }
                };
                if let Ok(mut held) = held.lock() {
                    held.clone_from(&task.lease);
                }
                let rows = match task.work {
                    Some(v1::task::Work::Tag(shard)) => shard.rows,
                    _ => 0,
                };
                let request = v1::CompleteTaskRequest {
                    worker_id: worker_id.clone(),
                    lease: task.lease,
                    rows_written: rows,
                    lease_next,
                    ..Default::default()
                };
                next = match work.as_mut() {
                    Some(work) => match work.call(Call::Complete(request)).await? {
                        Answer::Complete(answer) => answer.next,
                        _ => anyhow::bail!("a completion answered with something else"),
                    },
                    None => client.complete_task(request).await?.next,
                };
                completed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    registered.wait().await;
    println!(
        "registration: {WORKERS} workers connected and registered in {:.2}s",
        registration_started.elapsed().as_secs_f64()
    );
    let dispatch_started = Instant::now();
    let cpu_before = cpu_seconds(pid);
    let loop_before = loop_cpu_seconds(pid);
    let harness_before = cpu_seconds(std::process::id());
    let heartbeats_before = heartbeats.load(Ordering::Relaxed);
    let mut pollers = Vec::new();
    for _ in 0..POLLERS {
        let mut jobs = jobs.clone();
        let job_id = job_id.clone();
        let done = Arc::clone(&done);
        pollers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let job = jobs
                    .get_job(v1::GetJobRequest {
                        job_id: job_id.clone(),
                    })
                    .await?
                    .into_inner();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                // Simulated workers write no parts, so the manifest check
                // fails the job at the end; dispatch is over once every shard is done.
                let tag = job.tag.unwrap_or_default();
                if tag.shards_done == tag.shards_total
                    || job.state >= v1::JobState::Succeeded as i32
                {
                    done.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(latencies)
        }));
    }
    // A worker that fails (say, out of file descriptors) ends the run with
    // its error rather than leaving the pollers waiting for shards forever.
    let watcher = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut result = Ok(());
            for worker in workers {
                let outcome = match worker.await {
                    Ok(outcome) => outcome,
                    Err(e) => Err(anyhow::anyhow!("simulated worker panicked: {e}")),
                };
                if let Err(e) = outcome {
                    done.store(true, Ordering::Relaxed);
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            result
        })
    };
    let mut latencies = Vec::new();
    for poller in pollers {
        latencies.extend(poller.await??);
    }
    let seconds = dispatch_started.elapsed().as_secs_f64();
    let coordinator_cpu = cpu_seconds(pid) - cpu_before;
    let loop_cpu = loop_cpu_seconds(pid) - loop_before;
    let harness_cpu = cpu_seconds(std::process::id()) - harness_before;
    let heartbeats_during = heartbeats.load(Ordering::Relaxed) - heartbeats_before;
    watcher.await??;
    latencies.sort_by(f64::total_cmp);
    let n = completed.load(Ordering::Relaxed);
    let peak_kib = peak_memory_kib(pid);
    println!("dispatch: {n} shards leased and completed by {WORKERS} simulated workers in {seconds:.2}s = {:.0} shards/s ", n as f64 / seconds);
    println!(
        "coordinator CPU during dispatch: {coordinator_cpu:.2}s of {seconds:.2}s wall ({:.0} shards per coordinator CPU-second)",
        n as f64 / coordinator_cpu.max(1e-9)
    );
    println!(
        "simulated workers' CPU during dispatch: {harness_cpu:.2}s ({:.0} µs per shard, the coordinator {:.0} µs)",
        harness_cpu * 1e6 / n.max(1) as f64,
        coordinator_cpu * 1e6 / n.max(1) as f64
    );
    println!(
        "of which the event loop (one thread: state machine + SQLite): {loop_cpu:.2}s, {:.0} shards per loop CPU-second",
        n as f64 / loop_cpu.max(1e-9)
    );
    println!(
        "heartbeats during dispatch: {heartbeats_during} answered, {} failed in the whole run",
        heartbeat_failures.load(Ordering::Relaxed)
    );
    println!(
        "GetJob during dispatch: {} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "coordinator peak RSS: {:.1} MiB idle, {:.1} MiB after planning {shards} shards, {:.1} MiB at the end",
        idle_kib as f64 / 1024.0,
        planned_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    // SIGTERM, so that the event loop logs its batch statistics.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = coordinator.0.wait();
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
