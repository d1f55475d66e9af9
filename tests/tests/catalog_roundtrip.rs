//! generate → inspect → read batches: counts, shapes and label values survive.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use atelier_catalog::inspect;
use atelier_catalog::{generate, render_item, GenerateOptions};
use atelier_catalog::{Catalog, StoreLocation, WriterOptions};
use atelier_pipeline::{ImageLoader, LoaderOptions};
use atelier_tests::runtime;

fn small_catalog(dir: &std::path::Path, items: usize, seed: u64) -> GenerateOptions {
    catalog_in_groups(dir, items, seed, 50, 3)
}

fn catalog_in_groups(
    dir: &std::path::Path,
    items: usize,
    seed: u64,
    rows_per_group: usize,
    groups_per_file: usize,
) -> GenerateOptions {
    let options = GenerateOptions {
        items,
        seed,
        width: 96,
        height: 128,
        threads: 2,
        writer: WriterOptions {
            rows_per_group,
            groups_per_file,
            ..WriterOptions::default()
        },
        ..GenerateOptions::default()
    };
    let rt = runtime();
    let out = StoreLocation::parse(dir.to_str().unwrap()).unwrap();
    let summary = generate(&options, out, rt.handle(), |_| {}).unwrap();
    assert_eq!(summary.items, items);
    options
}

#[test]
fn generated_catalogue_inspects_and_reads_back_with_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_catalog(dir.path(), 333, 7);
    let rt = runtime();

    let report = rt
        .block_on(inspect(dir.path().to_str().unwrap(), &Default::default()))
        .unwrap();
    assert_eq!(report.rows, 333);
    // 150 rows per file in row groups of 50: 3 files, 7 row groups.
    assert_eq!(report.files.len(), 3);
    assert_eq!(report.row_groups, 7);
    assert!(report.files.iter().all(|f| f.max_row_group_rows <= 50));
    assert!(report.files.iter().all(|f| f.sliceable));
    assert_eq!(report.duplicate_item_ids, 0);
    let colors = &report.labels["color"];
    assert_eq!(colors.missing, 0);
    assert!(colors.distinct >= 10, "{colors:?}");
    assert!(report.labels["category"].distinct >= 8);
    assert!(report.labels["brand"].distinct >= 8);
    assert!(
        report.samples[0].image.starts_with("jpeg 96x128"),
        "{:?}",
        report.samples[0]
    );

    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();
    let loader = ImageLoader::all(
        &catalog,
        LoaderOptions {
            image_size: 64,
            batch_size: 32,
            threads: 2,
            prefetch: 3,
            ..LoaderOptions::default()
        },
        rt.handle().clone(),
    )
    .unwrap();
    let mut seen = 0u64;
    for batch in loader {
        let batch = batch.unwrap();
        let tensor = batch.tensor();
        assert_eq!(tensor.size(), vec![batch.items.len() as i64, 3, 64, 64]);
        for item in &batch.items {
            assert_eq!(
                item.item_id,
                format!("syn7-{seen:08}"),
                "input order is kept"
            );
            let expected = render_item(&options, seen).unwrap().labels;
            assert_eq!(item.labels, expected, "item {seen}'s labels");
            assert!(expected.get("color").is_some() && expected.get("caption").is_some());
            assert!(item.slot.is_ok());
            seen += 1;
        }
        // Normalised ImageNet values stay within about [-2.2, 2.7].
        let max = tensor.max().double_value(&[]);
        let min = tensor.min().double_value(&[]);
        assert!(max <= 2.7 && min >= -2.2 && max > min, "{min}..{max}");
    }
    assert_eq!(seen, 333);
}

#[test]
fn generation_is_deterministic_across_runs() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    small_catalog(a.path(), 40, 3);
    small_catalog(b.path(), 40, 3);
    let read = |p: &std::path::Path| std::fs::read(p.join("part-00000.parquet")).unwrap();
    assert_eq!(read(a.path()), read(b.path()));
}

