//! All-reduce check and bandwidth: `world` ranks as threads of this process,
//! over the CPU ring on loopback or over NCCL (rank r on cuda:r). Each rank
//! contributes integer-valued floats, so the sum is known exactly and every
//! result is checked; timings follow nccl-tests (algbw = bytes / time,
//! busbw = algbw * 2 (n - 1) / n).
//!
//! cargo run --release -p atelier-collective --example allreduce -- ring 2 1,4,16,64,256 5

use std::time::{Duration, Instant};

use atelier_collective::{Collective, NcclCollective, NcclLibrary, RingCollective, RingOptions};
use tch::{Device, Kind, Tensor};

fn value(rank: usize, index: usize) -> f32 {
    ((index % 1000) + rank) as f32
}

fn expected(world: usize, index: usize) -> f32 {
    (world * (index % 1000) + world * (world - 1) / 2) as f32
}

/// Runs `iters` all-reduces of `len` floats on one rank; returns the median
/// seconds and whether every element came out exact.
fn run_rank(
    collective: &mut dyn Collective,
    device: Device,
    len: usize,
    iters: usize,
) -> (f64, bool) {
    let rank = collective.rank();
    let world = collective.world_size();
    let host: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
    let source = Tensor::from_slice(&host).to_device(device);
    let mut times = Vec::new();
    let mut exact = true;
    for _ in 0..iters {
        let mut data = source.copy();
        let started = Instant::now();
        collective.all_reduce_sum(&mut data).expect("all-reduce");
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        times.push(started.elapsed().as_secs_f64());
        let got = Vec::<f32>::try_from(data.to_device(Device::Cpu).to_kind(Kind::Float))
            .expect("copy back");
        exact &= got
            .iter()
            .enumerate()
            .all(|(i, v)| *v == expected(world, i));
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], exact)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map_or("ring", String::as_str).to_string();
    let world: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let sizes: Vec<usize> = args
        .get(3)
        .map_or("1,4,16,64,256", String::as_str)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let iters: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    tch::set_num_threads(1);

    let collectives: Vec<Box<dyn Collective>> = match backend.as_str() {
        "ring" => {
            let defaults = RingOptions::default();
            let options = RingOptions {
                timeout: Duration::from_secs(120),
                chunk_bytes: std::env::var("CHUNK_KB")
                    .ok()
                    .and_then(|kb| kb.parse::<usize>().ok())
                    .map_or(defaults.chunk_bytes, |kb| kb << 10),
                ..defaults
            };
            RingCollective::loopback(world, options)
                .expect("ring")
                .into_iter()
                .map(|ring| Box::new(ring) as Box<dyn Collective>)
                .collect()
        }
        "nccl" => {
            let library = NcclLibrary::load().expect("nccl");
            println!(
                "nccl {} from {}",
                library.version().expect("version"),
                library.path()
            );
            let id = library.unique_id().expect("unique id");
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..world)
                    .map(|rank| {
                        let library = library.clone();
                        scope.spawn(move || {
                            Box::new(
                                NcclCollective::new(
                                    library,
                                    id,
                                    rank,
                                    world,
                                    rank,
                                    Duration::from_secs(60),
                                )
                                .expect("nccl communicator"),
                            ) as Box<dyn Collective>
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("join"))
                    .collect()
            })
        }
        other => panic!("backend {other}: use ring or nccl"),
    };

    println!("backend {backend} world {world} iters {iters}");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>6}",
        "MB", "ms", "algbw GB/s", "busbw GB/s", "exact"
    );
    let mut collectives = collectives;
    for mb in sizes {
        let len = mb * (1 << 20) / 4;
        let results: Vec<(f64, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = collectives
                .iter_mut()
                .map(|c| {
                    let device = if backend == "nccl" {
                        Device::Cuda(c.rank())
                    } else {
                        Device::Cpu
                    };
                    scope.spawn(move || run_rank(c.as_mut(), device, len, iters))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank"))
                .collect()
        });
        let seconds = results.iter().map(|r| r.0).fold(0.0, f64::max);
        let exact = results.iter().all(|r| r.1);
        let bytes = (len * 4) as f64;
        let algbw = bytes / seconds / 1e9;
        let busbw = algbw * 2.0 * (world as f64 - 1.0) / world as f64;
        println!(
            "{mb:>8} {:>10.2} {algbw:>10.3} {busbw:>10.3} {:>6}",
            seconds * 1e3,
            if exact { "yes" } else { "NO" }
        );
        assert!(exact, "the all-reduce of {mb} MB was not exact");
    }
}
