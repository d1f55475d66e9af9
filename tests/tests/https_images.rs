//! A catalogue whose photos sit behind HTTP URLs, as on a shop's CDN: a
//! server the test starts serves them, one is missing and one is throttled
//! once. `atelier tag` fetches them through the loader: the missing one is
//! its item's `fetch` error, the throttled one is tagged after waiting.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use atelier_catalog::{render_item, CatalogWriter, GenerateOptions, StoreLocation, WriterOptions};
use atelier_tests::output::read_column;
use atelier_tests::photo_server::serve;
use atelier_tests::{atelier_ok, python, runtime, train_quick_color_model};
use tokio::net::TcpListener;

#[test]
fn photos_behind_http_urls_are_fetched_and_a_missing_one_is_its_items_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());

    let options = GenerateOptions {
        width: 48,
        height: 64,
        ..Default::default()
    };
    let mut photos = HashMap::new();
    let items: Vec<_> = (0..60u64)
        .map(|i| {
            let mut item = render_item(&options, i).unwrap();
            let name = match i {
                7 => "/missing.jpg".to_string(),
                11 => "/throttled.jpg".to_string(),
                _ => format!("/photos/{i}.jpg"),
            };
            let photo = item.image.take().unwrap();
            if i != 7 {
                photos.insert(name.clone(), photo);
            }
            item.image_uri = Some(format!("{base}{name}"));
            item
        })
        .collect();
    rt.spawn(serve(listener, Arc::new(photos)));
    rt.block_on(async {
        let writer_options = WriterOptions {
            image: false,
            image_uri: true,
            ..Default::default()
        };
        let location = StoreLocation::parse(&path("catalog")).unwrap();
        let mut writer = CatalogWriter::new(location, writer_options).unwrap();
        writer.write(items).await.unwrap();
        writer.finish().await.unwrap();
    });

    // A model to tag with, trained on the synthetic photos as bytes.
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "200",
        "--out",
        &path("train"),
        "--size",
        "48x64",
    ]);
    train_quick_color_model(&path("train"), &path("model"));
    atelier_ok(&[
        "tag",
        "--checkpoint",
        &path("model"),
        "--catalog",
        &path("catalog"),
        "--out",
        &path("tags"),
    ]);
    let out = Path::new(dir.path()).join("tags");
    // The single-process output has a cluster job's layout, and the prefix
    // opens as a Parquet dataset.
    let read = python(&["tests/python/read_tags.py", out.to_str().unwrap(), "60"]);
    assert!(read.contains("\"parts\": 1"), "{read}");
    let ids = read_column(&out, "item_id");
    let errors = read_column(&out, "error");
    let colours = read_column(&out, "color");
    assert_eq!(ids.len(), 60);
    for (row, (error, colour)) in errors.iter().zip(&colours).enumerate() {
        if row == 7 {
            let error = error.as_deref().unwrap_or_default();
            assert!(
                error.contains("404") && error.contains("/missing.jpg"),
                "{error}"
            );
            assert!(colour.is_none());
        } else {
            assert!(error.is_none(), "row {row}: {error:?}");
            assert!(colour.is_some(), "row {row} has no colour");
        }
    }
}
