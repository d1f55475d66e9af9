//! The coordinator's Prometheus metrics, rendered at scrape time from the
//! read snapshot and the event loop's gauges; scraping never waits for the
//! loop.

use std::sync::atomic::Ordering;

use atelier_proto::{JobKind, JobState, StageTimes};
use atelier_telemetry::Exposition;

use crate::event_loop::LoopHandle;

pub fn render(handle: &LoopHandle) -> String {
    let jobs = handle.jobs(&[], 0);
    let gauges = handle.gauges();
    let mut out = Exposition::new();

    out.family("atelier_jobs", "gauge", "Jobs by state.");
    for state in JobState::ALL {
        let count = jobs.iter().filter(|j| j.state == state).count();
        out.sample("atelier_jobs", &[("state", state.name())], count as f64);
    }

    let tags: Vec<_> = jobs
        .iter()
        .filter_map(|j| j.tag.as_ref().map(|t| (j, t)))
        .collect();
    let sum = |f: &dyn Fn(&atelier_proto::TagProgress) -> f64| -> f64 {
        tags.iter().map(|(_, t)| f(t)).sum()
    };
    out.family(
        "atelier_tasks",
        "gauge",
        "Tasks (tag shards, train ranks, test runs) by state.",
    )
    .sample(
        "atelier_tasks",
        &[("state", "pending")],
        gauges.tasks_queued.load(Ordering::Relaxed) as f64,
    )
    .sample(
        "atelier_tasks",
        &[("state", "running")],
        gauges.tasks_running.load(Ordering::Relaxed) as f64,
    )
    .sample(
        "atelier_tasks",
        &[("state", "done")],
        sum(&|t| f64::from(t.shards_done)),
    )
    .sample(
        "atelier_tasks",
        &[("state", "failed")],
        sum(&|t| f64::from(t.shards_failed)),
    );
    out.single(
        "atelier_shards_retried_total",
        "counter",
        "Tag shard attempts given up and retried.",
        sum(&|t| f64::from(t.shards_retried)),
    );
    out.single(
        "atelier_items_tagged_total",
        "counter",
        "Items tagged (rows written, including error rows).",
        sum(&|t| t.items_done as f64),
    );
    out.single(
        "atelier_item_errors_total",
        "counter",
        "Items whose image could not be used.",
        sum(&|t| t.items_failed as f64),
    );
    let rate: f64 = tags
        .iter()
        .filter(|(j, _)| j.state == JobState::Running)
        .map(|(_, t)| t.items_per_second)
        .sum();
    out.single(
        "atelier_items_per_second",
        "gauge",
        "Items per second over running tag jobs.",
        rate,
    );

    out.family(
        "atelier_stage_seconds_total",
        "counter",
        "Pipeline seconds per stage, summed over threads and jobs.",
    );
    let mut total = StageTimes::default();
    for job in &jobs {
        total.add(&job.stages);
    }
    for (name, value) in StageTimes::NAMES.into_iter().zip(total.values()) {
        out.sample("atelier_stage_seconds_total", &[("stage", name)], value);
    }

    let trains: Vec<_> = jobs
        .iter()
        .filter(|j| j.kind == JobKind::Train)
        .filter_map(|j| j.train.as_ref())
        .collect();
    out.single(
        "atelier_allreduce_seconds_total",
        "counter",
        "Seconds train ranks spent in gradient all-reduces.",
        trains
            .iter()
            .flat_map(|t| &t.ranks)
            .map(|r| r.allreduce_seconds)
            .sum(),
    );
    out.single(
        "atelier_allreduce_bytes_total",
        "counter",
        "Bytes train ranks all-reduced.",
        trains
            .iter()
            .flat_map(|t| &t.ranks)
            .map(|r| r.allreduce_bytes as f64)
            .sum(),
    );
    out.single(
        "atelier_gang_restarts_total",
        "counter",
        "Train gangs restarted from their checkpoint.",
        trains.iter().map(|t| t.restarts.len() as f64).sum(),
    );
    out.single(
        "atelier_lease_expiries_total",
        "counter",
        "Leases that expired because their worker stopped heartbeating.",
        gauges.lease_expiries.load(Ordering::Relaxed) as f64,
    );
    out.single(
        "atelier_gangs_waiting",
        "gauge",
        "Train jobs waiting for enough free workers.",
        gauges.gangs_waiting.load(Ordering::Relaxed) as f64,
    );
    out.single(
        "atelier_workers",
        "gauge",
        "Registered workers.",
        gauges.workers.load(Ordering::Relaxed) as f64,
    );
    out.finish()
}
