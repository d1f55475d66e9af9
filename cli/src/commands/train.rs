//! `atelier train`: the research code's train mode, on one machine.

use atelier_proto::{CatalogColumns, TrainOptions};
use atelier_worker::{train, TrainEvent, TrainSetup};
use clap::Args;
use tokio::runtime::Handle;

use crate::progress;

/// Where a training run reads and writes.
#[derive(Debug, Clone, Args)]
pub struct TrainPlaces {
    /// Training catalogue (path or object-store URL).
    #[arg(long)]
    pub catalog: String,
    /// Checkpoint prefix (path or object-store URL); rerunning resumes from it.
    #[arg(long)]
    pub checkpoint: String,
    #[command(flatten)]
    pub columns: CatalogColumns,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub places: TrainPlaces,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Decode threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub options: TrainOptions,
}

impl TrainArgs {
    pub fn setup(&self) -> TrainSetup {
        TrainSetup {
            catalog: self.places.catalog.clone(),
            columns: self.places.columns.clone(),
            checkpoint: self.places.checkpoint.clone(),
            device: self.device.clone(),
            threads: self.threads.unwrap_or_else(super::all_cores),
            options: self.options.clone(),
        }
    }
}

pub fn run(args: &TrainArgs, handle: &Handle) -> anyhow::Result<()> {
    let setup = args.setup();
    let options = &setup.options;
    if options.gpu_decode && !setup.device.starts_with("cuda") {
        anyhow::bail!("--gpu-decode needs a CUDA device (--device cuda:N)");
    }
    let mut bar = None;
    let summary = train(&setup, handle, &mut |event| match event {
        TrainEvent::Started {
            total_steps,
            resumed_at_step,
            train_items,
            validation_items,
        } => {
            println!(
                "training {} {} on {train_items} items ({validation_items} held out), {total_steps} steps{}",
                options.arch,
                options.task,
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
                super::score_line::describe(metrics)
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
        super::score_line::describe(&summary.metrics),
        summary.checkpoint
    );
    Ok(())
}
