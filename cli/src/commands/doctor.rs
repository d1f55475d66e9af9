//! `atelier doctor`: what this machine offers atelier (libtorch, GPUs, NCCL,
//! nvJPEG) in one report, with nvJPEG checked against libjpeg and timed on
//! every GPU. Each line names what is missing and why; nothing here fails.

use std::time::Instant;

use atelier_collective::NcclLibrary;
use atelier_pipeline::Crop;
use atelier_pipeline::{
    Batch, BatchItem, CpuJpegDecoder, DecodeLimits, EncodedImage, JpegDecoder, Normalization,
    Pixels,
};
use atelier_worker::CompletionEvent;
use atelier_worker::{NvJpegDecoder, NvJpegLibrary};
use clap::Args;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// JPEGs per timed batch in the GPU decode check.
    #[arg(long, default_value_t = 256)]
    pub decode_batch: usize,
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    println!(
        "atelier {} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        atelier_proto::PROTOCOL_VERSION
    );
    println!(
        "libtorch: {}",
        mapped_library("libtorch_cpu.so").unwrap_or_else(|| "not mapped".into())
    );
    println!(
        "cpu: {} cores, {} torch threads",
        std::thread::available_parallelism().map_or(0, usize::from),
        tch::get_num_threads()
    );
    println!(
        "cpu bf16: {}",
        if atelier_models::cpu_has_bf16() {
            "avx512-bf16, so --bf16 pays on the cpu too"
        } else {
            "no bf16 instructions; keep --bf16 for gpus"
        }
    );
    let gpus = tch::Cuda::device_count();
    println!("cuda devices: {gpus}");
    match NcclLibrary::load().and_then(|library| library.version().map(|v| (library, v))) {
        Ok((library, version)) => println!("nccl: {} (version {version})", library.path()),
        Err(error) => println!("nccl: unavailable: {error}"),
    }
    match NvJpegLibrary::load() {
        Ok(library) => println!("nvjpeg: {}", library.path()),
        Err(error) => println!("nvjpeg: unavailable: {error}"),
    }
    let jpeg = test_jpeg()?;
    for index in 0..gpus.max(0) as usize {
        println!(
            "cuda:{index}: {}",
            gpu_decode_check(index, &jpeg, args.decode_batch.max(1))
        );
        // Tagging reads a batch back while the next runs only with events.
        let events = match CompletionEvent::record(index).map(CompletionEvent::wait) {
            Some(Ok(())) => "recorded and waited on".to_string(),
            Some(Err(error)) => error,
            None => "unavailable; tagging waits for the whole device".to_string(),
        };
        println!("cuda:{index}: completion events: {events}");
    }
    Ok(())
}

/// A 384×512 photo-like JPEG (smooth gradients), as the synthetic catalogue makes.
fn test_jpeg() -> anyhow::Result<Vec<u8>> {
    let (width, height) = (384usize, 512usize);
    let pixels: Vec<u8> = (0..height)
        .flat_map(|y| {
            (0..width).flat_map(move |x| {
                [
                    (x * 255 / width) as u8,
                    (y * 255 / height) as u8,
                    ((x + y) % 200) as u8,
                ]
            })
        })
        .collect();
    Ok(atelier_catalog::encode_jpeg(&pixels, width, height, 90)?)
}

