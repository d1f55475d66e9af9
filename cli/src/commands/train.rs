//! `atelier train`: the research code's train mode, on one machine.

use atelier_models::optim::{OptimizerKind, ScheduleKind};
use atelier_models::{Arch, Task};
use atelier_worker::train::{train, TrainEvent, TrainOptions};
use clap::{Args, ValueEnum};
use tokio::runtime::Handle;

use crate::progress;

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// What to learn.
    #[arg(long, value_enum)]
    pub model_type: ModelType,
    /// Checkpoint prefix (path or object-store URL); rerunning resumes from it.
    #[arg(long)]
    pub checkpoint: String,
    /// Training catalogue (path or object-store URL).
    #[arg(long)]
    pub catalog: String,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, default_value_t = 10)]
    pub n_epochs: usize,
    #[arg(long, value_enum, default_value_t = ArchArg::Resnet50)]
    pub arch: ArchArg,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Train the backbone too [default: on from random weights, off with --backbone-weights].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub finetune: Option<bool>,
    /// torchvision backbone weights as safetensors (see README: bring your own weights).
    #[arg(long)]
    pub backbone_weights: Option<String>,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: i64,
    /// Step schedule: decay every this many steps.
    #[arg(long, default_value_t = 1000)]
    pub step_every: i64,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Random resized crop and horizontal flip.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,
    /// Random affine on top of the crop: rotation within ± this many degrees (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub affine_degrees: f32,
    /// Random affine: translation within ± this share of the side (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub affine_translate: f32,
    /// Random affine: scaling within 1 ± this (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub affine_scale: f32,
    /// Smallest area share of the random resized crop (the largest is 1).
    #[arg(long, default_value_t = atelier_worker::train::DEFAULT_CROP_SCALE)]
    pub crop_scale: f32,
    /// Share of items (by a stable hash of item_id) held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Labels seen fewer times in training map to the unknown class.
    #[arg(long, default_value_t = 1)]
    pub min_label_count: usize,
    /// Caption words seen fewer times map to <unk>.
    #[arg(long, default_value_t = 2)]
    pub min_word_count: usize,
    #[arg(long, default_value_t = 16)]
    pub max_caption_len: usize,
    /// Checkpoint every this many steps as well as at each epoch end (0: epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Convolutions in channels-last memory order (faster oneDNN/cuDNN kernels).
    #[arg(long)]
    pub channels_last: bool,
    /// Shuffle training items within a buffer of this many (on top of a shuffled
    /// row-group order); memory grows with it by the size of the compressed images.
    #[arg(long, default_value_t = 4096)]
    pub shuffle_window: usize,
    /// bf16 autocast (CUDA, or a CPU with bf16 instructions): convolutions
    /// and matmuls in bf16; weights, gradients, the loss and the optimizer in f32.
    #[arg(long)]
    pub bf16: bool,
    /// Stop after this many optimizer steps in all (a checkpoint is written there).
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Decode JPEGs on the GPU (nvJPEG), random crops and flips included;
    /// needs a CUDA device and no affine warps.
    #[arg(long)]
    pub gpu_decode: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelType {
    Color,
    Brand,
    Category,
    Pool,
    Caption,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArchArg {
    Resnet18,
    Resnet34,
    Resnet50,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Cosine,
    Step,
    Onecycle,
}

impl TrainArgs {
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            catalog: self.catalog.clone(),
            checkpoint: self.checkpoint.clone(),
            task: match self.model_type {
                ModelType::Color => Task::Color,
                ModelType::Brand => Task::Brand,
                ModelType::Category => Task::Category,
                ModelType::Pool => Task::Pool,
                ModelType::Caption => Task::Caption,
            },
            arch: match self.arch {
                ArchArg::Resnet18 => Arch::Resnet18,
                ArchArg::Resnet34 => Arch::Resnet34,
                ArchArg::Resnet50 => Arch::Resnet50,
            },
            lr: self.lr,
            epochs: self.n_epochs,
            batch_size: self.batch_size,
            image_size: self.image_size,
            finetune: self.finetune,
            backbone_weights: self.backbone_weights.clone(),
            optimizer: match self.optimizer {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::Adamw,
            },
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            schedule: match self.schedule {
                ScheduleArg::Constant => ScheduleKind::Constant,
                ScheduleArg::Cosine => ScheduleKind::Cosine,
                ScheduleArg::Step => ScheduleKind::Step,
                ScheduleArg::Onecycle => ScheduleKind::Onecycle,
            },
            warmup_steps: self.warmup_steps,
            step_every: self.step_every,
            gamma: self.gamma,
            augment: self.augment,
            affine_degrees: self.affine_degrees,
            affine_translate: self.affine_translate,
            affine_scale: self.affine_scale,
            crop_scale: self.crop_scale,
            val_fraction: self.val_fraction,
            seed: self.seed,
            device: self.device.clone(),
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
            min_label_count: self.min_label_count,
            min_word_count: self.min_word_count,
            max_caption_len: self.max_caption_len,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            channels_last: self.channels_last,
            shuffle_window: self.shuffle_window,
            bf16: self.bf16,
            max_steps: self.max_steps,
            gpu_decode: self.gpu_decode,
        }
    }
}

pub fn run(args: &TrainArgs, handle: &Handle) -> anyhow::Result<()> {
    let options = args.options();
    if options.gpu_decode && !options.device.starts_with("cuda") {
        anyhow::bail!("--gpu-decode needs a CUDA device (--device cuda:N)");
    }
    let mut bar = None;
    let summary = train(&options, handle, &mut |event| match event {
        TrainEvent::Started {
            total_steps,
            resumed_at_step,
            train_items,
            validation_items,
        } => {
            println!(
                "training {} {} on {train_items} items ({validation_items} held out), {total_steps} steps{}",
                options.arch.name(),
                options.task.name(),
                if *resumed_at_step > 0 { format!(", resuming at step {resumed_at_step}") } else { String::new() }
            );
            let b = progress::bar(*total_steps as u64, "train");
            b.set_position(*resumed_at_step as u64);
            bar = Some(b);
        }
        TrainEvent::Step {
            epoch,
            step,
            loss,
            lr,
            images_per_s,
            ..
        } => {
            if let Some(b) = &bar {
                b.set_position(*step as u64);
                b.set_message(format!(
                    "epoch {epoch} loss {loss:.4} lr {lr:.2e} {images_per_s:.1} img/s"
                ));
            }
        }
        TrainEvent::Epoch { epoch, metrics } => {
            let line = format!(
                "epoch {epoch}: validation {}",
                super::metrics::describe(metrics)
            );
            match &bar {
                Some(b) if !b.is_hidden() => b.println(line),
                _ => println!("{line}"),
            }
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "trained {} epochs, {} steps, {:.1} images/s; validation {}; checkpoint {}",
        summary.epochs,
        summary.steps,
        summary.images_per_s,
        super::metrics::describe(&summary.metrics),
        summary.checkpoint
    );
    Ok(())
}
