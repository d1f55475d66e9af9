//! `atelier doctor`: what this machine offers atelier (libtorch, GPUs, NCCL,
//! nvJPEG) in one report, with nvJPEG checked against libjpeg and timed on
//! every GPU. Each line names what is missing and why; nothing here fails.

use std::time::Instant;

use atelier_collective::NcclLibrary;
use atelier_pipeline::{CpuJpegDecoder, JpegDecoder};
use atelier_worker::nvjpeg::{NvJpegDecoder, NvJpegLibrary};
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
    Ok(atelier_catalog::synthetic::encode_jpeg(
        &pixels, width, height, 90,
    )?)
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
    format!(
        "gpu decode with {engine}: {:.0} images/s (384x512, batches of {batch}); against libjpeg mean |diff| {mean:.2}, max {max:.0} of 255",
        batch as f64 / best
    )
}

/// The path of a library mapped into this process, by file name.
fn mapped_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with(&format!("/{name}")))
        .map(String::from)
}
