//! Training on a tiny catalogue: the loss falls, resuming equals an
//! uninterrupted run, and test, plot and tag produce their outputs.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;

use arrow_array::{Array, StringArray};
use atelier_catalog::{generate, render_item, GenerateOptions};
use atelier_catalog::{CatalogItem, CatalogWriter, StoreLocation, WriterOptions};
use atelier_models::CheckpointDir;
use atelier_proto::{Arch, OptimizerKind, ScheduleKind, Task, TrainOptions};
use atelier_tests::{atelier_ok, runtime};
use atelier_worker::{train, TrainEvent, TrainSetup};
use tch::Tensor;

/// libtorch's random generator is global to the process: tests that initialise
/// models in this process take turns, or their seeds would interleave.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_turn() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn catalogue(dir: &std::path::Path, items: usize) -> String {
    let rt = runtime();
    let url = dir.join("catalog").to_str().unwrap().to_string();
    generate(
        &GenerateOptions {
            items,
            seed: 11,
            width: 64,
            height: 80,
            threads: 2,
            writer: WriterOptions {
                rows_per_group: 64,
                groups_per_file: 2,
                ..WriterOptions::default()
            },
            ..GenerateOptions::default()
        },
        StoreLocation::parse(&url).unwrap(),
        rt.handle(),
        |_| {},
    )
    .unwrap();
    url
}

fn options(catalog: &str, checkpoint: &str, task: Task, epochs: usize) -> TrainSetup {
    TrainSetup {
        catalog: catalog.to_string(),
        columns: Default::default(),
        checkpoint: checkpoint.to_string(),
        device: "cpu".into(),
        threads: 2,
        options: train_options(task, epochs),
    }
}

fn train_options(task: Task, epochs: usize) -> TrainOptions {
    TrainOptions {
        task,
        arch: Arch::Resnet18,
        lr: 0.05,
        epochs,
        batch_size: 16,
        image_size: 32,
        finetune: None,
        backbone_weights: None,
        optimizer: OptimizerKind::Sgd,
        weight_decay: 1e-4,
        momentum: 0.9,
        schedule: ScheduleKind::Constant,
        warmup_steps: 0,
        step_every: 100,
        gamma: 0.1,
        augment: true,
        affine_degrees: 10.0,
        affine_translate: 0.05,
        affine_scale: 0.05,
        crop_scale: 0.35,
        val_fraction: 0.2,
        seed: 3,
        min_label_count: 1,
        min_word_count: 1,
        max_caption_len: 8,
        checkpoint_every: 0,
        log_every: 1,
        channels_last: false,
        shuffle_window: 256,
        bf16: false,
        max_steps: None,
        gpu_decode: false,
        // Options these tests do not choose take the recipe.
        ..TrainOptions::RECIPE
    }
}

fn weights(checkpoint: &str) -> HashMap<String, Tensor> {
    let rt = runtime();
    let dir = CheckpointDir::parse(checkpoint).unwrap();
    let manifest = rt.block_on(dir.require_manifest()).unwrap();
    rt.block_on(dir.read_tensors(&manifest.weights))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn the_loss_falls_on_a_tiny_catalogue() {
    let _turn = torch_turn();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 192);
    let checkpoint = dir.path().join("ckpt").to_str().unwrap().to_string();
    let rt = runtime();
    // Head-only training on frozen random features: a convex problem whose
    // loss must fall, in f32 and under bf16 autocast on the CPU.
    for bf16 in [false, true] {
        let mut losses = Vec::new();
        let mut opts = options(&catalog, &format!("{checkpoint}-{bf16}"), Task::Color, 6);
        opts.options.finetune = Some(false);
        opts.options.optimizer = OptimizerKind::Adam;
        opts.options.lr = 0.01;
        opts.options.bf16 = bf16;
        train(&opts, rt.handle(), &mut |event| {
            if let TrainEvent::Step { loss, .. } = event {
                losses.push(*loss);
            }
        })
        .unwrap();
        let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            tail < head * 0.8,
            "bf16 {bf16}: loss went from {head:.3} to {tail:.3}: {losses:?}"
        );
    }
}

