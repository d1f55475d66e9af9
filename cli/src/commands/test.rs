//! `atelier test`: the research code's test mode.

use atelier_worker::{evaluate, EvaluateOptions};
use clap::Args;
use tokio::runtime::Handle;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Checkpoint prefix written by `atelier train`.
    #[arg(long)]
    pub checkpoint: String,
    /// Catalogue to evaluate on.
    #[arg(long)]
    pub catalog: String,
    #[command(flatten)]
    pub columns: atelier_proto::CatalogColumns,
    /// Evaluate every item rather than only the run's validation split.
    #[arg(long)]
    pub all: bool,
    /// Classes shown per attribute in the terminal table.
    #[arg(long, default_value_t = 15)]
    pub top_classes: usize,
    #[command(flatten)]
    pub inference: super::tag::InferenceArgs,
}

pub fn run(args: &TestArgs, handle: &Handle) -> anyhow::Result<()> {
    let report = evaluate(
        &EvaluateOptions {
            checkpoint: args.checkpoint.clone(),
            catalog: args.catalog.clone(),
            columns: args.columns.clone(),
            validation_only: !args.all,
            threads: args.inference.threads(),
            device: args.inference.device.clone(),
            inference: args.inference.options.clone(),
        },
        handle,
        &|| false,
    )?;
    println!(
        "evaluated {} items ({} split) of {}; {} image errors",
        report.items, report.split, report.catalog, report.image_errors
    );
    for (name, r) in &report.attributes {
        println!(
            "\n{name}: accuracy {:.4}  top-5 {:.4}  macro-F1 {:.4}  (majority baseline {:.4}, {} items)",
            r.accuracy, r.top5_accuracy, r.macro_f1, r.majority_baseline, r.items
        );
        if args.top_classes == 0 {
            continue;
        }
        println!(
            "  {:<28} {:>9} {:>9} {:>9} {:>8}",
            "class", "precision", "recall", "f1", "support"
        );
        let mut classes: Vec<_> = r.per_class.iter().filter(|c| c.support > 0).collect();
        classes.sort_by_key(|c| std::cmp::Reverse(c.support));
        for c in classes.iter().take(args.top_classes) {
            println!(
                "  {:<28} {:>9.3} {:>9.3} {:>9.3} {:>8}",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        if classes.len() > args.top_classes {
            println!(
                "  ... {} more classes in the report",
                classes.len() - args.top_classes
            );
        }
    }
    if let Some(c) = &report.caption {
        println!(
            "\ncaptions: BLEU-1 {:.4}  BLEU-2 {:.4}  BLEU-3 {:.4}  BLEU-4 {:.4}  exact match {:.4}  ({} items)",
            c.bleu[0], c.bleu[1], c.bleu[2], c.bleu[3], c.exact_match, c.items
        );
        println!(
            "  baseline (always {:?}): BLEU-4 {:.4}, exact match {:.4}",
            c.baseline_caption, c.baseline_bleu4, c.baseline_exact_match
        );
        for (reference, generated) in &c.examples {
            println!("  {reference:?} -> {generated:?}");
        }
    }
    println!("\nreport: {}", report.report_url);
    Ok(())
}
