//! A CUDA stream of the communicator's own, so that a bucket's all-reduce
//! runs beside the backward kernels still coming on torch's stream rather
//! than queued behind them (PyTorch DDP keeps one per process group). An
//! event recorded on torch's stream orders each all-reduce after the
//! gradients it reads. Without a CUDA runtime collectives stay on torch's
//! stream.

use std::ffi::c_int;

use crate::error::{CollectiveError, Result};
use atelier_cuda::{CudaRuntime, Event, Stream, EVENT_DISABLE_TIMING, STREAM_NON_BLOCKING};

pub(crate) struct SideStream {
    runtime: &'static CudaRuntime,
    device: c_int,
    stream: Stream,
    ready: Event,
}

impl std::fmt::Debug for SideStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SideStream(cuda:{})", self.device)
    }
}

fn check(call: &'static str, code: c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(CollectiveError::Setup(format!(
        "{call} failed with CUDA error {code}"
    )))
}

impl SideStream {
    /// A stream and an event on `cuda:device`; none without a CUDA runtime.
    pub(crate) fn new(device: usize) -> Result<Option<Self>> {
        let Some(runtime) = CudaRuntime::get() else {
            return Ok(None);
        };
        let device = device as c_int;
        // SAFETY: a device ordinal, then out-pointers for a fresh stream and
        // event; each is destroyed once, in drop (or below on failure). The
        // stream must not block on the legacy default stream that torch
        // runs on, or it would wait for every backward kernel.
        unsafe {
            check("cudaSetDevice", (runtime.set_device)(device))?;
            let mut stream: Stream = std::ptr::null_mut();
            check(
                "cudaStreamCreateWithFlags",
                (runtime.stream_create_with_flags)(&mut stream, STREAM_NON_BLOCKING),
            )?;
            let mut ready: Event = std::ptr::null_mut();
            let created = (runtime.event_create_with_flags)(&mut ready, EVENT_DISABLE_TIMING);
            if created != 0 {
                (runtime.stream_destroy)(stream);
                check("cudaEventCreateWithFlags", created)?;
            }
            Ok(Some(Self {
                runtime,
                device,
                stream,
                ready,
            }))
        }
    }

    pub(crate) fn stream(&self) -> Stream {
        self.stream
    }

    /// Makes this stream wait for everything queued so far on `torch`'s,
    /// from any thread (the CUDA device is per thread, so it is set here).
    pub(crate) fn follow(&self, torch: Stream) -> Result<()> {
        // SAFETY: live stream and event handles of this device.
        unsafe {
            check("cudaSetDevice", (self.runtime.set_device)(self.device))?;
            check(
                "cudaEventRecord",
                (self.runtime.event_record)(self.ready, torch),
            )?;
            check(
                "cudaStreamWaitEvent",
                (self.runtime.stream_wait_event)(self.stream, self.ready, 0),
            )
        }
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed only here; the owner has
        // waited for the device before dropping.
        unsafe {
            (self.runtime.event_destroy)(self.ready);
            (self.runtime.stream_destroy)(self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atelier_cuda::TORCH_DEFAULT_STREAM;

    #[test]
    fn a_side_stream_needs_a_gpu_and_says_so_without_one() {
        match SideStream::new(0) {
            Ok(Some(side)) => {
                assert!(tch::Cuda::device_count() > 0);
                side.follow(TORCH_DEFAULT_STREAM).unwrap();
            }
            // No CUDA runtime in the process at all.
            Ok(None) => assert!(CudaRuntime::get().is_none()),
            // A runtime but no device: an error naming the call, no panic.
            Err(error) => {
                assert_eq!(tch::Cuda::device_count(), 0);
                assert!(error.to_string().contains("cudaSetDevice"), "{error}");
            }
        }
    }
}
