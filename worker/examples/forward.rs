//! Model-only throughput of the tagging path: a checkpoint's model (backbone
//! and every head, as `atelier tag` loads it) on one pre-decoded batch held
//! on the device, no pipeline. `bench/tagging/against_python.sh` compares end-to-end tagging
//! with this figure (the "pipeline hidden" target).
//!
//!   forward CHECKPOINT [--batch-size 32] [--iters 8] [--channels-last] [--bf16] [--device cpu]

use std::time::Instant;

use atelier_models::CheckpointDir;
use atelier_worker::{load_model, Layout};
use tch::{Kind, Tensor};

fn flag_value(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default.to_string(), Clone::clone)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `atelier` commands that run models do.
    atelier_process::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let checkpoint = args.first().ok_or("usage: forward CHECKPOINT [flags]")?;
    let batch: i64 = flag_value(&args, "--batch-size", "32").parse()?;
    let iters: usize = flag_value(&args, "--iters", "8").parse()?;
    let device = atelier_worker::parse_device(&flag_value(&args, "--device", "cpu"))?;
    let layout = Layout {
        channels_last: args.iter().any(|a| a == "--channels-last"),
        bf16: args.iter().any(|a| a == "--bf16"),
        gpu_decode: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = CheckpointDir::parse(checkpoint)?;
    let (manifest, model) = load_model(&dir, runtime.handle(), device, layout)?;
    let size = manifest.image_size as i64;
    let _guard = tch::no_grad_guard();
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let run = || {
        let features = model.features(&images, false);
        let logits = model.logits(&features);
        // Wait for the device, as the tagger does when it reads results back.
        for (_, l) in &logits {
            let _ = l.softmax(1, Kind::Float).double_value(&[0, 0]);
        }
    };
    run();
    let start = Instant::now();
    for _ in 0..iters {
        run();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"batch\": {batch}, \"iters\": {iters}, \"images_per_s\": {:.3}}}",
        (batch as f64 * iters as f64) / seconds
    );
    Ok(())
}
