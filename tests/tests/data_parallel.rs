//! Data-parallel training in one process, one thread per rank over the CPU
//! ring on loopback: the averaging of gradients makes W ranks with batch B
//! end where one rank with batch W x B ends.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use atelier_catalog::{generate, GenerateOptions};
use atelier_catalog::{StoreLocation, WriterOptions};
use atelier_collective::{RingCollective, RingOptions};
use atelier_proto::{Arch, OptimizerKind, ScheduleKind, Task, TrainOptions};
use atelier_tests::{checkpoint_weights, runtime};
use atelier_worker::{train, train_ranked, CheckpointCommit, TrainEvent, TrainSetup};

fn catalogue(dir: &std::path::Path) -> String {
    let rt = runtime();
    let url = dir.join("catalog").to_str().unwrap().to_string();
    generate(
        &GenerateOptions {
            items: 240,
            seed: 5,
            width: 64,
            height: 80,
            threads: 2,
            writer: WriterOptions {
                rows_per_group: 40,
                groups_per_file: 3,
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

/// Head-only (frozen backbone, eval-mode batch norm) and no augmentation:
/// nothing differs between ranks but the items they see.
fn options(catalog: &str, checkpoint: &str, batch_size: usize, max_steps: i64) -> TrainSetup {
    TrainSetup {
        catalog: catalog.to_string(),
        columns: Default::default(),
        checkpoint: checkpoint.to_string(),
        device: "cpu".into(),
        threads: 1,
        options: head_only(batch_size, max_steps),
    }
}

fn head_only(batch_size: usize, max_steps: i64) -> TrainOptions {
    TrainOptions {
        task: Task::Pool,
        arch: Arch::Resnet18,
        lr: 0.05,
        epochs: 3,
        batch_size,
        image_size: 32,
        finetune: Some(false),
        backbone_weights: None,
        optimizer: OptimizerKind::Sgd,
        weight_decay: 1e-4,
        momentum: 0.9,
        // Constant after warm-up: a cosine schedule's length follows the
        // steps per epoch, which differ by the partial batch the ranks drop.
        schedule: ScheduleKind::Constant,
        warmup_steps: 2,
        step_every: 100,
        gamma: 0.1,
        augment: false,
        affine_degrees: 0.0,
        affine_translate: 0.0,
        affine_scale: 0.0,
        crop_scale: 0.6,
        val_fraction: 0.2,
        seed: 9,
        min_label_count: 1,
        min_word_count: 1,
        max_caption_len: 8,
        checkpoint_every: 0,
        log_every: 1,
        channels_last: false,
        shuffle_window: 0,
        bf16: false,
        max_steps: Some(max_steps),
        gpu_decode: false,
        // Options these tests do not choose take the recipe.
        ..TrainOptions::RECIPE
    }
}

/// Trains `world` ranks on threads; returns each rank's losses.
fn train_on_ring(options: &TrainSetup, world: usize) -> Vec<Vec<f64>> {
    // The ring's overlap is off by default; on here, so the whole training
    // loop's overlapped steps are held to the single process too.
    let ring_options = RingOptions {
        timeout: Duration::from_secs(60),
        overlap_backward: true,
        ..RingOptions::default()
    };
    let ranks = RingCollective::loopback(world, ring_options).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|mut ring| {
                scope.spawn(move || {
                    let rt = runtime();
                    let mut losses = Vec::new();
                    train_ranked(
                        options,
                        rt.handle(),
                        &mut ring,
                        &CheckpointCommit::Here,
                        &|| false,
                        &mut |e| {
                            if let TrainEvent::Step { loss, .. } = e {
                                losses.push(*loss);
                            }
                        },
                    )
                    .unwrap();
                    losses
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn w_ranks_with_batch_b_equal_one_rank_with_batch_w_times_b() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalogue(dir.path());
    let rt = runtime();
    // Within the first epoch: the single run's epoch ends with a partial
    // batch where the ranks drop it (about 190 training items).
    let steps = 6;
    // AdamW too: its fused step reads the averaged gradients where they lie,
    // in the all-reduce buckets.
    for (world, optimizer, lr) in [
        (2, OptimizerKind::Sgd, 0.05),
        (3, OptimizerKind::Sgd, 0.05),
        (2, OptimizerKind::Adamw, 1e-3),
    ] {
        let batch = 8;
        let options = |catalog: &str, checkpoint: &str, batch_size: usize, max_steps: i64| {
            let mut setup = options(catalog, checkpoint, batch_size, max_steps);
            setup.options.optimizer = optimizer;
            setup.options.lr = lr;
            setup
        };
        let single = dir.path().join(format!("single-{world}-{optimizer:?}"));
        let single = single.to_str().unwrap();
        let mut single_losses = Vec::new();
        train(
            &options(&catalog, single, batch * world, steps),
            rt.handle(),
            &mut |e| {
                if let TrainEvent::Step { loss, .. } = e {
                    single_losses.push(*loss);
                }
            },
        )
        .unwrap();
        let ranked = dir.path().join(format!("ranked-{world}-{optimizer:?}"));
        let ranked = ranked.to_str().unwrap();
        let losses = train_on_ring(&options(&catalog, ranked, batch, steps), world);

        let (reference, reference_step) = checkpoint_weights(single);
        let (trained, trained_step) = checkpoint_weights(ranked);
        assert_eq!((reference_step, trained_step), (steps, steps));
        let mut compared = 0;
        for (name, expected) in &reference {
            if !name.starts_with("heads.") {
                continue;
            }
            let got = &trained[name];
            let diff = (got - expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "world {world}, {optimizer:?}: {name} differs by {diff} (scale {scale})"
            );
            compared += 1;
        }
        assert_eq!(compared, 6, "three heads, weight and bias each");
        // Every rank reports the global batch's loss, equal to the single run's.
        for rank_losses in &losses {
            assert_eq!(rank_losses.len(), single_losses.len());
            for (a, b) in rank_losses.iter().zip(&single_losses) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}
