//! How a model is trained: every option of `atelier train` and `atelier
//! submit train`, with the project's recipe as the defaults.
//!
//! This struct is the one definition. The CLI's flags are derived from it
//! (feature `cli`), `convert` maps it to the wire's `SubmitTrainJobRequest`
//! and back, the coordinator checks it at submit, and the worker trains
//! from it as it is.

use serde::{Deserialize, Serialize};

use super::names::{Arch, Framing, OptimizerKind, ScheduleKind, Task};
use super::serde_compat::zero_as_none;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
// Records written before an option existed take its default.
#[serde(default)]
pub struct TrainOptions {
    /// What to learn.
    #[cfg_attr(feature = "cli", arg(long = "model-type", value_name = "MODEL_TYPE", value_enum, default_value_t = TrainOptions::RECIPE.task))]
    #[serde(rename = "model_type")]
    pub task: Task,
    /// With `--model-type pool`: one head per label column named here, on
    /// one backbone (for example gender,articleType,baseColour); color,
    /// brand and category read their mapped columns (--label-column)
    /// [default: color, brand and category, those the catalogue labels].
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', value_name = "COLUMNS")
    )]
    pub targets: Vec<String>,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = TrainOptions::RECIPE.arch))]
    pub arch: Arch,
    /// Peak learning rate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.lr))]
    pub lr: f64,
    #[cfg_attr(feature = "cli", arg(long = "n-epochs", value_name = "N", default_value_t = TrainOptions::RECIPE.epochs))]
    #[serde(rename = "n_epochs")]
    pub epochs: usize,
    /// Items per optimizer step (per rank in a gang).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.batch_size))]
    pub batch_size: usize,
    /// Side of the square the photos are cropped and resized to.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.image_size))]
    pub image_size: usize,
    /// Train the backbone too [default: on from random weights, off with --backbone-weights].
    #[cfg_attr(feature = "cli", arg(long, num_args = 0..=1, default_missing_value = "true"))]
    pub finetune: Option<bool>,
    /// torchvision backbone weights as safetensors (see docs/formats.md).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(deserialize_with = "zero_as_none")]
    pub backbone_weights: Option<String>,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = TrainOptions::RECIPE.optimizer))]
    pub optimizer: OptimizerKind,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.weight_decay))]
    pub weight_decay: f64,
    /// SGD momentum.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.momentum))]
    pub momentum: f64,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = TrainOptions::RECIPE.schedule))]
    pub schedule: ScheduleKind,
    /// Linear warm-up steps before the schedule (constant, cosine and step).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.warmup_steps))]
    pub warmup_steps: i64,
    /// Step schedule: decay every this many steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.step_every))]
    pub step_every: i64,
    /// Step schedule: decay factor.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.gamma))]
    pub gamma: f64,
    /// Random resized crop and horizontal flip.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.augment, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub augment: bool,
    /// Smallest area share of the random resized crop (the largest is 1).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.crop_scale))]
    pub crop_scale: f32,
    /// How a photo is fitted to the square input, in training and, from the
    /// checkpoint, in `test` and `tag`: the whole photo resized (squash), or
    /// its largest centred square (center-crop).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = TrainOptions::RECIPE.framing))]
    pub framing: Framing,
    /// Random affine on top of the crop: rotation within ± this many degrees (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.affine_degrees))]
    pub affine_degrees: f32,
    /// Random affine: translation within ± this share of the side (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.affine_translate))]
    pub affine_translate: f32,
    /// Random affine: scaling within 1 ± this (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.affine_scale))]
    pub affine_scale: f32,
    /// Share of items (by a stable hash of the item id) held out for validation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.val_fraction))]
    pub val_fraction: f64,
    /// Seeds the weights, the shuffle and the augmentation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.seed))]
    pub seed: u64,
    /// Labels seen fewer times in training map to the unknown class.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.min_label_count))]
    pub min_label_count: usize,
    /// Caption words seen fewer times map to <unk>.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.min_word_count))]
    pub min_word_count: usize,
    /// Longest caption, in words, the captioner learns and writes.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.max_caption_len))]
    pub max_caption_len: usize,
    /// Checkpoint every this many steps as well as at each epoch end (0: epoch ends only).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.checkpoint_every))]
    pub checkpoint_every: usize,
    /// Report the training loss every this many steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.log_every))]
    pub log_every: usize,
    /// Convolutions in channels-last memory order (faster oneDNN/cuDNN kernels).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.channels_last, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub channels_last: bool,
    /// Shuffle training items within a buffer of this many (on top of a shuffled
    /// row-group order); memory grows with it by the size of the compressed images.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.shuffle_window))]
    pub shuffle_window: usize,
    /// bf16 autocast (CUDA, or a CPU with bf16 instructions): convolutions
    /// and matmuls in bf16; weights, gradients, the loss and the optimizer in f32.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.bf16, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub bf16: bool,
    /// Label smoothing of the classifiers' training loss: each target keeps
    /// 1 - this of its weight and the rest is spread over every class (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.label_smoothing))]
    pub label_smoothing: f64,
    /// Stop after this many optimizer steps in all (a checkpoint is written there).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(deserialize_with = "zero_as_none")]
    pub max_steps: Option<i64>,
    /// Decode JPEGs on the GPU (nvJPEG), random crops and flips included;
    /// needs a CUDA device and no affine warps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = TrainOptions::RECIPE.gpu_decode, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set))]
    pub gpu_decode: bool,
}

