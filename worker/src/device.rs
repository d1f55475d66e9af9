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

/// The decoded images of `batch` onto `device`, as [`upload`] does. To a GPU
/// the pixels are pinned straight from the batch's buffer instead of being
/// copied into a tensor of their own first: a batch of 256 at 224 px is
/// 154 MB, and every host copy of it costs the compute thread milliseconds
/// that a GPU tagging 10,000 images/s does not have.
pub fn upload_batch(batch: &atelier_pipeline::Batch, device: Device) -> Tensor {
    if device.is_cuda() {
        let (n, s) = (batch.ok_count() as i64, batch.size as i64);
        if batch.pixels.len() as i64 == n * 3 * s * s {
            // SAFETY: the view borrows `batch.pixels` (the length checked
            // above) and ends with this statement, after `_pin_memory` has
            // copied it into pinned memory of its own; nothing returned
            // refers to it.
            let pinned = unsafe {
                Tensor::f_from_blob(
                    batch.pixels.as_ptr().cast(),
                    &[n, 3, s, s],
                    &[3 * s * s, s * s, s, 1],
                    tch::Kind::Float,
                    Device::Cpu,
                )
            }
            .and_then(|view| view.f_internal_pin_memory(device));
            if let Ok(pinned) = pinned {
                return pinned.to_device_(device, tch::Kind::Float, true, false);
            }
        }
    }
    upload(&batch.tensor(), device)
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

    #[test]
    fn an_uploaded_batch_holds_the_decoded_images() {
        use atelier_pipeline::{Batch, BatchItem};
        let item = |slot| BatchItem {
            item_id: "i".into(),
            labels: Default::default(),
            extra: Vec::new(),
            slot,
        };
        let batch = Batch {
            items: vec![item(Ok(0)), item(Ok(1))],
            pixels: (0..2 * 3 * 4 * 4).map(|v| v as f32).collect(),
            size: 4,
        };
        let device = if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        let uploaded = upload_batch(&batch, device);
        assert_eq!(uploaded.size(), vec![2, 3, 4, 4]);
        assert!(uploaded.to_device(Device::Cpu).equal(&batch.tensor()));
    }
}
