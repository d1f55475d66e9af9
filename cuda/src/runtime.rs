//! The CUDA runtime that libtorch loaded into the process, for the few calls
//! torch does not expose (current device, streams, events), used by NCCL's
//! side stream here and by the worker's completion events and nvJPEG. It is
//! looked up at run time, so nothing of CUDA is needed to build, and a
//! process without it simply has none.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

use crate::library::in_process;

pub type Stream = *mut c_void;
pub type Event = *mut c_void;

/// torch's default stream is CUDA's legacy default stream, the null handle
/// (libtorch is not built with per-thread default streams).
pub const TORCH_DEFAULT_STREAM: Stream = std::ptr::null_mut();

/// `cudaStreamNonBlocking`: no implicit synchronisation with the legacy
/// default stream that torch runs on.
pub const STREAM_NON_BLOCKING: c_uint = 0x01;
/// `cudaEventBlockingSync`: a thread waiting on the event sleeps instead of
/// spinning on a core.
pub const EVENT_BLOCKING_SYNC: c_uint = 0x01;
/// `cudaEventDisableTiming`: the cheapest kind of event.
pub const EVENT_DISABLE_TIMING: c_uint = 0x02;

/// The runtime's entry points, with the prototypes of cuda_runtime_api.h.
/// Each returns a `cudaError_t`, 0 on success.
#[derive(Debug, Clone, Copy)]
pub struct CudaRuntime {
    pub set_device: unsafe extern "C" fn(c_int) -> c_int,
    pub stream_create_with_flags: unsafe extern "C" fn(*mut Stream, c_uint) -> c_int,
    pub stream_destroy: unsafe extern "C" fn(Stream) -> c_int,
    pub stream_synchronize: unsafe extern "C" fn(Stream) -> c_int,
    pub stream_wait_event: unsafe extern "C" fn(Stream, Event, c_uint) -> c_int,
    pub event_create_with_flags: unsafe extern "C" fn(*mut Event, c_uint) -> c_int,
    pub event_record: unsafe extern "C" fn(Event, Stream) -> c_int,
    pub event_synchronize: unsafe extern "C" fn(Event) -> c_int,
    pub event_destroy: unsafe extern "C" fn(Event) -> c_int,
    /// Free and total bytes of the current device.
    pub mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> c_int,
}

impl CudaRuntime {
    /// The runtime in this process, if libtorch brought one in.
    pub fn get() -> Option<&'static Self> {
        static RUNTIME: OnceLock<Option<CudaRuntime>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                // SAFETY: each field's type is the prototype of its function.
                unsafe {
                    Some(Self {
                        set_device: in_process("cudaSetDevice")?,
                        stream_create_with_flags: in_process("cudaStreamCreateWithFlags")?,
                        stream_destroy: in_process("cudaStreamDestroy")?,
                        stream_synchronize: in_process("cudaStreamSynchronize")?,
                        stream_wait_event: in_process("cudaStreamWaitEvent")?,
                        event_create_with_flags: in_process("cudaEventCreateWithFlags")?,
                        event_record: in_process("cudaEventRecord")?,
                        event_synchronize: in_process("cudaEventSynchronize")?,
                        event_destroy: in_process("cudaEventDestroy")?,
                        mem_get_info: in_process("cudaMemGetInfo")?,
                    })
                }
            })
            .as_ref()
    }
}

/// Makes GPU `index` the calling thread's current device (streams and
/// events belong to the current device): `None` without a CUDA runtime in
/// the process, the CUDA error code when it refuses.
pub fn set_device(index: usize) -> Option<Result<(), i32>> {
    let runtime = CudaRuntime::get()?;
    // SAFETY: cudaSetDevice takes any index and reports a bad one.
    match unsafe { (runtime.set_device)(index as c_int) } {
        0 => Some(Ok(())),
        code => Some(Err(code)),
    }
}

/// Blocks until the work queued so far on torch's stream (of the current
/// device) is done.
pub fn synchronize_torch_stream() -> Result<(), String> {
    let runtime = CudaRuntime::get()
        .ok_or_else(|| "the CUDA runtime is not loaded (libtorch without CUDA)".to_string())?;
    // SAFETY: the null stream always exists.
    match unsafe { (runtime.stream_synchronize)(TORCH_DEFAULT_STREAM) } {
        0 => Ok(()),
        code => Err(format!(
            "cudaStreamSynchronize failed with CUDA error {code}"
        )),
    }
}