impl TrainOptions {
    /// The project's best-known recipe (BENCHMARKS.md, "Training defaults"):
    /// SGD with momentum under a one-cycle schedule and weight decay 5e-4.
    /// `local` and the benchmarks change only what their data needs (a
    /// smaller backbone and image for small synthetic photos).
    pub const RECIPE: Self = Self {
        task: Task::Pool,
        targets: Vec::new(),
        arch: Arch::Resnet50,
        lr: 0.1,
        epochs: 10,
        batch_size: 32,
        image_size: 224,
        finetune: None,
        backbone_weights: None,
        optimizer: OptimizerKind::Sgd,
        weight_decay: 5e-4,
        momentum: 0.9,
        schedule: ScheduleKind::Onecycle,
        warmup_steps: 0,
        step_every: 1000,
        gamma: 0.1,
        augment: true,
        // Beat torchvision's 0.08 and 0.35 on colour, clothing type and
        // brand alike: product shots are centred, and small crops lose the item.
        crop_scale: 0.6,
        framing: Framing::CenterCrop,
        affine_degrees: 0.0,
        affine_translate: 0.0,
        affine_scale: 0.0,
        val_fraction: 0.1,
        seed: 0,
        min_label_count: 1,
        min_word_count: 2,
        max_caption_len: 16,
        checkpoint_every: 0,
        log_every: 10,
        channels_last: false,
        shuffle_window: 4096,
        bf16: false,
        label_smoothing: 0.0,
        max_steps: None,
        gpu_decode: false,
    };

    /// Whether any part of the random affine warp is on.
    pub fn affine(&self) -> bool {
        self.affine_degrees > 0.0 || self.affine_translate > 0.0 || self.affine_scale > 0.0
    }

