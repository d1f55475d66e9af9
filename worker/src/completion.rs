//! Knowing when queued GPU work is done without waiting for what was queued
//! after it. A tagging lane queues batch k+1's forward pass before it reads
//! batch k's predictions back; a plain copy to the host would wait for batch
//! k+1 as well (torch's stream runs in order), and the GPU would idle while
//! the host builds and writes batch k's rows.

use std::ffi::c_void;
use std::sync::OnceLock;

use atelier_collective::runtime_library::in_process;

use crate::cuda_runtime::{self, Stream as CudaStream, TORCH_DEFAULT_STREAM};

type CudaEvent = *mut c_void;
type CudaEventCreateWithFlags = unsafe extern "C" fn(*mut CudaEvent, u32) -> i32;
type CudaEventRecord = unsafe extern "C" fn(CudaEvent, CudaStream) -> i32;
type CudaEventSynchronize = unsafe extern "C" fn(CudaEvent) -> i32;
type CudaEventDestroy = unsafe extern "C" fn(CudaEvent) -> i32;

/// `cudaEventBlockingSync`: the waiting thread sleeps instead of spinning
/// on a core that the decode threads need.
const BLOCKING_SYNC: u32 = 0x01;
/// `cudaEventDisableTiming`: the cheapest kind of event.
const DISABLE_TIMING: u32 = 0x02;

#[derive(Clone, Copy)]
struct Runtime {
    create: CudaEventCreateWithFlags,
    record: CudaEventRecord,
    synchronize: CudaEventSynchronize,
    destroy: CudaEventDestroy,
}

/// The CUDA runtime libtorch brought into the process, if it did.
fn runtime() -> Option<Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    *RUNTIME.get_or_init(|| {
        // SAFETY: the prototypes are those of cuda_runtime_api.h.
        unsafe {
            Some(Runtime {
                create: in_process("cudaEventCreateWithFlags")?,
                record: in_process("cudaEventRecord")?,
                synchronize: in_process("cudaEventSynchronize")?,
                destroy: in_process("cudaEventDestroy")?,
            })
        }
    })
}

/// A point in the work queued on one GPU's torch stream.
pub struct CompletionEvent {
    event: CudaEvent,
    runtime: Runtime,
}

impl CompletionEvent {
    /// An event after everything queued so far on GPU `index`'s torch stream;
    /// none without a CUDA runtime in the process or when CUDA refuses (the
    /// caller then waits for the whole device instead).
    pub fn record(index: usize) -> Option<Self> {
        let runtime = runtime()?;
        let mut event: CudaEvent = std::ptr::null_mut();
        // SAFETY: `event` is written by cudaEventCreateWithFlags before use
        // and destroyed once, on drop; the current device is set first because
        // an event must be recorded on a stream of its own device.
        unsafe {
            if cuda_runtime::set_device(index) != Some(Ok(()))
                || (runtime.create)(&mut event, BLOCKING_SYNC | DISABLE_TIMING) != 0
            {
                return None;
            }
            let recorded = Self { event, runtime };
            ((runtime.record)(event, TORCH_DEFAULT_STREAM) == 0).then_some(recorded)
        }
    }

    /// Blocks until the work queued before the event is done; a CUDA error
    /// raised by that work comes back here.
    pub fn wait(self) -> Result<(), String> {
        // SAFETY: the event is live until drop.
        match unsafe { (self.runtime.synchronize)(self.event) } {
            0 => Ok(()),
            code => Err(format!(
                "waiting for the gpu's queued work failed with CUDA error {code}"
            )),
        }
    }
}

impl std::fmt::Debug for CompletionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionEvent")
            .field("event", &self.event)
            .finish()
    }
}

impl Drop for CompletionEvent {
    fn drop(&mut self) {
        // SAFETY: created by cudaEventCreateWithFlags and destroyed only here.
        unsafe {
            (self.runtime.destroy)(self.event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_there_is_no_event_and_no_panic() {
        if tch::Cuda::device_count() > 0 {
            let event = CompletionEvent::record(0).expect("an event on cuda:0");
            event.wait().expect("nothing queued fails");
        } else {
            assert!(CompletionEvent::record(0).is_none());
        }
    }
}
