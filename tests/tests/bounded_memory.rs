//! A catalogue far larger than the pipeline's buffers streams through in
//! bounded memory while the consumer is slower than the decoders.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use atelier_catalog::{generate, GenerateOptions};
use atelier_catalog::{Catalog, StoreLocation, WriterOptions};
use atelier_pipeline::{ImageLoader, LoaderOptions};
use atelier_tests::runtime;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn the_pipeline_holds_at_most_prefetch_batches() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let items = 1200;
    generate(
        &GenerateOptions {
            items,
            width: 256,
            height: 256,
            threads: 2,
            writer: WriterOptions {
                rows_per_group: 200,
                groups_per_file: 2,
                ..WriterOptions::default()
            },
            ..GenerateOptions::default()
        },
        StoreLocation::parse(dir.path().to_str().unwrap()).unwrap(),
        rt.handle(),
        |_| {},
    )
    .unwrap();
    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();

    // Each batch holds 16 × 3 × 224 × 224 floats (9.6 MB); all of them would be 720 MB.
    let prefetch = 2;
    let before = peak_rss_mb();
    let mut loader = ImageLoader::all(
        &catalog,
        LoaderOptions {
            image_size: 224,
            batch_size: 16,
            threads: 2,
            prefetch,
            ..LoaderOptions::default()
        },
        rt.handle().clone(),
    )
    .unwrap();
    let mut rows = 0;
    for batch in loader.by_ref() {
        rows += batch.unwrap().items.len();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rows, items);
    assert!(
        loader.high_water() <= prefetch,
        "{} batches in flight",
        loader.high_water()
    );
    let grew = peak_rss_mb() - before;
    assert!(grew < 250.0, "peak RSS grew by {grew:.0} MB");
    let stats = loader.stats().snapshot();
    assert_eq!(stats.rows, items as u64);
    assert_eq!(stats.ok, items as u64);
    assert!(stats.decode_s > 0.0 && stats.transform_s > 0.0);
}