/// nvJPEG on GPU `index`: which engine, how far from libjpeg, how fast.
fn gpu_decode_check(index: usize, jpeg: &[u8], batch: usize) -> String {
    let mut decoder = match NvJpegDecoder::new(Device::Cuda(index)) {
        Ok(decoder) => decoder,
        Err(error) => return format!("gpu decode unavailable: {error}"),
    };
    let engine = if decoder.hardware() {
        "jpeg engines"
    } else {
        "hybrid decoder"
    };
    let reference = match CpuJpegDecoder.decode(&[jpeg]).remove(0) {
        Ok(image) => image.to_kind(Kind::Float),
        Err(error) => return format!("{engine}; the cpu decoder failed: {error}"),
    };
    let jpegs = vec![jpeg; batch];
    let mut timed = Vec::new();
    let mut difference = None;
    for _ in 0..4 {
        let started = Instant::now();
        let decoded = decoder.decode(&jpegs);
        timed.push(started.elapsed().as_secs_f64());
        let first = match decoded.into_iter().next() {
            Some(Ok(image)) => image,
            Some(Err(error)) => return format!("{engine}; decode failed: {error}"),
            None => return format!("{engine}; decode returned nothing"),
        };
        let diff: Tensor = (first.to_device(Device::Cpu).to_kind(Kind::Float) - &reference).abs();
        difference = Some((
            diff.mean(Kind::Float).double_value(&[]),
            diff.max().double_value(&[]),
        ));
    }
    // The first batch pays for set-up; the best of the rest.
    let best = timed[1..].iter().copied().fold(f64::INFINITY, f64::min);
    let (mean, max) = difference.unwrap_or_default();
    let prepared = match prepared_per_second(&mut decoder, Device::Cuda(index), jpeg, batch) {
        Ok(rate) => format!("{rate:.0} images/s"),
        Err(error) => format!("failed: {error}"),
    };
    format!(
        "gpu decode with {engine}: {:.0} images/s (384x512, batches of {batch}); against libjpeg mean |diff| {mean:.2}, max {max:.0} of 255; with centre crop, resize to 224 and normalise: {prepared}",
        batch as f64 / best
    )
}

/// The whole device-side preparation a `--gpu-decode` batch goes through
/// ([`Batch::decode_on`]), timed: best of three after a warm-up.
fn prepared_per_second(
    decoder: &mut dyn JpegDecoder,
    device: Device,
    jpeg: &[u8],
    batch: usize,
) -> anyhow::Result<f64> {
    let (width, height) = (384.0, 512.0);
    let crop = Crop {
        left: 0.0,
        top: (height - width) / 2.0,
        width,
        height: width,
        flip: false,
        warp: None,
    };
    let template = Batch {
        items: (0..batch)
            .map(|slot| BatchItem {
                item_id: format!("doctor-{slot}"),
                labels: Default::default(),
                extra: Vec::new(),
                slot: Ok(slot),
            })
            .collect(),
        pixels: Pixels::Encoded {
            images: vec![
                EncodedImage::Jpeg {
                    bytes: bytes::Bytes::copy_from_slice(jpeg),
                    crop,
                };
                batch
            ],
            normalization: Normalization::IMAGENET,
            limits: DecodeLimits::default(),
        },
        size: 224,
    };
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let mut batch = template.clone();
        let started = Instant::now();
        let images = batch.decode_on(decoder, device);
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        best = best.min(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            batch.ok_count() == images.size()[0] as usize && images.size()[0] > 0,
            "{} of {} images came through",
            images.size()[0],
            batch.items.len()
        );
    }
    Ok(template.items.len() as f64 / best)
}

/// The path of a library mapped into this process, by file name.
fn mapped_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with(&format!("/{name}")))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timed_preparation_brings_every_image_through() {
        let jpeg = test_jpeg().unwrap();
        let rate = prepared_per_second(&mut CpuJpegDecoder, Device::Cpu, &jpeg, 3).unwrap();
        assert!(rate > 0.0 && rate.is_finite(), "{rate}");
    }

    #[test]
    fn a_decoder_that_fails_everything_is_not_timed_as_a_success() {
        struct Broken;
        impl JpegDecoder for Broken {
            fn decode(&mut self, jpegs: &[&[u8]]) -> Vec<Result<Tensor, String>> {
                jpegs.iter().map(|_| Err("broken".into())).collect()
            }
        }
        // The CPU takes over what the device decoder refuses: still every image.
        let jpeg = test_jpeg().unwrap();
        assert!(prepared_per_second(&mut Broken, Device::Cpu, &jpeg, 2).is_ok());
        let error = prepared_per_second(&mut Broken, Device::Cpu, b"\xff\xd8 not a jpeg", 2);
        assert!(error.is_err());
    }
}
