//! The real Fashion Product Images sample imports, and every photo decodes.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use atelier_catalog::{import, ColumnMapping, ImportOptions};
use atelier_catalog::{Catalog, StoreLocation, WriterOptions};
use atelier_pipeline::{ImageLoader, LoaderOptions};
use atelier_tests::{fashion_data, runtime};

fn import_sample(out: &std::path::Path, link: bool) -> atelier_catalog::ImportSummary {
    let data = fashion_data();
    assert!(
        data.join("styles.csv").exists(),
        "the real sample is missing at {} (set ATELIER_FASHION_DATA)",
        data.display()
    );
    let rt = runtime();
    import(
        &ImportOptions {
            images: data.join("images"),
            labels: data.join("styles.csv"),
            mapping: ColumnMapping::default(),
            link_images: link,
            overwrite: false,
            writer: WriterOptions::default(),
        },
        StoreLocation::parse(out.to_str().unwrap()).unwrap(),
        rt.handle(),
    )
    .unwrap()
}

#[test]
fn the_real_sample_imports_and_every_image_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let summary = import_sample(dir.path(), false);
    assert_eq!(summary.rows_read, 9915);
    assert_eq!(
        summary.imported,
        9915,
        "bad rows: {:?}",
        &summary.bad_rows[..summary.bad_rows.len().min(5)]
    );
    assert!(summary.bad_rows.is_empty());

    let rt = runtime();
    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();
    assert_eq!(catalog.num_rows(), 9915);
    let columns = &catalog.files[0].columns;
    for carried in [
        "gender",
        "masterCategory",
        "subCategory",
        "season",
        "year",
        "usage",
        "productDisplayName",
    ] {
        assert!(
            columns.extra.iter().any(|c| c == carried),
            "{carried} carried through: {columns:?}"
        );
    }

    let loader = ImageLoader::all(
        &catalog,
        LoaderOptions {
            image_size: 64,
            batch_size: 128,
            threads: 2,
            extra_columns: vec!["productDisplayName".into()],
            ..LoaderOptions::default()
        },
        rt.handle().clone(),
    )
    .unwrap();
    let mut decoded = 0;
    let mut first = None;
    for batch in loader {
        let batch = batch.unwrap();
        let failures: Vec<_> = batch.failures().map(|f| f.to_string()).collect();
        assert!(failures.is_empty(), "{failures:?}");
        decoded += batch.ok_count();
        if first.is_none() {
            first = batch.items.first().cloned();
        }
    }
    assert_eq!(decoded, 9915);
    // styles.csv is sorted by id; the first row of this subset is id 1164 or thereabouts:
    // check the mapping rather than a literal row.
    let first = first.unwrap();
    let name = first.extra[0].clone().unwrap();
    assert_eq!(
        first.labels.get("caption"),
        Some(name.to_lowercase().as_str())
    );
    assert_eq!(first.labels.get("brand"), name.split_whitespace().next());
    assert!(first.labels.get("color").is_some() && first.labels.get("category").is_some());
}

#[test]
fn linked_images_are_fetched_by_uri() {
    let dir = tempfile::tempdir().unwrap();
    let summary = import_sample(dir.path(), true);
    assert_eq!(summary.imported, 9915);
    let rt = runtime();
    let catalog = rt
        .block_on(Catalog::open(dir.path().to_str().unwrap()))
        .unwrap();
    assert!(catalog.files[0].columns.has_image_uri && !catalog.files[0].columns.has_image);
    let first_group = atelier_catalog::ReadRange::groups(0, vec![0]);
    let loader = ImageLoader::new(
        &catalog,
        vec![first_group],
        LoaderOptions {
            image_size: 48,
            batch_size: 64,
            threads: 2,
            ..LoaderOptions::default()
        },
        rt.handle().clone(),
    )
    .unwrap();
    let mut ok = 0;
    for batch in loader {
        let batch = batch.unwrap();
        assert_eq!(batch.failures().count(), 0);
        ok += batch.ok_count();
    }
    assert_eq!(ok, catalog.files[0].row_group_rows()[0]);
}

#[test]
fn bad_csv_rows_and_missing_images_are_reported_not_fatal() {
    let data = fashion_data();
    let dir = tempfile::tempdir().unwrap();
    let csv = std::fs::read_to_string(data.join("styles.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().take(21).map(str::to_string).collect();
    lines.push("999999999,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Ghost Tee".into());
    lines.push("broken,line".into());
    lines.push(lines[1].clone());
    std::fs::write(dir.path().join("styles.csv"), lines.join("\n") + "\n").unwrap();

    let rt = runtime();
    let summary = import(
        &ImportOptions {
            images: data.join("images"),
            labels: dir.path().join("styles.csv"),
            mapping: ColumnMapping::default(),
            link_images: false,
            overwrite: false,
            writer: WriterOptions::default(),
        },
        StoreLocation::parse(dir.path().join("out").to_str().unwrap()).unwrap(),
        rt.handle(),
    )
    .unwrap();
    assert_eq!(summary.imported, 20);
    let reasons: Vec<String> = summary
        .bad_rows
        .iter()
        .map(|b| format!("{}: {}", b.line, b.reason))
        .collect();
    assert_eq!(summary.bad_rows.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("22: missing image") && reasons[0].contains("999999999.jpg"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("23: unreadable CSV line"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("24: duplicate item id"),
        "{reasons:?}"
    );
}