    /// Refuses values no run could use, naming the flag. The device is not
    /// known here; whoever runs the options checks what needs one.
    pub fn check(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("--lr must be positive, got {}", self.lr));
        }
        if self.batch_size == 0 || self.epochs == 0 {
            return Err("--batch-size and --n-epochs must be positive".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!(
                "--val-fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if self.image_size < 32 {
            return Err(format!(
                "--image-size must be at least 32, got {}",
                self.image_size
            ));
        }
        if !(self.crop_scale > 0.0 && self.crop_scale <= 1.0) {
            return Err(format!(
                "--crop-scale must be in (0, 1], got {}",
                self.crop_scale
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        self.check_targets()?;
        if self.max_steps.is_some_and(|steps| steps <= 0) {
            return Err("--max-steps must be positive".into());
        }
        if self.gpu_decode && self.affine() && self.augment {
            return Err(
                "--gpu-decode cannot apply the --affine-* warps (they run on the CPU); leave one out"
                    .into(),
            );
        }
        Ok(())
    }
}

impl TrainOptions {
    /// Tag outputs name their columns after the targets, so a target may
    /// not take a column's name that an output already has.
    const RESERVED: [&'static str; 5] =
        ["item_id", "caption", "embedding", "model_version", "error"];

    fn check_targets(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Ok(());
        }
        if self.task != Task::Pool {
            return Err(format!(
                "--targets needs --model-type pool (one head per target), not {}",
                self.task
            ));
        }
        for (i, target) in self.targets.iter().enumerate() {
            if target.trim().is_empty() || target.trim() != target {
                return Err(format!(
                    "--targets names an empty or padded column {target:?}"
                ));
            }
            if Self::RESERVED.contains(&target.as_str())
                || target.ends_with("_prob")
                || target.contains("_top")
            {
                return Err(format!(
                    "--targets cannot name {target:?}: tag outputs use that name for another column"
                ));
            }
            if self.targets[..i].contains(target) {
                return Err(format!("--targets names {target} twice"));
            }
        }
        Ok(())
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self::RECIPE
    }
}

/// How a train job's ranks are placed and restarted: `atelier submit
/// train`'s options beyond [`TrainOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct GangOptions {
    /// Data-parallel ranks, one per worker device (lane); --batch-size is per rank.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = GangOptions::DEFAULT.world_size))]
    pub world_size: u32,
    /// Ranks on each worker the gang uses, consecutive ranks together (a
    /// worker with `--device cuda:0,cuda:1` holds 2) [default: as many as fit].
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(deserialize_with = "zero_as_none")]
    pub ranks_per_worker: Option<u32>,
    /// Gang restarts (resuming from the last checkpoint) after a rank fails.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = GangOptions::DEFAULT.max_restarts))]
    pub max_restarts: u32,
    /// Fail the job if world-size worker lanes are not free at once within this many seconds.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = GangOptions::DEFAULT.gang_timeout_s))]
    pub gang_timeout_s: u32,
    /// A rank silent this long in an all-reduce fails the step (seconds).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = GangOptions::DEFAULT.collective_timeout_s))]
    pub collective_timeout_s: u32,
}

impl GangOptions {
    /// The most ranks a gang may have: each is a task record, a lane held
    /// and a peer in every rank's ring.
    pub const MAX_WORLD_SIZE: u32 = 1024;

    pub const DEFAULT: Self = Self {
        world_size: 1,
        ranks_per_worker: None,
        max_restarts: 2,
        gang_timeout_s: 600,
        collective_timeout_s: 60,
    };

    pub fn check(&self) -> Result<(), String> {
        if self.world_size == 0 || self.world_size > Self::MAX_WORLD_SIZE {
            return Err(format!(
                "--world-size must be from 1 to {}, got {}",
                Self::MAX_WORLD_SIZE,
                self.world_size
            ));
        }
        if self.ranks_per_worker == Some(0) {
            return Err("--ranks-per-worker must be positive (leave it out to pack)".into());
        }
        if let Some(per_worker) = self.ranks_per_worker {
            if !self.world_size.is_multiple_of(per_worker) {
                return Err(format!(
                    "--world-size {} is not a multiple of --ranks-per-worker {per_worker}",
                    self.world_size
                ));
            }
        }
        if self.gang_timeout_s == 0 || self.collective_timeout_s == 0 {
            return Err("--gang-timeout-s and --collective-timeout-s must be positive".into());
        }
        Ok(())
    }
}

impl Default for GangOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_recipe_and_pass_their_own_check() {
        let options = TrainOptions::default();
        assert_eq!(options, TrainOptions::RECIPE);
        assert_eq!(options.schedule, ScheduleKind::Onecycle);
        assert_eq!(options.check(), Ok(()));
        assert_eq!(GangOptions::default().check(), Ok(()));
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let bad = |change: fn(&mut TrainOptions)| {
            let mut options = TrainOptions::default();
            change(&mut options);
            options.check().unwrap_err()
        };
        assert!(bad(|o| o.lr = 0.0).contains("--lr"));
        assert!(bad(|o| o.val_fraction = 1.0).contains("--val-fraction"));
        assert!(bad(|o| o.crop_scale = 0.0).contains("--crop-scale"));
        assert!(bad(|o| o.label_smoothing = 1.0).contains("--label-smoothing"));
        assert!(bad(|o| {
            o.gpu_decode = true;
            o.affine_degrees = 10.0;
        })
        .contains("--gpu-decode"));
        let gang = GangOptions {
            world_size: 3,
            ranks_per_worker: Some(2),
            ..GangOptions::default()
        };
        assert!(gang.check().unwrap_err().contains("multiple"));
        let huge = GangOptions {
            world_size: GangOptions::MAX_WORLD_SIZE + 1,
            ..GangOptions::default()
        };
        assert!(huge.check().unwrap_err().contains("--world-size"));
    }

    #[test]
    fn a_record_from_before_an_option_existed_takes_its_default() {
        // As a state file kept a train spec's options before `crop_scale`,
        // `gpu_decode` and `max_steps` (0 then meant "every epoch").
        let old = r#"{"model_type":"color","arch":"resnet18","lr":0.05,"n_epochs":3,
            "batch_size":16,"image_size":64,"finetune":null,"backbone_weights":"",
            "optimizer":"adam","weight_decay":0.0,"momentum":0.9,"schedule":"cosine",
            "warmup_steps":0,"augment":false,"val_fraction":0.2,"seed":7,"max_steps":0}"#;
        let options: TrainOptions = serde_json::from_str(old).unwrap();
        assert_eq!(options.task, Task::Color);
        assert_eq!(options.epochs, 3);
        assert_eq!(options.schedule, ScheduleKind::Cosine);
        assert!(!options.augment);
        assert_eq!(options.backbone_weights, None);
        assert_eq!(options.max_steps, None);
        assert_eq!(options.crop_scale, TrainOptions::RECIPE.crop_scale);
        let again: TrainOptions =
            serde_json::from_str(&serde_json::to_string(&options).unwrap()).unwrap();
        assert_eq!(again, options);
    }
}
