//! Collectives for synchronous data-parallel training, behind one trait:
//! a ring all-reduce over TCP for CPU ranks and NCCL, loaded at run time from
//! the `libnccl.so.2` that the torch wheel ships, for CUDA ranks.

mod buckets;
mod error;
mod nccl;
mod ring;

use tch::Tensor;

pub use buckets::{GradientBuckets, SyncedStep, DEFAULT_BUCKET_BYTES};
pub use error::{CollectiveError, Result};
pub use nccl::{NcclCollective, NcclLibrary, NcclUniqueId};
pub use ring::{RingCollective, RingOptions, RingSecret, SECRET_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One rank: every collective is the identity.
    Single,
    Ring,
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Ring => "ring",
            Self::Nccl => "nccl",
        }
    }
}

/// The operations data-parallel training needs. Tensors are contiguous and
/// float or double; the CPU ring takes CPU tensors, NCCL CUDA tensors.
pub trait Collective: Send + std::fmt::Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn backend(&self) -> Backend;
    /// Replaces `tensor` on every rank with the sum over ranks.
    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()>;
    /// `all_reduce_sum` on each of `tensors`, in order. A backend that queues
    /// work on a device overrides it to wait once for all of them.
    fn all_reduce_sum_many(&mut self, tensors: &mut [Tensor]) -> Result<()> {
        tensors.iter_mut().try_for_each(|t| self.all_reduce_sum(t))
    }
    /// Starts `all_reduce_sum` on `tensor`, ordered after the work already
    /// queued on it; `finish_queued` completes every one started. A backend
    /// with a device stream of its own for collectives returns once the
    /// work is queued there, so that they run beside the caller's kernels;
    /// the default runs it to the end now. `tensor` must stay alive and
    /// untouched until `finish_queued` returns.
    fn queue_all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
        self.all_reduce_sum(tensor)
    }
    /// Waits for every collective `queue_all_reduce_sum` started.
    fn finish_queued(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether a step's all-reduce should run while its backward pass still
    /// does: where collectives take none of the cores or SMs backward needs.
    fn overlaps_backward(&self) -> bool {
        false
    }
    /// Replaces `tensor` on every rank with `root`'s.
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()>;
}

/// The collective of a world of one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> Backend {
        Backend::Single
    }
    fn all_reduce_sum(&mut self, _tensor: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _tensor: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
}

/// Makes every rank's copy of `tensors` equal to `root`'s, bucketed.
pub fn broadcast_tensors(
    collective: &mut dyn Collective,
    tensors: &[Tensor],
    root: usize,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    for bucket in buckets::plan(tensors, DEFAULT_BUCKET_BYTES) {
        let members: Vec<&Tensor> = bucket.iter().map(|&i| &tensors[i]).collect();
        let mut flat = buckets::flatten(&members)?;
        collective.broadcast(&mut flat, root)?;
        buckets::unflatten(&flat, &members);
    }
    Ok(())
}