#[test]
fn resuming_gives_the_same_state_as_an_uninterrupted_run() {
    let _turn = torch_turn();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 96);
    let rt = runtime();
    // SGD's momentum and AdamW's moments and step count must all come back.
    // A small step size keeps the float noise of parallel test threads from
    // being amplified.
    for (optimizer, lr) in [(OptimizerKind::Sgd, 0.005), (OptimizerKind::Adamw, 1e-3)] {
        let options = |catalog: &str, checkpoint: &str, task: Task, epochs: usize| {
            let mut setup = options(catalog, checkpoint, task, epochs);
            setup.options.lr = lr;
            setup.options.optimizer = optimizer;
            setup
        };
        let straight = dir.path().join(format!("straight-{optimizer:?}"));
        let straight = straight.to_str().unwrap().to_string();
        let resumed = dir.path().join(format!("resumed-{optimizer:?}"));
        let resumed = resumed.to_str().unwrap().to_string();
        train(
            &options(&catalog, &straight, Task::Pool, 2),
            rt.handle(),
            &mut |_| {},
        )
        .unwrap();
        train(
            &options(&catalog, &resumed, Task::Pool, 1),
            rt.handle(),
            &mut |_| {},
        )
        .unwrap();
        let mut resumed_at = None;
        train(
            &options(&catalog, &resumed, Task::Pool, 2),
            rt.handle(),
            &mut |event| {
                if let TrainEvent::Started {
                    resumed_at_step, ..
                } = event
                {
                    resumed_at = Some(*resumed_at_step);
                }
            },
        )
        .unwrap();
        assert!(
            resumed_at.unwrap() > 0,
            "the second {optimizer:?} run resumed"
        );
        let (a, b) = (weights(&straight), weights(&resumed));
        assert_eq!(a.len(), b.len());
        for (name, tensor) in &a {
            let diff = (tensor - &b[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{optimizer:?}: {name} differs by {diff}");
        }
    }
}

#[test]
fn a_diverging_run_stops_with_the_step_named() {
    let _turn = torch_turn();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 64);
    let checkpoint = dir.path().join("ckpt").to_str().unwrap().to_string();
    let rt = runtime();
    let mut opts = options(&catalog, &checkpoint, Task::Color, 3);
    // The loss is read back only when reported or saved; it must still be caught.
    opts.options.lr = 1e30;
    opts.options.log_every = 1000;
    let mut reported = Vec::new();
    let err = train(&opts, rt.handle(), &mut |event| {
        if let TrainEvent::Step { loss, .. } = event {
            reported.push(*loss);
        }
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("loss became") && err.contains("lower --lr"),
        "{err}"
    );
    assert!(reported.iter().all(|l| l.is_finite()), "{reported:?}");
}

#[test]
fn a_corrupt_weights_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 64);
    let checkpoint = dir.path().join("ckpt");
    let checkpoint_url = checkpoint.to_str().unwrap();
    atelier_tests::train_quick_color_model(&catalog, checkpoint_url);
    let weights = std::fs::read_dir(&checkpoint)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("tags");
    let output = atelier_tests::atelier(&[
        "tag",
        "--checkpoint",
        checkpoint_url,
        "--catalog",
        &catalog,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = weights.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name) && stderr.contains("safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_checkpoint_of_another_task_is_not_resumed() {
    let _turn = torch_turn();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 64);
    let checkpoint = dir.path().join("ckpt").to_str().unwrap().to_string();
    let rt = runtime();
    train(
        &options(&catalog, &checkpoint, Task::Color, 1),
        rt.handle(),
        &mut |_| {},
    )
    .unwrap();
    let err = train(
        &options(&catalog, &checkpoint, Task::Brand, 1),
        rt.handle(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("holds a resnet18 color model"),
        "{err}"
    );
}

#[test]
fn test_plot_and_tag_produce_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 128);
    let ckpt = dir.path().join("ckpt");
    let ckpt_url = ckpt.to_str().unwrap();
    let trained = atelier_ok(&[
        "train",
        "--model-type",
        "pool",
        "--arch",
        "resnet18",
        "--catalog",
        &catalog,
        "--checkpoint",
        ckpt_url,
        "--n-epochs",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
    ]);
    assert!(trained.contains("epoch 2: validation"), "{trained}");
    assert!(ckpt.join("manifest.json").exists() && ckpt.join("metrics.jsonl").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["arch"], "resnet18");
    assert_eq!(
        manifest["model"]["labels"]["color"]["classes"][0],
        "<unknown>"
    );
    assert!(ckpt.join(manifest["weights"].as_str().unwrap()).exists());

    let tested = atelier_ok(&["test", "--checkpoint", ckpt_url, "--catalog", &catalog]);
    assert!(
        tested.contains("color: accuracy") && tested.contains("top-5"),
        "{tested}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("test-report.json")).unwrap()).unwrap();
    let accuracy = report["attributes"]["category"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let n = report["attributes"]["color"]["classes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        report["attributes"]["color"]["confusion"]
            .as_array()
            .unwrap()
            .len(),
        n
    );

    atelier_ok(&["plot", "--checkpoint", ckpt_url]);
    for name in ["curves", "confusion-color", "confusion-category"] {
        let png = image::open(ckpt.join("plots").join(format!("{name}.png"))).unwrap();
        assert!(png.width() > 300 && png.height() > 300);
        let svg = std::fs::read_to_string(ckpt.join("plots").join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("<text"),
            "{name}.svg has text"
        );
    }

    // A catalogue with broken images in the middle of good ones, and a whole
    // batch of them (rows 16-19 at --batch-size 4): the tags of one batch are
    // read back while the next is being predicted, so a batch with nothing to
    // predict sits between two that have.
    let rt = runtime();
    let broken_url = dir.path().join("broken").to_str().unwrap().to_string();
    let mut writer = CatalogWriter::new(
        StoreLocation::parse(&broken_url).unwrap(),
        WriterOptions::default(),
    )
    .unwrap();
    let render = GenerateOptions {
        width: 64,
        height: 80,
        ..GenerateOptions::default()
    };
    let mut items: Vec<CatalogItem> = (0..40).map(|i| render_item(&render, i).unwrap()).collect();
    for broken in [3, 16, 18, 19] {
        items[broken].image = Some(b"not an image".to_vec());
    }
    items[17].image = Some(Vec::new());
    items[39].image = Some(items[39].image.as_ref().unwrap()[..100].to_vec());
    let broken_rows = [3, 16, 17, 18, 19, 39];
    let ids: Vec<String> = items.iter().map(|i| i.item_id.clone()).collect();
    let truth: Vec<_> = items.iter().map(|i| i.labels.clone()).collect();
    rt.block_on(writer.write(items)).unwrap();
    rt.block_on(writer.finish()).unwrap();
    let out = dir.path().join("tags");
    let tagged = atelier_ok(&[
        "tag",
        "--checkpoint",
        ckpt_url,
        "--catalog",
        &broken_url,
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    assert!(
        tagged.contains("tagged 40 items (6 with errors)"),
        "{tagged}"
    );
    // Where the time went, in the run's summary.
    assert!(
        tagged.contains("seconds by stage")
            && tagged.contains("decode ")
            && tagged.contains("upload "),
        "{tagged}"
    );

    let file = std::fs::File::open(out.join("part-00000.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let attributes = ["color", "brand", "category"];
    let mut seen = Vec::new();
    let mut right = HashMap::<&str, usize>::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (item_ids, colors, errors) = (col("item_id"), col("color"), col("error"));
        for row in 0..batch.num_rows() {
            let index = seen.len();
            let broken = broken_rows.contains(&index);
            assert_eq!(errors.is_valid(row), broken, "row {index}");
            assert_eq!(colors.is_valid(row), !broken, "row {index}");
            seen.push(item_ids.value(row).to_string());
            if broken {
                continue;
            }
            for attribute in attributes {
                let (label, prob, top3, top3_prob) = top3_row(&batch, attribute, row);
                assert_eq!(top3[0], label, "row {index} {attribute}");
                assert_eq!(top3_prob[0], prob, "row {index} {attribute}");
                assert!(
                    top3_prob.windows(2).all(|w| w[0] >= w[1])
                        && top3_prob.iter().sum::<f32>() <= 1.0 + 1e-5,
                    "row {index} {attribute}: {top3_prob:?}"
                );
                let classes = manifest["model"]["labels"][attribute]["classes"]
                    .as_array()
                    .unwrap();
                let known = truth[index]
                    .get(attribute)
                    .filter(|l| classes.iter().any(|c| c == l))
                    .unwrap_or("<unknown>");
                *right.entry(attribute).or_default() += usize::from(label == known);
            }
        }
        assert!(
            batch.column_by_name("category_top3").is_some()
                && batch.column_by_name("model_version").is_some()
        );
    }
    assert_eq!(seen, ids, "one row per input item, in input order");

    // Each attribute's tags are that attribute's predictions: their accuracy
    // is what `atelier test` measures on the same items.
    atelier_ok(&[
        "test",
        "--checkpoint",
        ckpt_url,
        "--catalog",
        &broken_url,
        "--all",
        "--batch-size",
        "4",
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("test-report.json")).unwrap()).unwrap();
    let decoded = (ids.len() - broken_rows.len()) as f64;
    for attribute in attributes {
        let tagged = right.get(attribute).copied().unwrap_or(0) as f64 / decoded;
        let tested = report["attributes"][attribute]["accuracy"]
            .as_f64()
            .unwrap();
        assert!(
            (tagged - tested).abs() < 1e-9,
            "{attribute}: tags right for {tagged}, test says {tested}"
        );
    }
}

/// An attribute's label, its probability, and its top three of both, for one row.
fn top3_row(
    batch: &arrow_array::RecordBatch,
    attribute: &str,
    row: usize,
) -> (String, f32, Vec<String>, Vec<f32>) {
    use arrow_array::{Float32Array, ListArray};
    let column = |suffix: &str| {
        batch
            .column_by_name(&format!("{attribute}{suffix}"))
            .unwrap()
    };
    let label = column("").as_any().downcast_ref::<StringArray>().unwrap();
    let prob = column("_prob")
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap();
    let list = |suffix: &str| {
        column(suffix)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .value(row)
    };
    let top3 = list("_top3");
    let top3 = top3.as_any().downcast_ref::<StringArray>().unwrap();
    let top3_prob = list("_top3_prob");
    let top3_prob = top3_prob.as_any().downcast_ref::<Float32Array>().unwrap();
    (
        label.value(row).to_string(),
        prob.value(row),
        top3.iter().map(|v| v.unwrap().to_string()).collect(),
        top3_prob.values().to_vec(),
    )
}

#[test]
fn the_captioner_trains_and_reports_bleu() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path(), 96);
    let ckpt = dir.path().join("cap");
    let ckpt_url = ckpt.to_str().unwrap();
    atelier_ok(&[
        "train",
        "--model-type",
        "caption",
        "--arch",
        "resnet18",
        "--catalog",
        &catalog,
        "--checkpoint",
        ckpt_url,
        "--n-epochs",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
    ]);
    let tested = atelier_ok(&[
        "test",
        "--checkpoint",
        ckpt_url,
        "--catalog",
        &catalog,
        "--beams",
        "3",
    ]);
    assert!(tested.contains("captions: BLEU-1"), "{tested}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("test-report.json")).unwrap()).unwrap();
    let bleu = report["caption"]["bleu"].as_array().unwrap();
    assert_eq!(bleu.len(), 4);
    assert!(bleu
        .iter()
        .all(|b| (0.0..=1.0).contains(&b.as_f64().unwrap())));
    assert!(report["caption"]["baseline_caption"]
        .as_str()
        .unwrap()
        .contains(" by "));
}

#[test]
fn gpu_decoding_with_affine_warps_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("ckpt").to_str().unwrap().to_string();
    let mut opts = options("/nonexistent/catalog", &checkpoint, Task::Color, 1);
    opts.options.gpu_decode = true;
    opts.options.affine_degrees = 10.0;
    let error = train(&opts, runtime().handle(), &mut |_| {}).unwrap_err();
    assert!(error.to_string().contains("--affine"), "{error}");
    assert!(!std::path::Path::new(&checkpoint).exists());
}
