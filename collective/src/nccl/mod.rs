//! The CUDA backend: NCCL communicators over the tensors torch already holds
//! on the device, on torch's default stream. NCCL calls return once the work
//! is queued, so every collective waits for the device under a watchdog that
//! aborts the communicator when a peer stops answering.

mod library;
mod side_stream;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::error::{CollectiveError, Result};
use crate::{Backend, Collective};
use atelier_cuda::{Stream, TORCH_DEFAULT_STREAM};
use library::{Comm, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM};
pub use library::{NcclLibrary, NcclUniqueId};
use side_stream::SideStream;

#[derive(Debug)]
pub struct NcclCollective {
    library: Arc<NcclLibrary>,
    comm: Comm,
    rank: usize,
    world: usize,
    device_index: usize,
    timeout: Duration,
    aborted: bool,
    /// For `queue_all_reduce_sum`, made at its first call: `None` inside
    /// when there is no CUDA runtime to make it with.
    side: Option<Option<SideStream>>,
    /// Whether collectives were queued that nobody waited for yet.
    queued: bool,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls
// on it are not concurrent; `&mut self` on every collective ensures that.
unsafe impl Send for NcclCollective {}

/// A raw communicator handle that the watchdog thread may abort.
#[derive(Clone, Copy)]
struct AbortHandle(usize);

impl NcclCollective {
    /// Joins the communicator named by `id` as `rank` on `cuda:device_index`.
    /// Every rank must call this; it fails after `timeout` if some never do.
    pub fn new(
        library: Arc<NcclLibrary>,
        id: NcclUniqueId,
        rank: usize,
        world: usize,
        device_index: usize,
        timeout: Duration,
    ) -> Result<Self> {
        if rank >= world {
            return Err(CollectiveError::Setup(format!(
                "rank {rank} in a world of {world}"
            )));
        }
        // Init blocks until every rank arrives, so it runs on a helper thread
        // that can be abandoned when one never does.
        let (sender, receiver) = mpsc::channel();
        let helper = Arc::clone(&library);
        std::thread::Builder::new()
            .name("nccl-init".into())
            .spawn(move || {
                let result = init(&helper, id, rank, world, device_index);
                let _ = sender.send(result.map(|comm| comm as usize));
            })
            .map_err(|e| CollectiveError::Setup(format!("starting the NCCL init thread: {e}")))?;
        let comm = match receiver.recv_timeout(timeout) {
            Ok(result) => result? as Comm,
            Err(_) => {
                return Err(CollectiveError::Nccl {
                    call: "ncclCommInitRank",
                    code: -1,
                    message: format!("not every rank joined within {timeout:?}"),
                })
            }
        };
        tracing::info!(
            rank,
            world,
            device = device_index,
            "nccl communicator ready"
        );
        Ok(Self {
            library,
            comm,
            rank,
            world,
            device_index,
            timeout,
            aborted: false,
            side: None,
            queued: false,
        })
    }

    fn check_tensor(&self, tensor: &Tensor, op: &'static str) -> Result<(usize, i32)> {
        if tensor.device() != Device::Cuda(self.device_index) || !tensor.is_contiguous() {
            return Err(CollectiveError::InvalidTensor {
                op,
                detail: format!(
                    "NCCL on cuda:{} takes contiguous tensors there, not {:?}",
                    self.device_index,
                    tensor.device()
                ),
            });
        }
        let kind = match tensor.kind() {
            Kind::Float => NCCL_FLOAT32,
            Kind::Double => NCCL_FLOAT64,
            kind => {
                return Err(CollectiveError::InvalidTensor {
                    op,
                    detail: format!("kind {kind:?}; use float or double"),
                })
            }
        };
        if self.aborted {
            return Err(CollectiveError::Nccl {
                call: op,
                code: -1,
                message: "the communicator was aborted after an earlier timeout".into(),
            });
        }
        Ok((tensor.numel(), kind))
    }

