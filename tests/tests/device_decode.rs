//! JPEGs handed over encoded for a GPU to decode (`decode_on_device`) give the
//! same items, the same errors and nearly the same pixels as the CPU
//! pipeline. The device decoder here is the CPU reference behind the same
//! trait, refusing one picture to exercise the fallback; the nvJPEG one runs
//! only where a GPU is (bench/gpu/perf.sh).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::Cursor;

use atelier_catalog::encode_jpeg;
use atelier_catalog::{Catalog, CatalogItem, CatalogWriter, StoreLocation, WriterOptions};
use atelier_pipeline::{
    Augment, Batch, CpuJpegDecoder, EncodedImage, ImageLoader, JpegDecoder, LoaderOptions, Pixels,
};
use atelier_tests::runtime;
use tch::{Device, Tensor};

fn smooth(width: usize, height: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..height)
        .flat_map(|y| {
            (0..width).flat_map(move |x| {
                [
                    (x * 255 / width) as u8,
                    (y * 255 / height) as u8,
                    ((x + y) * 127 / (width + height)) as u8 + 60,
                ]
            })
        })
        .collect();
    encode_jpeg(&pixels, width, height, 92).unwrap()
}

/// A whole JPEG (EOI at the end) with its entropy data broken midway.
fn broken_scan() -> Vec<u8> {
    let mut bytes = smooth(120, 160);
    let middle = bytes.len() / 2;
    bytes.splice(middle..middle + 40, [0xFF, 0xD9].repeat(20));
    bytes
}

fn grey_jpeg() -> Vec<u8> {
    let image = image::GrayImage::from_fn(70, 90, |x, y| image::Luma([(x + y) as u8]));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn png() -> Vec<u8> {
    let image = image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 99]));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The CPU reference decoder, refusing pictures of one byte length.
struct Refusing {
    refuse_len: usize,
    seen: usize,
    refused: usize,
}

impl JpegDecoder for Refusing {
    fn decode(&mut self, jpegs: &[&[u8]]) -> Vec<Result<Tensor, String>> {
        self.seen += jpegs.len();
        jpegs
            .iter()
            .map(|bytes| {
                if bytes.len() == self.refuse_len {
                    self.refused += 1;
                    Err("refused for the test".into())
                } else {
                    CpuJpegDecoder.decode(&[bytes]).remove(0)
                }
            })
            .collect()
    }
}

