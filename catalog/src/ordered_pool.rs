//! An ordered parallel map on dedicated OS threads with a bounded window.
//!
//! Generation, import and the image pipeline all turn a stream of inputs into
//! CPU-heavy outputs that must come back in input order without unbounded
//! buffering. At most `window` inputs are between the feeder and the consumer
//! at any time (queued, being processed, or finished and waiting for an earlier
//! one), which bounds memory at any input size.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

/// A worker panicked while processing one input; carries its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("worker panicked: {0}")]
pub struct WorkerPanic(pub String);

/// Iterator over the outputs, in input order.
#[derive(Debug)]
pub struct OrderedPool<O> {
    results: Receiver<(usize, Result<O, WorkerPanic>)>,
    tokens: Receiver<()>,
    pending: BTreeMap<usize, Result<O, WorkerPanic>>,
    next: usize,
    fed: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    high_water: Arc<AtomicUsize>,
}

impl<O: Send + 'static> OrderedPool<O> {
    /// Maps `inputs` through `f` on `threads` threads, holding at most `window` items in flight.
    pub fn new<I, F>(
        name: &str,
        inputs: impl Iterator<Item = I> + Send + 'static,
        threads: usize,
        window: usize,
        f: F,
    ) -> Self
    where
        I: Send + 'static,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        let threads = threads.max(1);
        let window = window.max(threads);
        let (token_tx, token_rx) = bounded::<()>(window);
        let (work_tx, work_rx) = bounded::<(usize, I)>(window);
        let (result_tx, result_rx) = unbounded();
        let fed = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let high_water = Arc::new(AtomicUsize::new(0));
        let f = Arc::new(f);

        {
            let fed = Arc::clone(&fed);
            let in_flight = Arc::clone(&in_flight);
            let high_water = Arc::clone(&high_water);
            spawn(format!("{name}-feed"), move || {
                feed(inputs, &token_tx, &work_tx, &fed, &in_flight, &high_water)
            });
        }
        for index in 0..threads {
            let work_rx = work_rx.clone();
            let result_tx = result_tx.clone();
            let f = Arc::clone(&f);
            spawn(format!("{name}-{index}"), move || {
                work(&work_rx, &result_tx, f.as_ref())
            });
        }
        Self {
            results: result_rx,
            tokens: token_rx,
            pending: BTreeMap::new(),
            next: 0,
            fed,
            in_flight,
            high_water,
        }
    }
}

impl<O> OrderedPool<O> {
    /// The most inputs that were ever in flight at once; never above the window.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }
}

/// Pool threads are detached: they end on their own once the channels they
/// wait on close, so dropping a pool never blocks on a slow input source.
fn spawn(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name).spawn(f) {
        panic!("cannot spawn a pool thread: {e}");
    }
}

fn feed<I>(
    inputs: impl Iterator<Item = I>,
    tokens: &Sender<()>,
    work: &Sender<(usize, I)>,
    fed: &AtomicUsize,
    in_flight: &AtomicUsize,
    high_water: &AtomicUsize,
) {
    for (seq, input) in inputs.enumerate() {
        // A token is returned only when the consumer takes an output, so a
        // full token channel means the window is full.
        if tokens.send(()).is_err() {
            return;
        }
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        high_water.fetch_max(now, Ordering::SeqCst);
        if work.send((seq, input)).is_err() {
            return;
        }
        fed.store(seq + 1, Ordering::SeqCst);
    }
}

fn work<I, O>(
    inputs: &Receiver<(usize, I)>,
    results: &Sender<(usize, Result<O, WorkerPanic>)>,
    f: &(dyn Fn(I) -> O + Send + Sync),
) {
    for (seq, input) in inputs {
        let output = catch_unwind(AssertUnwindSafe(|| f(input))).map_err(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            WorkerPanic(message)
        });
        if results.send((seq, output)).is_err() {
            return;
        }
    }
}

impl<O> Iterator for OrderedPool<O> {
    type Item = Result<O, WorkerPanic>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(output) = self.pending.remove(&self.next) {
                self.next += 1;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = self.tokens.try_recv();
                return Some(output);
            }
            match self.results.recv() {
                Ok((seq, output)) => {
                    self.pending.insert(seq, output);
                }
                Err(_) => {
                    // Every worker is gone. Anything fed but never returned was lost
                    // to a dead thread; say so rather than end quietly.
                    let fed = self.fed.load(Ordering::SeqCst);
                    if self.next < fed {
                        self.next = fed;
                        return Some(Err(WorkerPanic(format!(
                            "{} inputs were lost by a dead worker",
                            fed - self.next
                        ))));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_input_order_under_uneven_work() {
        let pool = OrderedPool::new("t", 0..200u64, 4, 8, |i| {
            std::thread::sleep(Duration::from_micros((200 - i) * 20));
            i * 2
        });
        let out: Vec<u64> = pool.map(Result::unwrap).collect();
        assert_eq!(out, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn never_holds_more_than_the_window() {
        let mut pool = OrderedPool::new("t", 0..500usize, 3, 5, |i| vec![i as u8; 1024]);
        let mut count = 0;
        for item in pool.by_ref() {
            item.unwrap();
            count += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
        assert_eq!(count, 500);
        assert!(pool.high_water() <= 5, "high water {}", pool.high_water());
        assert!(pool.high_water() >= 3);
    }

    #[test]
    fn a_panicking_item_becomes_an_error_and_the_rest_come_through() {
        let out: Vec<_> = OrderedPool::new("t", 0..10, 2, 4, |i| {
            assert!(i != 3, "boom at {i}");
            i
        })
        .collect();
        assert_eq!(out.len(), 10);
        assert!(out[3].as_ref().unwrap_err().0.contains("boom at 3"));
        assert_eq!(out[4].as_ref().unwrap(), &4);
    }

    #[test]
    fn dropping_early_stops_an_endless_feeder() {
        let fed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fed);
        let inputs = (0..).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut pool = OrderedPool::new("t", inputs, 2, 4, |i: u64| i);
        assert_eq!(pool.next().unwrap().unwrap(), 0);
        drop(pool);
        std::thread::sleep(Duration::from_millis(100));
        let after_drop = fed.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fed.load(Ordering::SeqCst), after_drop);
        assert!(after_drop <= 6, "fed {after_drop} past a window of 4");
    }
}
