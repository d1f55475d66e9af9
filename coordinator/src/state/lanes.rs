//! Lanes that keep failing: "this machine is bad" kept apart from "this
//! input is bad". A lane whose tasks fail retryably several times in a row
//! (a GPU out of memory, a sticky device error, a full scratch disk) stops
//! getting work for a while, so it cannot take shard after shard and burn
//! every attempt; the tasks it failed run elsewhere. A failure that cannot
//! be retried is the input's fault and does not count against the lane; a
//! completed task clears the lane's record.

use std::time::Duration;

use atelier_proto::WorkerId;

use super::{Now, State, Worker};

/// Retryable failures in a row that quarantine a lane.
pub const QUARANTINE_AFTER: u32 = 3;
/// How long a quarantined lane gets no work; then it gets one task on
/// probation, and one more failure quarantines it again.
pub const QUARANTINE_FOR: Duration = Duration::from_secs(300);

impl State {
    /// Counts a retryable failure against `lane`.
    pub(super) fn lane_failed(&mut self, lane: &WorkerId, now: Now) {
        let Some(worker) = self.workers.get_mut(lane) else {
            return;
        };
        worker.failures_in_a_row += 1;
        if worker.failures_in_a_row >= QUARANTINE_AFTER {
            worker.quarantined_until = Some(now.at + QUARANTINE_FOR);
            tracing::warn!(
                worker = %lane,
                failures = worker.failures_in_a_row,
                "lane quarantined: its tasks keep failing; it gets no work for {QUARANTINE_FOR:?}"
            );
        }
    }

    pub(super) fn lane_succeeded(&mut self, lane: &WorkerId) {
        if let Some(worker) = self.workers.get_mut(lane) {
            worker.failures_in_a_row = 0;
            worker.quarantined_until = None;
        }
    }

    /// Whether `lane` is serving a quarantine now.
    pub fn is_quarantined(&self, lane: &WorkerId, now: Now) -> bool {
        self.workers
            .get(lane)
            .is_some_and(|worker| worker.is_quarantined(now))
    }
}

impl Worker {
    pub(super) fn is_quarantined(&self, now: Now) -> bool {
        self.quarantined_until.is_some_and(|until| now.at < until)
    }
}
