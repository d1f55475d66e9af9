//! Gradients go over the wire in buckets of about 25 MB, as PyTorch DDP
//! sends them: few enough collectives to amortise their latency, small enough
//! to bound the extra memory of the flattened copies.

mod overlap;

use std::time::Instant;

use tch::{Kind, Tensor};

use crate::error::{CollectiveError, Result};
use crate::Collective;

pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Groups consecutive tensors of one kind into buckets of at most
/// `bucket_bytes` (a larger tensor gets a bucket of its own).
pub(crate) fn plan(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    let mut kind = None;
    for (index, tensor) in tensors.iter().enumerate() {
        let size = tensor.numel() * tensor.kind().elt_size_in_bytes();
        let fits = bytes + size <= bucket_bytes && kind == Some(tensor.kind());
        match buckets.last_mut() {
            Some(bucket) if fits => bucket.push(index),
            _ => {
                buckets.push(vec![index]);
                bytes = 0;
            }
        }
        bytes += size;
        kind = Some(tensor.kind());
    }
    buckets
}

pub(crate) fn flatten(members: &[&Tensor]) -> Result<Tensor> {
    let parts: Vec<Tensor> = members.iter().map(|t| t.detach().reshape([-1])).collect();
    if parts.is_empty() {
        return Err(CollectiveError::InvalidTensor {
            op: "bucket",
            detail: "an empty bucket".into(),
        });
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Copies the pieces of `flat` back into `members`, in place.
pub(crate) fn unflatten(flat: &Tensor, members: &[&Tensor]) {
    let mut offset = 0i64;
    tch::no_grad(|| {
        for member in members {
            let len = member.numel() as i64;
            let piece = flat.narrow(0, offset, len).view_as(member);
            let mut target = member.shallow_clone();
            target.copy_(&piece);
            offset += len;
        }
    });
}

/// What one synchronised step learnt from all ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncedStep {
    /// Items in the global batch.
    pub items: f64,
    /// The loss summed over the global batch's items.
    pub loss_sum: f64,
    pub seconds: f64,
    pub bytes: u64,
}

/// The trainable parameters of a model, bucketed once. After the first
/// backward pass each bucket's gradients become views of one flat tensor of
/// its own (PyTorch DDP's `gradient_as_bucket_view`): autograd then adds
/// every later gradient in place into the bucket, and a step all-reduces the
/// buckets where they lie, with no copies in or out.
#[derive(Debug)]
pub struct GradientBuckets {
    params: Vec<Tensor>,
    buckets: Vec<Vec<usize>>,
    /// Per bucket, its flat tensor (the last one two elements longer, for
    /// the loss and item counts that ride along); none before the first sync.
    flats: Vec<Tensor>,
}

/// The loss sum and the item count, after the last bucket's gradients.
const COUNTS: i64 = 2;

/// The last bucket's loss sum and item count, as a view.
fn counts_of(flat: &Tensor) -> Tensor {
    flat.narrow(0, flat.size()[0] - COUNTS, COUNTS)
}

/// Multiplies a bucket's gradients (not the counts the last one carries) by
/// the rank's items: the rank's share of the sum over the global batch.
fn weigh_by_items(flat: &mut Tensor, is_last: bool, items: usize) {
    let gradients = flat.size()[0] - if is_last { COUNTS } else { 0 };
    tch::no_grad(|| {
        let _ = flat.narrow(0, 0, gradients).g_mul_scalar_(items as f64);
    });
}

fn bytes_of(flat: &Tensor) -> u64 {
    (flat.numel() * flat.kind().elt_size_in_bytes()) as u64
}

impl GradientBuckets {
    pub fn new(params: Vec<Tensor>, bucket_bytes: usize) -> Self {
        let buckets = plan(&params, bucket_bytes);
        Self {
            params,
            buckets,
            flats: Vec::new(),
        }
    }

    /// Averages the gradients over the global batch. Each rank's gradients are
    /// the mean over its own `items`; weighting them by `items` makes the
    /// result the mean over every rank's items, the gradient one process
    /// would compute on the whole global batch, even when a rank's batch came
    /// out short. Every parameter must have a gradient (zeros for a rank
    /// without items), and gradients must be zeroed in place between steps
    /// (not dropped), so that they stay views of the buckets.
    pub fn sync(
        &mut self,
        collective: &mut dyn Collective,
        items: usize,
        loss_sum: f64,
    ) -> Result<SyncedStep> {
        let started = Instant::now();
        // A world of one through NCCL still runs the collectives: that is how
        // a single-GPU machine checks the NCCL path.
        if collective.backend() == crate::Backend::Single {
            return Ok(SyncedStep {
                items: items as f64,
                loss_sum,
                seconds: 0.0,
                bytes: 0,
            });
        }
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        if let Some(missing) = grads.iter().position(|g| !g.defined()) {
            return Err(CollectiveError::InvalidTensor {
                op: "gradient all-reduce",
                detail: format!("parameter {missing} has no gradient"),
            });
        }
        if !self.grads_are_bucket_views(&grads) {
            self.flats = self.make_views(&grads)?;
        }
        let last = self.flats.len().saturating_sub(1);
        for (index, flat) in self.flats.iter_mut().enumerate() {
            weigh_by_items(flat, index == last, items);
        }
        if let Some(flat) = self.flats.last() {
            let counts = Tensor::from_slice(&[loss_sum, items as f64])
                .to_kind(flat.kind())
                .to_device(flat.device());
            tch::no_grad(|| counts_of(flat).copy_(&counts));
        }
        let bytes = self.flats.iter().map(bytes_of).sum();
        collective.all_reduce_sum_many(&mut self.flats)?;
        let (loss_total, items_total) = self.average()?;
        Ok(SyncedStep {
            items: items_total,
            loss_sum: loss_total,
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        })
    }

    /// Reads the global loss sum and item count, and divides the gradients
    /// by the count: the mean over the global batch.
    fn average(&mut self) -> Result<(f64, f64)> {
        let counts = self
            .flats
            .last()
            .map(|f| counts_of(f).to_kind(Kind::Double))
            .ok_or_else(|| CollectiveError::InvalidTensor {
                op: "gradient all-reduce",
                detail: "no trainable parameters".into(),
            })?;
        let (loss_total, items_total) = (counts.double_value(&[0]), counts.double_value(&[1]));
        tch::no_grad(|| {
            for flat in &mut self.flats {
                let _ = flat.g_mul_scalar_(1.0 / items_total.max(1.0));
            }
        });
        Ok((loss_total, items_total))
    }

    /// Whether every gradient still lies where `make_views` put it.
    fn grads_are_bucket_views(&self, grads: &[Tensor]) -> bool {
        if self.flats.len() != self.buckets.len() {
            return false;
        }
        self.buckets.iter().zip(&self.flats).all(|(bucket, flat)| {
            let base = flat.data_ptr() as usize;
            let size = flat.kind().elt_size_in_bytes();
            let mut offset = 0;
            bucket.iter().all(|&i| {
                let grad = &grads[i];
                let here = grad.data_ptr() as usize == base + offset * size;
                offset += grad.numel();
                here
            })
        })
    }

    /// A flat tensor per bucket holding its gradients' current values, with
    /// each gradient turned into a view of its piece.
    fn make_views(&self, grads: &[Tensor]) -> Result<Vec<Tensor>> {
        let last = self.buckets.len().saturating_sub(1);
        let mut flats = Vec::with_capacity(self.buckets.len());
        for (index, bucket) in self.buckets.iter().enumerate() {
            let first = bucket.first().map(|&i| &grads[i]).ok_or_else(|| {
                CollectiveError::InvalidTensor {
                    op: "bucket",
                    detail: "an empty bucket".into(),
                }
            })?;
            let extra = if index == last { COUNTS } else { 0 };
            let len: i64 = bucket.iter().map(|&i| grads[i].numel() as i64).sum();
            let flat = Tensor::zeros([len + extra], (first.kind(), first.device()));
            let mut offset = 0i64;
            tch::no_grad(|| -> Result<()> {
                for &i in bucket {
                    let mut grad = grads[i].shallow_clone();
                    let numel = grad.numel() as i64;
                    // The gradient's own strides (autograd makes gradients
                    // dense and ordered like their parameter, channels-last
                    // ones too), so the optimizer's fused step still applies.
                    let piece = flat.as_strided(grad.size(), grad.stride(), offset);
                    piece.shallow_clone().copy_(&grad);
                    let _view = grad.f_set_source_tensor_(&piece).map_err(|e| {
                        CollectiveError::InvalidTensor {
                            op: "bucket",
                            detail: format!("making a gradient a view of its bucket: {e}"),
                        }
                    })?;
                    offset += numel;
                }
                Ok(())
            })?;
            flats.push(flat);
        }
        Ok(flats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn buckets_respect_the_size_and_kind_boundaries() {
        let t = |n: i64, kind| Tensor::zeros([n], (kind, tch::Device::Cpu));
        let tensors = [
            t(10, Kind::Float),
            t(10, Kind::Float),
            t(30, Kind::Float),
            t(5, Kind::Double),
            t(1, Kind::Double),
        ];
        // 80 bytes per bucket: 40 + 40 fit, the 120-byte tensor stands alone.
        assert_eq!(plan(&tensors, 80), vec![vec![0, 1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn flatten_and_unflatten_are_inverse() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32]);
        let flat = flatten(&[&a, &b]).unwrap() * 2.0;
        unflatten(&flat, &[&a, &b]);
        assert_eq!(
            Vec::<f32>::try_from(a.reshape([-1])).unwrap(),
            [2.0, 4.0, 6.0, 8.0]
        );
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [10.0]);
    }

    #[test]
    fn gradients_become_views_of_their_bucket_and_keep_accumulating_there() {
        let a = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        // Dense but not contiguous, as a channels-last weight is.
        let c = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu))
            .tr()
            .set_requires_grad(true);
        let loss = |scale: f64| {
            ((&a * scale).sum(Kind::Float)
                + (&b * (2.0 * scale)).sum(Kind::Float)
                + (&c * (3.0 * scale)).sum(Kind::Float))
            .backward()
        };
        loss(1.0);
        let params = vec![a.shallow_clone(), b.shallow_clone(), c.shallow_clone()];
        let grads = || vec![a.grad(), b.grad(), c.grad()];
        let mut buckets = GradientBuckets::new(params, 1 << 20);
        buckets.flats = buckets.make_views(&grads()).unwrap();
        assert!(buckets.grads_are_bucket_views(&grads()));
        assert_eq!(c.grad().stride(), c.stride(), "laid out as its parameter");
        let flat = buckets.flats[0].shallow_clone();
        let values = |scale: f32| {
            let mut v = vec![scale; 4];
            v.push(2.0 * scale);
            v.extend([3.0 * scale; 6]);
            v.extend([0.0, 0.0]);
            v
        };
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), values(1.0));
        // Zeroed in place and accumulated again: the bucket sees it all.
        for grad in grads() {
            let _ = grad.shallow_clone().zero_();
        }
        loss(3.0);
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), values(3.0));
        assert!(buckets.grads_are_bucket_views(&grads()));
    }
}
