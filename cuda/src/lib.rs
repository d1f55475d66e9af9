//! CUDA libraries bound at run time rather than link time: the CUDA runtime
//! that libtorch loaded into the process (streams, events, the current
//! device), and the helpers that open NCCL and nvJPEG. Nothing of CUDA is
//! needed to build, and a machine without it gets an error naming every
//! place tried, never a panic. The collectives (NCCL's side stream) and the
//! worker (completion events, nvJPEG) share it.

mod library;
mod runtime;

pub use library::{in_process, open_first, symbol};
pub use runtime::{
    set_device, synchronize_torch_stream, CudaRuntime, Event, Stream, EVENT_BLOCKING_SYNC,
    EVENT_DISABLE_TIMING, STREAM_NON_BLOCKING, TORCH_DEFAULT_STREAM,
};
