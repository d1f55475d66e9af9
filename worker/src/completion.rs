//! Knowing when queued GPU work is done without waiting for what was queued
//! after it. A tagging lane queues batch k+1's forward pass before it reads
//! batch k's predictions back; a plain copy to the host would wait for batch
//! k+1 as well (torch's stream runs in order), and the GPU would idle while
//! the host builds and writes batch k's rows.

use atelier_cuda::{
    CudaRuntime, Event, EVENT_BLOCKING_SYNC, EVENT_DISABLE_TIMING, TORCH_DEFAULT_STREAM,
};

/// A point in the work queued on one GPU's torch stream.
pub struct CompletionEvent {
    event: Event,
    runtime: &'static CudaRuntime,
}

impl CompletionEvent {
    /// An event after everything queued so far on GPU `index`'s torch stream;
    /// none without a CUDA runtime in the process or when CUDA refuses (the
    /// caller then waits for the whole device instead).
    pub fn record(index: usize) -> Option<Self> {
        let runtime = CudaRuntime::get()?;
        let mut event: Event = std::ptr::null_mut();
        // SAFETY: `event` is written by cudaEventCreateWithFlags before use
        // and destroyed once, on drop; the current device is set first because
        // an event must be recorded on a stream of its own device.
        unsafe {
            if atelier_cuda::set_device(index) != Some(Ok(()))
                || (runtime.event_create_with_flags)(
                    &mut event,
                    EVENT_BLOCKING_SYNC | EVENT_DISABLE_TIMING,
                ) != 0
            {
                return None;
            }
            let recorded = Self { event, runtime };
            ((runtime.event_record)(event, TORCH_DEFAULT_STREAM) == 0).then_some(recorded)
        }
    }

    /// Blocks until the work queued before the event is done; a CUDA error
    /// raised by that work comes back here.
    pub fn wait(self) -> Result<(), String> {
        // SAFETY: the event is live until drop.
        match unsafe { (self.runtime.event_synchronize)(self.event) } {
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
            (self.runtime.event_destroy)(self.event);
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