type Outcome = (String, Result<Tensor, &'static str>);

fn write_catalog(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    corpus: &[(&str, Vec<u8>)],
) -> Catalog {
    let path = dir.join("catalog");
    let out = StoreLocation::parse(path.to_str().unwrap()).unwrap();
    let mut writer = CatalogWriter::new(
        out,
        WriterOptions {
            image: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let items = corpus.iter().map(|(id, bytes)| CatalogItem {
        item_id: (*id).to_string(),
        image: Some(bytes.clone()),
        ..CatalogItem::default()
    });
    rt.block_on(writer.write(items)).unwrap();
    rt.block_on(writer.finish()).unwrap();
    rt.block_on(Catalog::open(path.to_str().unwrap())).unwrap()
}

fn outcomes(batch: &Batch, images: &Tensor) -> Vec<Outcome> {
    batch
        .items
        .iter()
        .map(|item| {
            let outcome = match &item.slot {
                Ok(slot) => Ok(images.get(*slot as i64)),
                Err(error) => Err(error.kind()),
            };
            (item.item_id.clone(), outcome)
        })
        .collect()
}

#[test]
fn encoded_batches_decode_on_the_device_like_the_cpu_pipeline() {
    let refused = smooth(100, 140);
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("portrait", smooth(120, 160)),
        ("landscape", smooth(160, 120)),
        ("refused", refused.clone()),
        ("grey", grey_jpeg()),
        ("png", png()),
        ("truncated", smooth(120, 160)[..900].to_vec()),
        ("broken-scan", broken_scan()),
        ("portrait-2", smooth(120, 160)),
        ("empty", Vec::new()),
        ("square", smooth(96, 96)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let catalog = write_catalog(&rt, dir.path(), &corpus);

    let options = LoaderOptions {
        image_size: 32,
        batch_size: 6,
        threads: 2,
        prefetch: 2,
        ..LoaderOptions::default()
    };
    let mut expected = Vec::new();
    for batch in ImageLoader::all(&catalog, options.clone(), rt.handle().clone()).unwrap() {
        let batch = batch.unwrap();
        expected.extend(outcomes(&batch, &batch.tensor()));
    }

    let encoded = LoaderOptions {
        decode_on_device: true,
        ..options.clone()
    };
    let mut decoder = Refusing {
        refuse_len: refused.len(),
        seen: 0,
        refused: 0,
    };
    let mut got = Vec::new();
    let mut jpegs_handed_over = 0;
    for batch in ImageLoader::all(&catalog, encoded, rt.handle().clone()).unwrap() {
        let mut batch = batch.unwrap();
        let Pixels::Encoded { images, .. } = &batch.pixels else {
            panic!("the loader decoded what the device should have");
        };
        jpegs_handed_over += images
            .iter()
            .filter(|i| matches!(i, EncodedImage::Jpeg { .. }))
            .count();
        let on_cpu = batch.tensor();
        let images = batch.decode_on(&mut decoder, Device::Cpu);
        assert_eq!(images.size()[0], batch.ok_count() as i64);
        let slots: Vec<usize> = batch
            .items
            .iter()
            .filter_map(|i| i.slot.clone().ok())
            .collect();
        assert_eq!(
            slots,
            (0..slots.len()).collect::<Vec<_>>(),
            "rows renumbered in order"
        );
        if batch.items.iter().all(|i| i.slot.is_ok()) {
            let diff = (&on_cpu - &images).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "tensor() and decode_on() differ by {diff}");
        }
        got.extend(outcomes(&batch, &images));
    }
    // The portraits, the landscape, the square, the refused one and the
    // broken scan go to the device decoder; the grey JPEG, the PNG, the
    // truncated JPEG and the empty item never do.
    assert_eq!(jpegs_handed_over, 6);
    assert_eq!((decoder.seen, decoder.refused), (6, 1));

    assert_eq!(got.len(), expected.len());
    for ((id, want), (got_id, outcome)) in expected.iter().zip(&got) {
        assert_eq!(id, got_id, "every row, in input order");
        match (want, outcome) {
            (Ok(cpu), Ok(device)) => {
                // The CPU pipeline decodes at a reduced DCT scale (3/8
                // here), the device path whole: within two levels of 255
                // (0.0174 each after normalising), a third of one on average.
                let diff = (cpu - device).abs();
                let mean = diff.mean(tch::Kind::Float).double_value(&[]);
                let max = diff.max().double_value(&[]);
                assert!(mean < 0.01 && max < 0.05, "{id}: mean {mean}, max {max}");
            }
            (Err(want), Err(got)) => assert_eq!(want, got, "{id}"),
            _ => panic!(
                "{id}: cpu {:?}, device {:?}",
                want.as_ref().err(),
                outcome.as_ref().err()
            ),
        }
    }
    let failed: Vec<&str> = got
        .iter()
        .filter(|(_, o)| o.is_err())
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(failed, ["truncated", "broken-scan", "empty"]);
}

#[test]
fn random_crops_and_flips_are_drawn_alike_and_applied_on_the_device() {
    let corpus: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("item-{i}"), smooth(120 + 8 * (i % 3), 160)))
        .collect();
    let corpus: Vec<(&str, Vec<u8>)> = corpus
        .iter()
        .map(|(id, b)| (id.as_str(), b.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let catalog = write_catalog(&rt, dir.path(), &corpus);
    let augment = Augment::RandomResizedCrop {
        scale: (0.3, 1.0),
        ratio: (0.75, 1.333),
        flip: 0.5,
        affine: None,
    };
    let options = LoaderOptions {
        image_size: 32,
        batch_size: 4,
        threads: 2,
        prefetch: 2,
        augment,
        seed: 11,
        ..LoaderOptions::default()
    };
    let on_cpu: Vec<Tensor> = ImageLoader::all(&catalog, options.clone(), rt.handle().clone())
        .unwrap()
        .map(|b| b.unwrap().tensor())
        .collect();
    let encoded = LoaderOptions {
        decode_on_device: true,
        ..options.clone()
    };
    let on_device: Vec<Tensor> = ImageLoader::all(&catalog, encoded, rt.handle().clone())
        .unwrap()
        .map(|b| b.unwrap().decode_on(&mut CpuJpegDecoder, Device::Cpu))
        .collect();
    assert_eq!(on_cpu.len(), 3);
    for (cpu, device) in on_cpu.iter().zip(&on_device) {
        // The same windows and flips, drawn from each item's seed; the device
        // rounds a window to whole pixels, the CPU pipeline does not.
        let diff = (cpu - device).abs();
        let mean = diff.mean(tch::Kind::Float).double_value(&[]);
        assert!(mean < 0.03, "mean difference {mean}");
    }
    // Another seed's draws are far off, so the comparison can tell.
    let reseeded: Vec<Tensor> = ImageLoader::all(
        &catalog,
        LoaderOptions {
            seed: 12,
            ..options
        },
        rt.handle().clone(),
    )
    .unwrap()
    .map(|b| b.unwrap().tensor())
    .collect();
    let far = (&reseeded[0] - &on_device[0])
        .abs()
        .mean(tch::Kind::Float)
        .double_value(&[]);
    assert!(far > 0.1, "another seed's crops differ by only {far}");
}

#[test]
fn random_affine_warps_stay_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let catalog = write_catalog(&rt, dir.path(), &[("a", smooth(40, 40))]);
    let options = LoaderOptions {
        decode_on_device: true,
        augment: Augment::RandomResizedCrop {
            scale: (0.6, 1.0),
            ratio: (0.75, 1.333),
            flip: 0.5,
            affine: Some(atelier_pipeline::RandomAffine {
                degrees: 10.0,
                translate: 0.1,
                scale: 0.1,
            }),
        },
        ..LoaderOptions::default()
    };
    let error = ImageLoader::all(&catalog, options, rt.handle().clone()).unwrap_err();
    assert!(error.to_string().contains("affine"), "{error}");
}
