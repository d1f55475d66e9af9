use tch::{Device, Tensor};

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

/// A worker's devices: one name, a comma-separated list (`cuda:0,cuda:1`;
/// `cpu,cpu` runs two CPU lanes), or `cuda:all` for every visible GPU.
/// Each becomes one lane of the worker, checked like [`parse_device`].
pub fn parse_devices(spec: &str) -> Result<Vec<String>> {
    if spec.trim() == "cuda:all" {
        let count = tch::Cuda::device_count();
        if count == 0 {
            return Err(WorkerError::InvalidOptions(
                "device cuda:all: no CUDA devices are visible".into(),
            ));
        }
        return Ok((0..count).map(|i| format!("cuda:{i}")).collect());
    }
    let mut names = Vec::new();
    for name in spec.split(',').map(str::trim) {
        let device = parse_device(name)?;
        let name = device_name(device);
        if device.is_cuda() && names.contains(&name) {
            return Err(WorkerError::InvalidOptions(format!(
                "device {name} is listed twice in {spec:?}; give each GPU one lane"
            )));
        }
        names.push(name);
    }
    Ok(names)
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

/// A decoded batch onto `device`. To a GPU it goes through pinned host memory
/// (libtorch's caching host allocator, so the pinned blocks are reused) and
/// an asynchronous copy: copies from pageable memory run at a fraction of the
/// bus's speed, and the forward pass queues behind the copy on the same
/// stream without the host waiting for it.
pub fn upload(images: &Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        // `_pin_memory`: the public `pin_memory(device)` logs a deprecation
        // warning for its device argument on every call, and tch cannot
        // leave the argument out. Pinned memory can run short; the copy then
        // goes from pageable memory as before.
        match images.f_internal_pin_memory(device) {
            Ok(pinned) => pinned.to_device_(device, images.kind(), true, false),
            Err(_) => images.to_device(device),
        }
    } else {
        images.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_list_gives_one_lane_per_entry_and_names_what_is_wrong() {
        assert_eq!(parse_devices("cpu").unwrap(), vec!["cpu"]);
        assert_eq!(parse_devices("cpu, cpu").unwrap(), vec!["cpu", "cpu"]);
        let error = parse_devices("cpu,gpu0").unwrap_err().to_string();
        assert!(error.contains("\"gpu0\""), "{error}");
        if tch::Cuda::device_count() == 0 {
            let error = parse_devices("cuda:all").unwrap_err().to_string();
            assert!(error.contains("no CUDA devices"), "{error}");
        } else {
            let error = parse_devices("cuda:0,cuda:0").unwrap_err().to_string();
            assert!(error.contains("listed twice"), "{error}");
        }
    }
}
