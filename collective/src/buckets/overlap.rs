//! A step's all-reduce overlapped with its backward pass, as PyTorch DDP
//! overlaps them through autograd hooks. tch has no hooks, so a
//! communication thread watches the gradients' version counters instead:
//! autograd adds each gradient into its bucket view in place, once per
//! backward pass, and every in-place write bumps the view's counter. A bucket
//! whose gradients have all moved on is final and goes out while autograd
//! still works on the layers below it. Buckets go from the last to the first,
//! the order in which backward produces them, and every rank takes that same
//! order, as collectives must.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tch::Tensor;

use super::{bytes_of, counts_of, weigh_by_items, GradientBuckets, SyncedStep};
use crate::error::{CollectiveError, Result};
use crate::Collective;

/// How long the communication thread sleeps between looks at the counters:
/// short next to any backward pass worth overlapping, long enough not to take
/// a core from it.
const POLL: Duration = Duration::from_micros(200);

/// Where the backward pass stands, as the communication thread sees it.
const BACKWARD_RUNNING: u8 = 0;
const BACKWARD_DONE: u8 = 1;
/// Backward panicked: its gradients are partial, and sending them would
/// mix them into the other ranks' step; the thread gives up instead, and the
/// other ranks see a silent peer.
const BACKWARD_ABANDONED: u8 = 2;

/// Marks backward abandoned unless it was marked done, so the communication
/// thread never waits for a backward pass that unwound.
struct AbandonUnlessDone<'a>(&'a AtomicU8);

impl Drop for AbandonUnlessDone<'_> {
    fn drop(&mut self) {
        let _ = self.0.compare_exchange(
            BACKWARD_RUNNING,
            BACKWARD_ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

impl GradientBuckets {
    /// Runs `backward` and averages the gradients over the global batch as
    /// [`GradientBuckets::sync`] does, all-reducing each bucket as soon as
    /// backward has finished with it. `loss` is the rank's mean loss over
    /// its `items` (none without items). `backward` must leave every
    /// parameter with a gradient. The all-reduce follows the backward pass
    /// where the collective does not overlap them, and until the gradients
    /// are bucket views (the first step).
    pub fn backward_and_sync(
        &mut self,
        collective: &mut dyn Collective,
        items: usize,
        loss: Option<&Tensor>,
        backward: impl FnOnce(),
    ) -> Result<SyncedStep> {
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        let overlap = collective.overlaps_backward()
            && grads.iter().all(Tensor::defined)
            && self.grads_are_bucket_views(&grads);
        if !overlap {
            backward();
            let loss_sum = loss.map_or(0.0, |l| l.double_value(&[]) * items as f64);
            return self.sync(collective, items, loss_sum);
        }
        self.write_counts(items, loss);
        let versions: Vec<i64> = grads.iter().map(Tensor::internal_version).collect();
        let backward_state = AtomicU8::new(BACKWARD_RUNNING);
        let (communicated, backward_ended) = std::thread::scope(|scope| {
            let buckets = &self.buckets;
            let flats = &mut self.flats;
            let state = &backward_state;
            let sender = std::thread::Builder::new()
                .name("grad-allreduce".into())
                .spawn_scoped(scope, move || {
                    reduce_as_ready(collective, buckets, flats, &grads, &versions, items, state)
                });
            let guard = AbandonUnlessDone(state);
            backward();
            state.store(BACKWARD_DONE, Ordering::Release);
            drop(guard);
            let backward_ended = Instant::now();
            let communicated = match sender {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(CollectiveError::Setup(
                        "the gradient all-reduce thread panicked".into(),
                    ))
                }),
                Err(e) => Err(CollectiveError::Setup(format!(
                    "starting the gradient all-reduce thread: {e}"
                ))),
            };
            (communicated, backward_ended)
        });
        let bytes = communicated?;
        // Autograd adds into a defined gradient in place; were one ever
        // replaced instead, its bucket went out without it. Every rank runs
        // the same code, so all of them stop here alike.
        let after: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        if !self.grads_are_bucket_views(&after) {
            return Err(CollectiveError::InvalidTensor {
                op: "gradient all-reduce",
                detail: "backward replaced a gradient instead of adding into its bucket".into(),
            });
        }
        let (loss_sum, items_total) = self.average()?;
        Ok(SyncedStep {
            items: items_total,
            loss_sum,
            // What the step waited for beyond its backward pass.
            seconds: backward_ended.elapsed().as_secs_f64(),
            bytes,
        })
    }

    /// The rank's loss sum and item count into the last bucket's tail, on the
    /// device, so that no host read waits for the forward pass.
    fn write_counts(&mut self, items: usize, loss: Option<&Tensor>) {
        let Some(flat) = self.flats.last() else {
            return;
        };
        let tail = counts_of(flat);
        tch::no_grad(|| {
            let mut loss_slot = tail.narrow(0, 0, 1);
            match loss {
                Some(loss) => {
                    let sum = loss.detach().reshape([1]).to_kind(flat.kind()) * items as f64;
                    loss_slot.copy_(&sum);
                }
                None => {
                    let _ = loss_slot.fill_(0.0);
                }
            }
            let _ = tail.narrow(0, 1, 1).fill_(items as f64);
        });
    }
}

