//! Per-stage counters, so that "where does the time go" is measured, not guessed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct PipelineStats {
    rows: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    read_ns: AtomicU64,
    fetch_ns: AtomicU64,
    decode_ns: AtomicU64,
    transform_ns: AtomicU64,
}

/// A copy of the counters at one moment. Times are summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    pub read_s: f64,
    pub fetch_s: f64,
    pub decode_s: f64,
    pub transform_s: f64,
}

#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Read,
    Fetch,
    Decode,
    Transform,
}

impl PipelineStats {
    pub fn add_time(&self, stage: Stage, elapsed: Duration) {
        let counter = match stage {
            Stage::Read => &self.read_ns,
            Stage::Fetch => &self.fetch_ns,
            Stage::Decode => &self.decode_ns,
            Stage::Transform => &self.transform_ns,
        };
        counter.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn add_rows(&self, rows: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn add_outcomes(&self, ok: u64, failed: u64) {
        self.ok.fetch_add(ok, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let secs = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
        StatsSnapshot {
            rows: self.rows.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            read_s: secs(&self.read_ns),
            fetch_s: secs(&self.fetch_ns),
            decode_s: secs(&self.decode_ns),
            transform_s: secs(&self.transform_ns),
        }
    }
}