#[test]
fn generate_refuses_to_mix_into_an_existing_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    small_catalog(dir.path(), 10, 0);
    let rt = runtime();
    let out = StoreLocation::parse(dir.path().to_str().unwrap()).unwrap();
    let options = GenerateOptions {
        items: 5,
        width: 64,
        height: 64,
        ..GenerateOptions::default()
    };
    let err = generate(&options, out.clone(), rt.handle(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    let again = GenerateOptions {
        overwrite: true,
        ..options
    };
    generate(&again, out, rt.handle(), |_| {}).unwrap();
    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();
    assert_eq!(catalog.num_rows(), 5, "old parts were removed");
}

#[test]
fn memory_urls_round_trip_in_process() {
    let rt = runtime();
    let options = GenerateOptions {
        items: 20,
        width: 64,
        height: 64,
        ..GenerateOptions::default()
    };
    let out = StoreLocation::parse("memory://roundtrip/catalog").unwrap();
    generate(&options, out, rt.handle(), |_| {}).unwrap();
    let catalog = rt
        .block_on(Catalog::open("memory://roundtrip/catalog"))
        .unwrap();
    assert_eq!(catalog.num_rows(), 20);
}

#[test]
fn a_shuffle_window_reorders_every_item_exactly_once_and_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    small_catalog(dir.path(), 200, 2);
    let rt = runtime();
    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();
    let order = |seed: u64| -> Vec<String> {
        let options = LoaderOptions {
            image_size: 32,
            batch_size: 16,
            threads: 2,
            shuffle_window: 64,
            seed,
            ..LoaderOptions::default()
        };
        ImageLoader::all(&catalog, options, rt.handle().clone())
            .unwrap()
            .flat_map(|b| b.unwrap().items.into_iter().map(|i| i.item_id))
            .collect()
    };
    let first = order(1);
    let mut sorted = first.clone();
    sorted.sort();
    let input: Vec<String> = (0..200).map(|i| format!("syn2-{i:08}")).collect();
    assert_eq!(sorted, input, "every item exactly once");
    assert_ne!(first, input, "shuffled");
    assert_eq!(order(1), first, "same seed, same order");
    assert_ne!(order(2), first, "another seed, another order");
}

fn item_ids(catalog: &Catalog, range: atelier_catalog::ReadRange) -> Vec<String> {
    use arrow_array::cast::AsArray;
    use futures::TryStreamExt;
    let rt = runtime();
    let batches: Vec<_> = rt
        .block_on(catalog.stream(vec![range], &["item_id"], 64).try_collect())
        .unwrap();
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("item_id")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_slice_of_row_groups_reads_exactly_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    catalog_in_groups(dir.path(), 1000, 5, 500, 2);
    let rt = runtime();
    let url = dir.path().to_str().unwrap();
    let plain = rt.block_on(Catalog::open(url)).unwrap();
    let indexed = rt
        .block_on(Catalog::open_indexed(url, &Default::default()))
        .unwrap();
    // The writer leaves an offset index, so a slice can fetch only its pages.
    let offsets = |catalog: &Catalog| {
        catalog.files[0]
            .metadata
            .metadata()
            .page_index()
            .is_some_and(|index| index.offset_index(1, 0).is_some())
    };
    assert!(!offsets(&plain));
    assert!(offsets(&indexed));

    let all = item_ids(&plain, atelier_catalog::ReadRange::groups(0, vec![0, 1]));
    assert_eq!(all.len(), 1000);
    for catalog in [&plain, &indexed] {
        let slice = |groups: Vec<usize>, rows: std::ops::Range<usize>| atelier_catalog::ReadRange {
            file: 0,
            row_groups: groups,
            rows: Some(rows),
        };
        // Three slices of the second group, and one across both groups.
        let mut second = Vec::new();
        for rows in [0..166, 166..333, 333..500] {
            second.extend(item_ids(catalog, slice(vec![1], rows)));
        }
        assert_eq!(second, all[500..]);
        assert_eq!(
            item_ids(catalog, slice(vec![0, 1], 400..600)),
            all[400..600]
        );
        assert!(item_ids(catalog, slice(vec![0], 7..7)).is_empty());
        // Past the end of the groups: an error naming the file, not a panic.
        let mut stream = catalog.stream(vec![slice(vec![0], 100..501)], &["item_id"], 64);
        let error = rt
            .block_on(futures::StreamExt::next(&mut stream))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(error.contains("part-") && error.contains("501"), "{error}");
    }
}
