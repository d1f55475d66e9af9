//! A CUDA stream of the communicator's own, so that a bucket's all-reduce
//! runs beside the backward kernels still coming on torch's stream rather
//! than queued behind them (PyTorch DDP keeps one per process group). An
//! event recorded on torch's stream orders each all-reduce after the
//! gradients it reads. The CUDA runtime is the one libtorch loaded; without
//! it collectives stay on torch's stream.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

use crate::error::{CollectiveError, Result};
use crate::runtime_library::in_process;

use super::library::Stream;

type Event = *mut c_void;
type StreamCreateWithFlags = unsafe extern "C" fn(*mut Stream, c_uint) -> c_int;
type StreamDestroy = unsafe extern "C" fn(Stream) -> c_int;
type EventCreateWithFlags = unsafe extern "C" fn(*mut Event, c_uint) -> c_int;
type EventDestroy = unsafe extern "C" fn(Event) -> c_int;
type EventRecord = unsafe extern "C" fn(Event, Stream) -> c_int;
type StreamWaitEvent = unsafe extern "C" fn(Stream, Event, c_uint) -> c_int;
type SetDevice = unsafe extern "C" fn(c_int) -> c_int;

/// Not implicitly synchronised with the legacy default stream that torch
/// runs on: a blocking stream would wait for every backward kernel.
const STREAM_NON_BLOCKING: c_uint = 1;
const EVENT_DISABLE_TIMING: c_uint = 2;

#[derive(Clone, Copy)]
struct Runtime {
    stream_create: StreamCreateWithFlags,
    stream_destroy: StreamDestroy,
    event_create: EventCreateWithFlags,
    event_destroy: EventDestroy,
    event_record: EventRecord,
    stream_wait_event: StreamWaitEvent,
    set_device: SetDevice,
}

fn runtime() -> Option<Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    *RUNTIME.get_or_init(|| {
        // SAFETY: each type is the prototype cuda_runtime_api.h declares.
        unsafe {
            Some(Runtime {
                stream_create: in_process("cudaStreamCreateWithFlags")?,
                stream_destroy: in_process("cudaStreamDestroy")?,
                event_create: in_process("cudaEventCreateWithFlags")?,
                event_destroy: in_process("cudaEventDestroy")?,
                event_record: in_process("cudaEventRecord")?,
                stream_wait_event: in_process("cudaStreamWaitEvent")?,
                set_device: in_process("cudaSetDevice")?,
            })
        }
    })
}

pub(crate) struct SideStream {
    runtime: Runtime,
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
        let Some(runtime) = runtime() else {
            return Ok(None);
        };
        let device = device as c_int;
        // SAFETY: a device ordinal, then out-pointers for a fresh stream and
        // event; each is destroyed once, in drop (or below on failure).
        unsafe {
            check("cudaSetDevice", (runtime.set_device)(device))?;
            let mut stream: Stream = std::ptr::null_mut();
            check(
                "cudaStreamCreateWithFlags",
                (runtime.stream_create)(&mut stream, STREAM_NON_BLOCKING),
            )?;
            let mut ready: Event = std::ptr::null_mut();
            let created = (runtime.event_create)(&mut ready, EVENT_DISABLE_TIMING);
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
