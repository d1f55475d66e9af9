use tch::Device;

use crate::error::{Result, WorkerError};

/// Parses `cpu` or `cuda:N` (`cuda` means `cuda:0`), checking that the GPU exists.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(index) => Device::Cuda(index),
            None => {
                return Err(WorkerError::InvalidOptions(format!(
                    "unknown device {other:?}; use cpu or cuda:N"
                )))
            }
        },
    };
    if let Device::Cuda(index) = device {
        let available = tch::Cuda::device_count();
        if index as i64 >= available {
            return Err(WorkerError::InvalidOptions(format!(
                "device {name} is not available ({available} CUDA devices visible)"
            )));
        }
    }
    Ok(device)
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    }
}

type CudaSetDevice = unsafe extern "C" fn(i32) -> i32;
type CudaMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;

/// Bytes in use on GPU `index` (by every process), from the CUDA runtime
/// that libtorch already loaded; `None` without one.
pub fn gpu_memory_used(index: usize) -> Option<usize> {
    // SAFETY: looking symbols up in the running process has no side effects,
    // and both have the prototypes of cuda_runtime_api.h.
    unsafe {
        let this = libloading::os::unix::Library::this();
        let set_device = *this.get::<CudaSetDevice>(b"cudaSetDevice").ok()?;
        let mem_get_info = *this.get::<CudaMemGetInfo>(b"cudaMemGetInfo").ok()?;
        if set_device(index as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        if mem_get_info(&mut free, &mut total) != 0 {
            return None;
        }
        Some(total.saturating_sub(free))
    }
}
