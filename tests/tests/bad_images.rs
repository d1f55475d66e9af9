//! A corpus of broken images: each yields its documented per-item error, while
//! the good items in the same batches come through, in order, none skipped.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::io::Cursor;

use atelier_catalog::encode_jpeg;
use atelier_catalog::{Catalog, CatalogItem, CatalogWriter, StoreLocation, WriterOptions};
use atelier_pipeline::{decode, DecodeLimits, ImageLoader, ItemError, LoaderOptions, Pixels};
use atelier_tests::runtime;

fn gradient(width: usize, height: usize) -> Vec<u8> {
    (0..width * height * 3).map(|i| (i % 251) as u8).collect()
}

fn jpeg() -> Vec<u8> {
    encode_jpeg(&gradient(120, 160), 120, 160, 90).unwrap()
}

fn encode(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png_rgba() -> Vec<u8> {
    let image = image::RgbaImage::from_fn(50, 40, |x, _| {
        image::Rgba([200, 10, 10, if x < 25 { 0 } else { 255 }])
    });
    encode(
        image::DynamicImage::ImageRgba8(image),
        image::ImageFormat::Png,
    )
}

fn webp() -> Vec<u8> {
    let image = image::RgbImage::from_raw(64, 48, gradient(64, 48)).unwrap();
    encode(
        image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::WebP,
    )
}

fn grey_jpeg() -> Vec<u8> {
    let image = image::GrayImage::from_fn(70, 90, |x, y| image::Luma([((x + y) % 255) as u8]));
    encode(
        image::DynamicImage::ImageLuma8(image),
        image::ImageFormat::Jpeg,
    )
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG whose header claims 50000×50000 pixels.
fn png_bomb() -> Vec<u8> {
    let mut png = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)),
        image::ImageFormat::Png,
    );
    // IHDR data starts at 16: width, height, then CRC over type+data at 29.
    png[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A JPEG whose frame header claims 50000×50000 pixels.
fn jpeg_bomb() -> Vec<u8> {
    let mut bytes = jpeg();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    // SOF0: marker(2) length(2) precision(1) height(2) width(2)
    bytes[sof + 5..sof + 7].copy_from_slice(&50_000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&50_000u16.to_be_bytes());
    bytes
}

fn item(id: &str, image: Option<Vec<u8>>, uri: Option<String>) -> CatalogItem {
    CatalogItem {
        item_id: id.to_string(),
        image,
        image_uri: uri,
        ..CatalogItem::default()
    }
}

#[test]
fn every_bad_image_gets_its_error_and_good_ones_pass() {
    let dir = tempfile::tempdir().unwrap();
    let good_file = dir.path().join("good.jpg");
    std::fs::write(&good_file, jpeg()).unwrap();
    let good = jpeg();
    let mut truncated_png = png_rgba();
    truncated_png.truncate(truncated_png.len() / 2);
    let mut garbage_jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    garbage_jpeg.extend((0..2000).map(|i| (i * 7 % 256) as u8));

    let corpus: Vec<(&str, CatalogItem, Option<&str>)> = vec![
        (
            "good-jpeg",
            item("good-jpeg", Some(good.clone()), None),
            None,
        ),
        (
            "empty",
            item("empty", Some(Vec::new()), None),
            Some("empty"),
        ),
        ("png-alpha", item("png-alpha", Some(png_rgba()), None), None),
        (
            "text",
            item("text", Some(b"hello, not an image".to_vec()), None),
            Some("unsupported_format"),
        ),
        (
            "gif",
            item("gif", Some(b"GIF89a\x01\x00\x01\x00".to_vec()), None),
            Some("unsupported_format"),
        ),
        ("webp", item("webp", Some(webp()), None), None),
        (
            "truncated-jpeg",
            item(
                "truncated-jpeg",
                Some(good[..good.len() * 6 / 10].to_vec()),
                None,
            ),
            Some("corrupt"),
        ),
        (
            "garbage-jpeg",
            item("garbage-jpeg", Some(garbage_jpeg), None),
            Some("corrupt"),
        ),
        (
            "grey-jpeg",
            item("grey-jpeg", Some(grey_jpeg()), None),
            None,
        ),
        (
            "png-bomb",
            item("png-bomb", Some(png_bomb()), None),
            Some("too_large"),
        ),
        (
            "jpeg-bomb",
            item("jpeg-bomb", Some(jpeg_bomb()), None),
            Some("too_large"),
        ),
        (
            "truncated-png",
            item("truncated-png", Some(truncated_png), None),
            Some("corrupt"),
        ),
        ("nothing", item("nothing", None, None), Some("no_image")),
        (
            "missing-uri",
            item(
                "missing-uri",
                None,
                Some(format!("file://{}/nope.jpg", dir.path().display())),
            ),
            Some("fetch"),
        ),
        (
            "good-uri",
            item(
                "good-uri",
                None,
                Some(format!("file://{}", good_file.display())),
            ),
            None,
        ),
        ("good-jpeg-2", item("good-jpeg-2", Some(good), None), None),
    ];

    let rt = runtime();
    let out = StoreLocation::parse(dir.path().join("catalog").to_str().unwrap()).unwrap();
    let mut writer = CatalogWriter::new(
        out,
        WriterOptions {
            image: true,
            image_uri: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    rt.block_on(writer.write(corpus.iter().map(|(_, item, _)| item.clone())))
        .unwrap();
    rt.block_on(writer.finish()).unwrap();

    let catalog = rt
        .block_on(Catalog::open(dir.path().join("catalog").to_str().unwrap()))
        .unwrap();
    let options = LoaderOptions {
        image_size: 32,
        batch_size: 5,
        threads: 2,
        prefetch: 2,
        ..LoaderOptions::default()
    };
    let loader = ImageLoader::all(&catalog, options.clone(), rt.handle().clone()).unwrap();
    let mut outcomes = Vec::new();
    let mut tensors = Vec::new();
    for batch in loader {
        let batch = batch.unwrap();
        assert_eq!(batch.tensor().size()[0], batch.ok_count() as i64);
        tensors.push(batch.tensor());
        for item in batch.items {
            outcomes.push((
                item.item_id,
                item.slot.map_err(|e| (e.kind(), e.to_string())),
            ));
        }
    }
    let ids: Vec<&str> = outcomes.iter().map(|(id, _)| id.as_str()).collect();
    let expected_ids: Vec<&str> = corpus.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, expected_ids, "every row, in input order");

    let expected: HashMap<&str, Option<&str>> =
        corpus.iter().map(|(id, _, kind)| (*id, *kind)).collect();
    for (id, outcome) in &outcomes {
        match (expected[id.as_str()], outcome) {
            (None, Ok(_)) => {}
            (Some(kind), Err((got, message))) => {
                assert_eq!(*got, kind, "{id}: {message}");
                assert!(!message.is_empty());
            }
            (want, got) => panic!("{id}: expected {want:?}, got {got:?}"),
        }
    }

    // Bytes for the consumer to normalise (what a GPU gets) come out the same.
    let as_bytes = ImageLoader::all(
        &catalog,
        LoaderOptions {
            raw_bytes: true,
            ..options
        },
        rt.handle().clone(),
    )
    .unwrap();
    let mut compared = 0;
    for (batch, floats) in as_bytes.zip(&tensors) {
        let batch = batch.unwrap();
        assert!(matches!(batch.pixels, Pixels::Bytes { .. }));
        let diff = (batch.tensor() - floats).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "batch {compared} differs by {diff}");
        compared += 1;
    }
    assert_eq!(compared, tensors.len());
}

/// An item's id, and its error's kind and message if it has one.
type Outcome = (String, Result<(), (&'static str, String)>);

/// Outcomes of loading `items` with `limits`, in input order.
fn load_outcomes(items: Vec<CatalogItem>, limits: DecodeLimits) -> Vec<Outcome> {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let out = StoreLocation::parse(dir.path().join("catalog").to_str().unwrap()).unwrap();
    let mut writer = CatalogWriter::new(
        out,
        WriterOptions {
            image: true,
            image_uri: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    rt.block_on(writer.write(items)).unwrap();
    rt.block_on(writer.finish()).unwrap();
    let catalog = rt
        .block_on(Catalog::open(dir.path().join("catalog").to_str().unwrap()))
        .unwrap();
    let options = LoaderOptions {
        image_size: 32,
        batch_size: 4,
        threads: 2,
        prefetch: 2,
        limits,
        ..LoaderOptions::default()
    };
    let mut outcomes = Vec::new();
    for batch in ImageLoader::all(&catalog, options, rt.handle().clone()).unwrap() {
        for item in batch.unwrap().items {
            let outcome = item.slot.map(|_| ()).map_err(|e| (e.kind(), e.to_string()));
            outcomes.push((item.item_id, outcome));
        }
    }
    outcomes
}

#[test]
fn objects_over_the_byte_limit_or_missing_are_item_errors() {
    let dir = tempfile::tempdir().unwrap();
    let small = encode_jpeg(&gradient(16, 16), 16, 16, 90).unwrap();
    let large = jpeg();
    assert!(small.len() < 2_000 && large.len() > 2_000);
    let small_file = dir.path().join("small.jpg");
    let large_file = dir.path().join("large.jpg");
    std::fs::write(&small_file, &small).unwrap();
    std::fs::write(&large_file, &large).unwrap();
    let uri = |path: &std::path::Path| Some(format!("file://{}", path.display()));
    let limits = DecodeLimits {
        max_bytes: 2_000,
        ..DecodeLimits::default()
    };
    let outcomes = load_outcomes(
        vec![
            item("small-uri", None, uri(&small_file)),
            item("large-uri", None, uri(&large_file)),
            item("large-inline", Some(large.clone()), None),
            item("missing-uri", None, uri(&dir.path().join("gone.jpg"))),
            item("small-inline", Some(small), None),
        ],
        limits,
    );
    let kinds: Vec<(&str, Option<&str>)> = outcomes
        .iter()
        .map(|(id, outcome)| (id.as_str(), outcome.as_ref().err().map(|(kind, _)| *kind)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("small-uri", None),
            ("large-uri", Some("too_many_bytes")),
            ("large-inline", Some("too_many_bytes")),
            ("missing-uri", Some("fetch")),
            ("small-inline", None),
        ]
    );
    let message = &outcomes[1].1.as_ref().unwrap_err().1;
    assert!(
        message.contains(&large.len().to_string()) && message.contains("2000"),
        "{message}"
    );
}

#[test]
fn error_messages_say_what_is_wrong() {
    let limits = DecodeLimits::default();
    let err = decode(&png_bomb(), 32, &limits).unwrap_err();
    assert!(err.to_string().contains("50000x50000"), "{err}");
    let good = jpeg();
    let err = decode(&good[..good.len() / 2], 32, &limits).unwrap_err();
    assert!(
        matches!(err, ItemError::Corrupt { format: "jpeg", .. }),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("premature end")
            || err.to_string().contains("Corrupt"),
        "{err}"
    );
    let err = decode(b"GIF89a", 32, &limits).unwrap_err();
    assert!(err.to_string().contains("47 49 46 38"), "{err}");
}

#[test]
fn transparent_png_pixels_become_white() {
    let image = decode(&png_rgba(), 0, &DecodeLimits::default()).unwrap();
    assert_eq!(
        &image.pixels[..3],
        &[255, 255, 255],
        "transparent left half"
    );
    let right = (image.width - 1) * 3;
    assert_eq!(&image.pixels[right..right + 3], &[200, 10, 10]);
}

#[test]
fn jpegs_decode_at_reduced_scale_when_large() {
    let bytes = jpeg(); // 120x160
    let full = decode(&bytes, 0, &DecodeLimits::default());
    assert_eq!(
        full.map(|i| (i.width, i.height)).unwrap(),
        (15, 20),
        "1/8 when nothing is needed"
    );
    let half = decode(&bytes, 60, &DecodeLimits::default()).unwrap();
    assert_eq!((half.width, half.height), (60, 80));
    let exact = decode(&bytes, 120, &DecodeLimits::default()).unwrap();
    assert_eq!((exact.width, exact.height), (120, 160));
}
