use std::cell::RefCell;
use std::collections::HashMap;

use atelier_pipeline::{normalize, Batch, CpuJpegDecoder, Pixels};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, WorkerError};
use crate::nvjpeg::NvJpegDecoder;

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

/// Bytes in use on GPU `index` (by every process), from the CUDA runtime
/// that libtorch already loaded; `None` without one.
pub fn gpu_memory_used(index: usize) -> Option<usize> {
    let runtime = atelier_cuda::CudaRuntime::get()?;
    atelier_cuda::set_device(index)?.ok()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two out-pointers to write.
    if unsafe { (runtime.mem_get_info)(&mut free, &mut total) } != 0 {
        return None;
    }
    Some(total.saturating_sub(free))
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

/// The decoded images of `batch` onto `device`, normalised, as [`upload`]
/// does. To a GPU the pixels are pinned straight from the batch's buffer
/// instead of being copied into a tensor of their own first, and a batch
/// of bytes ([`Pixels::Bytes`]) is normalised there: a batch of 256 at
/// 224 px is 154 MB of floats, 39 MB of bytes, and every host copy of it
/// costs the compute thread time that a GPU tagging 10,000 images/s does
/// not have.
pub fn upload_batch(batch: &Batch, device: Device) -> Tensor {
    if device.is_cuda() {
        let shape = [
            batch.ok_count() as i64,
            3,
            batch.size as i64,
            batch.size as i64,
        ];
        let copy = |pinned: Tensor| pinned.to_device_(device, pinned.kind(), true, false);
        let uploaded = match &batch.pixels {
            Pixels::Normalized(values) => pin(values, &shape, Kind::Float, device).map(copy),
            Pixels::Bytes {
                values,
                normalization,
            } => pin(values, &shape, Kind::Uint8, device)
                .map(|pinned| normalize(&copy(pinned), normalization)),
            Pixels::Encoded { .. } => None,
        };
        if let Some(uploaded) = uploaded {
            return uploaded;
        }
    }
    upload(&batch.tensor(), device)
}

/// The decoded images of `batch` on `device`, as [`upload_batch`] gives
/// them; a batch of encoded JPEGs ([`Pixels::Encoded`]) is decoded there by
/// nvJPEG first. An item whose picture fails to decode leaves the batch with
/// its error (see [`Batch::decode_on`]), so read the items' slots after this.
pub fn device_images(batch: &mut Batch, device: Device) -> Tensor {
    if !matches!(batch.pixels, Pixels::Encoded { .. }) {
        return upload_batch(batch, device);
    }
    let Device::Cuda(index) = device else {
        return batch.decode_on(&mut CpuJpegDecoder, device);
    };
    with_decoder(index, |decoder| match decoder {
        Ok(decoder) => batch.decode_on(decoder, device),
        Err(_) => batch.decode_on(&mut CpuJpegDecoder, device),
    })
}

/// That a run asking for GPU decoding (`--gpu-decode`) can have it: a CUDA
/// device and an nvJPEG that starts on it. (A worker lane without a GPU
/// decodes on the CPU instead; a single run says so up front.) The decoder
/// made here is the one this thread's batches then use.
pub fn check_gpu_decode(gpu_decode: bool, device: Device) -> Result<()> {
    if !gpu_decode {
        return Ok(());
    }
    let Device::Cuda(index) = device else {
        return Err(WorkerError::InvalidOptions(
            "--gpu-decode needs a CUDA device (--device cuda:N)".into(),
        ));
    };
    with_decoder(index, |decoder| match decoder {
        Ok(_) => Ok(()),
        Err(e) => Err(WorkerError::InvalidOptions(format!("--gpu-decode: {e}"))),
    })
}

/// `f` with this thread's nvJPEG decoder for GPU `index`, made on first use,
/// or why there is none.
fn with_decoder<T>(
    index: usize,
    f: impl FnOnce(&mut std::result::Result<NvJpegDecoder, String>) -> T,
) -> T {
    DECODERS.with(|decoders| {
        let mut decoders = decoders.borrow_mut();
        let decoder = decoders.entry(index).or_insert_with(|| {
            NvJpegDecoder::new(Device::Cuda(index)).map_err(|error| {
                tracing::warn!(%error, device = index, "no gpu jpeg decoder; decoding on the cpu");
                error
            })
        });
        f(decoder)
    })
}

thread_local! {
    /// Per GPU, the compute thread's nvJPEG decoder, or why there is none.
    static DECODERS: RefCell<HashMap<usize, Result<NvJpegDecoder, String>>> =
        RefCell::new(HashMap::new());
}

/// A pinned copy of `values` viewed as `shape`; none if the length does not
/// match or pinning fails (the caller then copies from pageable memory).
fn pin<T>(values: &[T], shape: &[i64; 4], kind: Kind, device: Device) -> Option<Tensor> {
    if values.len() as i64 != shape.iter().product::<i64>() {
        return None;
    }
    let (plane, side) = (shape[2] * shape[3], shape[3]);
    // SAFETY: the view borrows `values` (its length checked above) and ends
    // with this statement, after `_pin_memory` has copied it into pinned
    // memory of its own; nothing returned refers to it.
    unsafe {
        Tensor::f_from_blob(
            values.as_ptr().cast(),
            shape,
            &[3 * plane, plane, side, 1],
            kind,
            Device::Cpu,
        )
    }
    .and_then(|view| view.f_internal_pin_memory(device))
    .ok()
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
    fn an_uploaded_batch_holds_the_normalised_images() {
        use atelier_pipeline::{BatchItem, Normalization};
        let item = |slot| BatchItem {
            item_id: "i".into(),
            labels: Default::default(),
            extra: Vec::new(),
            slot,
        };
        let bytes: Vec<u8> = (0..2 * 3 * 4 * 4).map(|v| (v * 5) as u8).collect();
        let normalization = Normalization::IMAGENET;
        let as_bytes = Batch {
            items: vec![item(Ok(0)), item(Ok(1))],
            pixels: Pixels::Bytes {
                values: bytes.clone(),
                normalization,
            },
            size: 4,
        };
        // What the pipeline's tables make of the same bytes.
        let plane = 16;
        let floats: Vec<f32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / plane) % 3;
                (f32::from(v) / 255.0 - normalization.mean[c]) / normalization.std[c]
            })
            .collect();
        let as_floats = Batch {
            pixels: Pixels::Normalized(floats),
            ..as_bytes.clone()
        };
        let device = if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        };
        for batch in [&as_bytes, &as_floats] {
            let uploaded = upload_batch(batch, device).to_device(Device::Cpu);
            assert_eq!(uploaded.size(), vec![2, 3, 4, 4]);
            assert_eq!(uploaded.kind(), Kind::Float);
            let diff = (&uploaded - as_floats.tensor())
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-6, "differs by {diff}");
        }
    }
}