/// The communication thread: each bucket, last first, weighted by the rank's
/// items and all-reduced once its gradients are final or backward is over.
/// Returns the bytes sent.
fn reduce_as_ready(
    collective: &mut dyn Collective,
    buckets: &[Vec<usize>],
    flats: &mut [Tensor],
    grads: &[Tensor],
    versions: &[i64],
    items: usize,
    backward: &AtomicU8,
) -> Result<u64> {
    let last = flats.len().saturating_sub(1);
    let mut bytes = 0u64;
    for (index, (bucket, flat)) in buckets.iter().zip(flats.iter_mut()).enumerate().rev() {
        let mut waiting: Vec<usize> = bucket.clone();
        // Backward reaches parameters roughly last to first, so the look
        // stops at the first one still pending rather than asking them all.
        // A gradient that backward never touches (a parameter outside this
        // step's graph) keeps its counter: the end of backward releases it.
        loop {
            match backward.load(Ordering::Acquire) {
                BACKWARD_RUNNING => {}
                BACKWARD_DONE => break,
                _ => {
                    let _ = collective.finish_queued();
                    return Err(CollectiveError::Setup(
                        "the backward pass failed; this step's gradients were not sent".into(),
                    ));
                }
            }
            while let Some(&i) = waiting.last() {
                if grads[i].internal_version() == versions[i] {
                    break;
                }
                waiting.pop();
            }
            if waiting.is_empty() {
                break;
            }
            std::thread::sleep(POLL);
        }
        weigh_by_items(flat, index == last, items);
        if let Err(error) = collective.queue_all_reduce_sum(flat) {
            // What was queued before still writes into its bucket.
            let _ = collective.finish_queued();
            return Err(error);
        }
        bytes += bytes_of(flat);
    }
    collective.finish_queued()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use tch::{Device, Kind};

    use super::*;
    use crate::Backend;

    /// A world of one that says it is a ring and notes, for each bucket it
    /// is handed, its length and whether backward had returned by then.
    #[derive(Debug, Default)]
    struct Recorder {
        backward_returned: Arc<AtomicBool>,
        queued: Arc<Mutex<Vec<(i64, bool)>>>,
        finished: Arc<Mutex<usize>>,
    }

    impl Collective for Recorder {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            1
        }
        fn backend(&self) -> Backend {
            Backend::Ring
        }
        fn overlaps_backward(&self) -> bool {
            true
        }
        fn all_reduce_sum(&mut self, _tensor: &mut Tensor) -> Result<()> {
            Ok(())
        }
        fn queue_all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
            let returned = self.backward_returned.load(Ordering::Acquire);
            self.queued
                .lock()
                .unwrap()
                .push((tensor.numel() as i64, returned));
            Ok(())
        }
        fn finish_queued(&mut self) -> Result<()> {
            *self.finished.lock().unwrap() += 1;
            Ok(())
        }
        fn broadcast(&mut self, _tensor: &mut Tensor, _root: usize) -> Result<()> {
            Ok(())
        }
    }

    fn param(n: i64) -> Tensor {
        Tensor::ones([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn buckets_go_out_while_backward_runs_and_an_untouched_one_at_its_end() {
        // 16-byte buckets: [a], [b], [c], each four floats.
        let (a, b, c) = (param(4), param(4), param(4));
        let mut buckets = GradientBuckets::new(
            vec![a.shallow_clone(), b.shallow_clone(), c.shallow_clone()],
            16,
        );
        let recorder = Recorder::default();
        let (returned, queued, finished) = (
            Arc::clone(&recorder.backward_returned),
            Arc::clone(&recorder.queued),
            Arc::clone(&recorder.finished),
        );
        let mut collective = recorder;
        let uses_all = || (&a + &b * 2.0 + &c * 3.0).sum(Kind::Float);
        // The first step makes the bucket views; its all-reduce follows backward.
        let loss = uses_all();
        buckets
            .backward_and_sync(&mut collective, 2, Some(&loss), || loss.backward())
            .unwrap();
        assert_eq!(
            queued.lock().unwrap().len(),
            0,
            "plain sync on the first step"
        );
        for grad in [a.grad(), b.grad(), c.grad()] {
            let _ = grad.shallow_clone().zero_();
        }
        // Backward touches b and c only, then lingers: their buckets must go
        // out before it returns, a's (never final) after.
        let loss = (&b * 2.0 + &c * 3.0).sum(Kind::Float);
        let step = buckets
            .backward_and_sync(&mut collective, 2, Some(&loss), || {
                loss.backward();
                std::thread::sleep(Duration::from_millis(300));
                returned.store(true, Ordering::Release);
            })
            .unwrap();
        // Last bucket first (it carries the two counts), as backward makes them.
        assert_eq!(*queued.lock().unwrap(), [(6, false), (4, false), (4, true)]);
        assert_eq!(*finished.lock().unwrap(), 1);
        // A world of one: the mean over its two items is the rank's own.
        assert_eq!((step.items, step.loss_sum), (2.0, 2.0 * 20.0));
        assert_eq!(Vec::<f32>::try_from(&a.grad()).unwrap(), [0.0; 4]);
        assert_eq!(Vec::<f32>::try_from(&b.grad()).unwrap(), [2.0; 4]);
        assert_eq!(Vec::<f32>::try_from(&c.grad()).unwrap(), [3.0; 4]);
    }

    /// One parameter in one bucket, past its first step (so its gradient is
    /// a zeroed view of the bucket), with a recorder for a collective.
    fn one_bucket_after_a_step() -> (Tensor, GradientBuckets, Recorder) {
        let a = param(4);
        let mut buckets = GradientBuckets::new(vec![a.shallow_clone()], 1 << 20);
        let mut collective = Recorder::default();
        let loss = a.sum(Kind::Float);
        buckets
            .backward_and_sync(&mut collective, 1, Some(&loss), || loss.backward())
            .unwrap();
        let _ = a.grad().zero_();
        (a, buckets, collective)
    }

    #[test]
    fn a_gradient_replaced_during_backward_is_an_error_not_a_silent_mean() {
        let (a, mut buckets, mut collective) = one_bucket_after_a_step();
        let error = buckets
            .backward_and_sync(&mut collective, 1, None, || {
                // The gradient moves off its bucket: what the bucket sent
                // is not what the optimizer would read.
                let _ = a
                    .grad()
                    .set_source_tensor_(&Tensor::ones([4], (Kind::Float, Device::Cpu)));
            })
            .unwrap_err();
        assert!(error.to_string().contains("replaced a gradient"), "{error}");
    }

    #[test]
    fn a_panicking_backward_releases_the_communication_thread_which_sends_nothing() {
        let (_a, mut buckets, mut collective) = one_bucket_after_a_step();
        // Nothing reaches the bucket and backward panics: without the state
        // set on unwinding, the thread would wait for ever; and the partial
        // gradients must not go to the other ranks.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            buckets.backward_and_sync(&mut collective, 1, None, || panic!("backward failed"))
        }));
        assert!(outcome.is_err());
        assert!(collective.queued.lock().unwrap().is_empty());
    }
}
