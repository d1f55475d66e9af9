//! Gradients go over the wire in buckets of about 25 MB, as PyTorch DDP
//! sends them: few enough collectives to amortise their latency, small enough
//! to bound the extra memory of the flattened copies.

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

/// The trainable parameters of a model, bucketed once.
#[derive(Debug)]
pub struct GradientBuckets {
    params: Vec<Tensor>,
    buckets: Vec<Vec<usize>>,
}

impl GradientBuckets {
    pub fn new(params: Vec<Tensor>, bucket_bytes: usize) -> Self {
        let buckets = plan(&params, bucket_bytes);
        Self { params, buckets }
    }

    /// Averages the gradients over the global batch. Each rank's gradients are
    /// the mean over its own `items`; weighting them by `items` makes the
    /// result the mean over every rank's items, the gradient one process
    /// would compute on the whole global batch, even when a rank's batch came
    /// out short. Every parameter must have a gradient (zeros for a rank
    /// without items).
    pub fn sync(
        &self,
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
        let mut flats = Vec::with_capacity(self.buckets.len());
        let mut bytes = 0u64;
        let last = self.buckets.len().saturating_sub(1);
        for (index, bucket) in self.buckets.iter().enumerate() {
            let members: Vec<&Tensor> = bucket.iter().map(|&i| &grads[i]).collect();
            let mut flat = flatten(&members)? * items as f64;
            if index == last {
                // The counts ride along with the last bucket: one collective fewer.
                let extra = Tensor::from_slice(&[loss_sum, items as f64])
                    .to_kind(flat.kind())
                    .to_device(flat.device());
                flat = Tensor::cat(&[flat, extra], 0);
            }
            bytes += (flat.numel() * flat.kind().elt_size_in_bytes()) as u64;
            flats.push(flat);
        }
        collective.all_reduce_sum_many(&mut flats)?;
        let tail = flats
            .last()
            .map(|f| f.narrow(0, f.size()[0] - 2, 2).to_kind(Kind::Double))
            .ok_or_else(|| CollectiveError::InvalidTensor {
                op: "gradient all-reduce",
                detail: "no trainable parameters".into(),
            })?;
        let (loss_total, items_total) = (tail.double_value(&[0]), tail.double_value(&[1]));
        let scale = 1.0 / items_total.max(1.0);
        for (bucket, flat) in self.buckets.iter().zip(&flats) {
            let members: Vec<&Tensor> = bucket.iter().map(|&i| &grads[i]).collect();
            unflatten(&(flat * scale), &members);
        }
        Ok(SyncedStep {
            items: items_total,
            loss_sum: loss_total,
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
