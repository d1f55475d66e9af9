//! The progress watchdog. Heartbeats run on the I/O runtime, so they keep a
//! lease alive even while the compute thread is stuck (a hung NFS read, a
//! device sync that never returns) and the task would then hold its lease
//! for ever. The compute thread beats a [`Pulse`] each time it checks
//! whether to stop (between batches, steps and rendezvous polls); a lane
//! whose pulse stays silent for its stall timeout gives the lease up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the compute thread last showed that it was alive.
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last_ms: AtomicU64,
}

impl Pulse {
    /// A pulse that beats now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn beat(&self) {
        let since_origin = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(since_origin, Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_resets_the_silence() {
        let pulse = Pulse::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(pulse.silent_for() >= Duration::from_millis(30));
        pulse.beat();
        assert!(pulse.silent_for() < Duration::from_millis(30));
    }
}
