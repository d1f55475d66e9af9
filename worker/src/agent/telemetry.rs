//! The worker's Prometheus metrics (`atelier worker --metrics-addr`) and its
//! gRPC health service (`--health-addr`, for Kubernetes probes).

use std::future::Future;
use std::sync::Arc;

use atelier_proto::{StageTimes, TaskOutcome, TaskProgressReport};
use atelier_telemetry::{Counter, Exposition, Gauge, Registry};

#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    tasks_done: Counter,
    tasks_failed: Counter,
    tasks_stopped: Counter,
    items: Counter,
    item_errors: Counter,
    stages: [Counter; StageTimes::NAMES.len()],
    allreduce_seconds: Counter,
    allreduce_bytes: Counter,
    busy: Gauge,
    /// One gauge per GPU lane.
    gpu_memory: Vec<(usize, Gauge)>,
}

impl WorkerMetrics {
    /// `devices` as `--device` takes them (one name or a comma list).
    pub fn new(devices: &str) -> Arc<Self> {
        let registry = Registry::new();
        let tasks = |outcome| {
            registry.counter(
                "atelier_worker_tasks_total",
                "Tasks this worker ended, by outcome.",
                &[("outcome", outcome)],
            )
        };
        let (tasks_done, tasks_failed, tasks_stopped) =
            (tasks("done"), tasks("failed"), tasks("stopped"));
        let stages = StageTimes::NAMES.map(|stage| {
            registry.counter(
                "atelier_worker_stage_seconds_total",
                "Pipeline seconds per stage, summed over threads.",
                &[("stage", stage)],
            )
        });
        let gpu_memory = crate::device::parse_devices(devices)
            .unwrap_or_default()
            .iter()
            .filter_map(|device| {
                let index = device.strip_prefix("cuda:")?.parse::<usize>().ok()?;
                Some((
                    index,
                    registry.gauge(
                        "atelier_worker_gpu_memory_used_bytes",
                        "Memory in use on the worker's GPU (all processes).",
                        &[("device", device)],
                    ),
                ))
            })
            .collect();
        Arc::new(Self {
            items: registry.counter(
                "atelier_worker_items_total",
                "Items this worker tagged or evaluated (rows written).",
                &[],
            ),
            item_errors: registry.counter(
                "atelier_worker_item_errors_total",
                "Items whose image could not be used.",
                &[],
            ),
            allreduce_seconds: registry.counter(
                "atelier_worker_allreduce_seconds_total",
                "Seconds in gradient all-reduces.",
                &[],
            ),
            allreduce_bytes: registry.counter(
                "atelier_worker_allreduce_bytes_total",
                "Bytes all-reduced.",
                &[],
            ),
            busy: registry.gauge(
                "atelier_worker_busy",
                "Lanes (devices) running a task now.",
                &[],
            ),
            tasks_done,
            tasks_failed,
            tasks_stopped,
            stages,
            gpu_memory,
            registry,
        })
    }

    pub fn started(&self) {
        self.busy.add(1.0);
    }

    /// Counts a task that ended; `last` is its final progress report.
    pub fn finished(&self, outcome: Option<&TaskOutcome>, failed: bool, last: &TaskProgressReport) {
        self.busy.add(-1.0);
        match (outcome, failed) {
            (Some(outcome), _) => {
                self.tasks_done.inc();
                if last.train.is_none() {
                    self.items.add(outcome.rows_written as f64);
                }
                self.item_errors.add(outcome.items_failed as f64);
                for (counter, value) in self.stages.iter().zip(outcome.stages.values()) {
                    counter.add(value);
                }
            }
            (None, true) => self.tasks_failed.inc(),
            (None, false) => self.tasks_stopped.inc(),
        }
        if let Some(rank) = last.train.as_ref().and_then(|t| t.ranks.first()) {
            self.allreduce_seconds.add(rank.allreduce_seconds);
            self.allreduce_bytes.add(rank.allreduce_bytes as f64);
        }
    }

    pub fn render(&self) -> String {
        for (index, gauge) in &self.gpu_memory {
            if let Some(used) = crate::device::gpu_memory_used(*index) {
                gauge.set(used as f64);
            }
        }
        let mut out = Exposition::new();
        self.registry.render_into(&mut out);
        out.finish()
    }
}

/// Serves `grpc.health.v1.Health` on `listener`: SERVING while the worker runs.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