    /// Waits for the queued collective; aborts the communicator if it does
    /// not finish in time, which also releases the stuck kernels.
    fn wait(&mut self, call: &'static str) -> Result<()> {
        let (finished, watch) = mpsc::channel::<()>();
        let handle = AbortHandle(self.comm as usize);
        let abort = self.library.comm_abort;
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: the communicator outlives this thread (joined below).
                unsafe { abort(handle.0 as Comm) };
                return true;
            }
            false
        });
        tch::Cuda::synchronize(self.device_index as i64);
        let _ = finished.send(());
        if watchdog.join().unwrap_or(true) {
            self.aborted = true;
            return Err(CollectiveError::Nccl {
                call,
                code: -1,
                message: format!(
                    "no completion within {timeout:?}: a peer rank is dead or stuck; communicator aborted"
                ),
            });
        }
        let mut state = 0;
        // SAFETY: a live communicator and one int to write.
        let code = unsafe { (self.library.comm_get_async_error)(self.comm, &mut state) };
        self.library.check("ncclCommGetAsyncError", code)?;
        self.library.check(call, state)
    }

    /// Queues an in-place sum of `tensor` on `stream`; false when it is empty.
    fn queue_all_reduce(&mut self, tensor: &mut Tensor, stream: Stream) -> Result<bool> {
        let (count, kind) = self.check_tensor(tensor, "ncclAllReduce")?;
        if count == 0 {
            return Ok(false);
        }
        let data = tensor.data_ptr();
        // SAFETY: in place on a contiguous device tensor of `count` elements
        // that the caller's `&mut` keeps alive until `wait` has seen the
        // kernel finish.
        let code = unsafe {
            (self.library.all_reduce)(data, data, count, kind, NCCL_SUM, self.comm, stream)
        };
        self.library.check("ncclAllReduce", code)?;
        Ok(true)
    }

    /// The side stream for overlapped all-reduces, made on first use.
    fn side_stream(&mut self) -> Option<&SideStream> {
        let device = self.device_index;
        self.side
            .get_or_insert_with(|| match SideStream::new(device) {
                Ok(side) => side,
                Err(error) => {
                    tracing::warn!(%error, "no side stream for collectives; they queue behind torch's kernels");
                    None
                }
            })
            .as_ref()
    }
}

fn init(
    library: &NcclLibrary,
    id: NcclUniqueId,
    rank: usize,
    world: usize,
    device_index: usize,
) -> Result<Comm> {
    match atelier_cuda::set_device(device_index) {
        Some(Ok(())) => {}
        Some(Err(code)) => {
            return Err(CollectiveError::Setup(format!(
                "cudaSetDevice({device_index}) failed with CUDA error {code}"
            )));
        }
        None if device_index != 0 => {
            return Err(CollectiveError::Setup(format!(
                "cannot select cuda:{device_index}: no CUDA runtime is loaded"
            )))
        }
        None => {}
    }
    let mut comm: Comm = std::ptr::null_mut();
    // SAFETY: NCCL writes the new communicator into `comm`.
    let code = unsafe { (library.comm_init_rank)(&mut comm, world as i32, id, rank as i32) };
    library.check("ncclCommInitRank", code)?;
    Ok(comm)
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> Backend {
        Backend::Nccl
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
        self.all_reduce_sum_many(std::slice::from_mut(tensor))
    }

    /// Queues every all-reduce on the stream, then waits once: the host does
    /// not stall between a step's buckets.
    fn all_reduce_sum_many(&mut self, tensors: &mut [Tensor]) -> Result<()> {
        let mut queued = false;
        let mut refused = None;
        for tensor in tensors.iter_mut() {
            match self.queue_all_reduce(tensor, TORCH_DEFAULT_STREAM) {
                Ok(now) => queued |= now,
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        // Whatever was queued still writes into its tensor: wait for it
        // before the caller may drop them, even when a later one was refused.
        let waited = if queued {
            self.wait("ncclAllReduce")
        } else {
            Ok(())
        };
        refused.map_or(waited, Err)
    }

    /// Queues the sum on the side stream, after everything torch's stream
    /// holds so far (the gradients of the bucket), and returns at once.
    fn queue_all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
        let stream = match self.side_stream() {
            Some(side) => {
                side.follow(TORCH_DEFAULT_STREAM)?;
                side.stream()
            }
            None => TORCH_DEFAULT_STREAM,
        };
        let queued = self.queue_all_reduce(tensor, stream)?;
        self.queued |= queued;
        Ok(())
    }

    /// The all-reduce runs on its own stream and NCCL's few SMs; the host
    /// thread that feeds it only waits.
    fn overlaps_backward(&self) -> bool {
        true
    }

    /// Waits for the whole device, the side stream included, so torch's
    /// later kernels read the sums.
    fn finish_queued(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.queued) {
            return Ok(());
        }
        self.wait("ncclAllReduce")
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let (count, kind) = self.check_tensor(tensor, "ncclBroadcast")?;
        if count == 0 {
            return Ok(());
        }
        let data = tensor.data_ptr();
        // SAFETY: as in queue_all_reduce.
        let code = unsafe {
            (self.library.broadcast)(
                data,
                data,
                count,
                kind,
                root as i32,
                self.comm,
                TORCH_DEFAULT_STREAM,
            )
        };
        self.library.check("ncclBroadcast", code)?;
        self.wait("ncclBroadcast")
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: the communicator is live and used by no one else any more.
        unsafe {
            if self.aborted {
                return;
            }
            (self.library.comm_destroy)(self.comm);
        }
    }
}
