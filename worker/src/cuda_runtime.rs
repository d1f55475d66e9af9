//! The CUDA runtime that libtorch loaded into the process, for the few calls
//! torch does not expose. It is looked up at run time, so nothing of CUDA is
//! needed to build, and a process without it simply has none.

use std::ffi::c_void;
use std::sync::OnceLock;

use atelier_collective::runtime_library::in_process;

pub type Stream = *mut c_void;

/// torch's default stream is CUDA's legacy default stream, the null handle
/// (libtorch is not built with per-thread default streams).
pub const TORCH_DEFAULT_STREAM: Stream = std::ptr::null_mut();

type CudaSetDevice = unsafe extern "C" fn(i32) -> i32;

/// Makes GPU `index` the calling thread's current device: `None` without a
/// CUDA runtime in the process, the CUDA error code when it refuses.
pub fn set_device(index: usize) -> Option<Result<(), i32>> {
    static SET_DEVICE: OnceLock<Option<CudaSetDevice>> = OnceLock::new();
    // SAFETY: the prototype of cuda_runtime_api.h.
    let set = (*SET_DEVICE.get_or_init(|| unsafe { in_process("cudaSetDevice") }))?;
    // SAFETY: cudaSetDevice takes any index and reports a bad one.
    match unsafe { set(index as i32) } {
        0 => Some(Ok(())),
        code => Some(Err(code)),
    }
}
