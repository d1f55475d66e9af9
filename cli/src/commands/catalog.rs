//! `atelier catalog generate | import | inspect`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use atelier_catalog::inspect;
use atelier_catalog::{generate, GenerateOptions};
use atelier_catalog::{import, ColumnMapping, ImportOptions};
use atelier_catalog::{StoreLocation, WriterOptions};
use clap::{Args, Subcommand};
use tokio::runtime::Handle;

use crate::progress;

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Generate a synthetic catalogue of product photos with labels and captions.
    Generate(GenerateArgs),
    /// Import a folder of photos and a label CSV (defaults: the Fashion Product Images layout).
    Import(ImportArgs),
    /// Show files, rows, row groups, schema, label distributions and sample rows.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of items.
    #[arg(long)]
    pub items: usize,
    /// Output prefix: a path or an object-store URL.
    #[arg(long)]
    pub out: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Photo size as WIDTHxHEIGHT.
    #[arg(long, default_value = "384x512", value_parser = parse_size)]
    pub size: (usize, usize),
    /// Rendering threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = atelier_catalog::DEFAULT_ROWS_PER_GROUP)]
    pub rows_per_group: usize,
    #[arg(long, default_value_t = atelier_catalog::DEFAULT_GROUPS_PER_FILE)]
    pub groups_per_file: usize,
    /// Replace whatever is under the output prefix.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder holding the photos.
    #[arg(long)]
    pub images: PathBuf,
    /// Label CSV.
    #[arg(long)]
    pub labels: PathBuf,
    /// Output prefix: a path or an object-store URL.
    #[arg(long)]
    pub out: String,
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Photo file name inside --images; {id} is replaced by the item id.
    #[arg(long, default_value = "{id}.jpg")]
    pub image_template: String,
    #[arg(long, default_value = "baseColour")]
    pub color_column: String,
    #[arg(long, default_value = "articleType")]
    pub category_column: String,
    /// Column holding the brand (default: first word of --name-column).
    #[arg(long)]
    pub brand_column: Option<String>,
    /// Display-name column: the caption (lower-cased) and the default brand source.
    #[arg(long, default_value = "productDisplayName")]
    pub name_column: String,
    /// Store image_uri links to the files instead of embedding the bytes.
    #[arg(long)]
    pub link: bool,
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Catalogue prefix or file: a path or an object-store URL.
    pub url: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub columns: atelier_proto::CatalogColumns,
}

fn parse_size(value: &str) -> Result<(usize, usize), String> {
    let (w, h) = value
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {value:?}"))?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    let (w, h) = (parse(w)?, parse(h)?);
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
        return Err(format!("{w}x{h}: each side must be between 16 and 8192"));
    }
    Ok((w, h))
}

pub fn run(command: CatalogCommand, handle: &Handle) -> anyhow::Result<()> {
    match command {
        CatalogCommand::Generate(args) => run_generate(&args, handle),
        CatalogCommand::Import(args) => run_import(args, handle),
        CatalogCommand::Inspect(args) => {
            args.columns.check().map_err(anyhow::Error::msg)?;
            let report = handle.block_on(inspect(&args.url, &args.columns))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

pub fn run_generate(args: &GenerateArgs, handle: &Handle) -> anyhow::Result<()> {
    if args.items == 0 {
        bail!("--items must be positive");
    }
    let out = StoreLocation::parse(&args.out)?;
    let defaults = GenerateOptions::default();
    let options = GenerateOptions {
        items: args.items,
        seed: args.seed,
        width: args.size.0,
        height: args.size.1,
        threads: args.threads.unwrap_or(defaults.threads),
        overwrite: args.overwrite,
        writer: WriterOptions {
            rows_per_group: args.rows_per_group,
            groups_per_file: args.groups_per_file,
            ..WriterOptions::default()
        },
        ..defaults
    };
    let bar = progress::bar(args.items as u64, "generate");
    let summary = generate(&options, out.clone(), handle, |done| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("generating into {out}"))?;
    bar.finish_and_clear();
    println!(
        "generated {} items ({}x{}) into {out}: {} files, {:.1} MB of JPEG, {:.1}s, {:.0} items/s",
        summary.items,
        options.width,
        options.height,
        summary.files,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        summary.items as f64 / summary.seconds.max(1e-9)
    );
    Ok(())
}

fn run_import(args: ImportArgs, handle: &Handle) -> anyhow::Result<()> {
    let out = StoreLocation::parse(&args.out)?;
    let options = ImportOptions {
        images: args.images,
        labels: args.labels,
        mapping: ColumnMapping {
            id: args.id_column,
            image_template: args.image_template,
            color: Some(args.color_column),
            category: Some(args.category_column),
            brand: args.brand_column,
            name: Some(args.name_column),
            ..ColumnMapping::default()
        },
        link_images: args.link,
        overwrite: args.overwrite,
        writer: WriterOptions::default(),
    };
    let summary =
        import(&options, out.clone(), handle).with_context(|| format!("importing into {out}"))?;
    println!(
        "imported {} of {} rows into {out} ({} files, {:.1}s); {} bad rows",
        summary.imported,
        summary.rows_read,
        summary.files,
        summary.seconds,
        summary.bad_rows.len()
    );
    for bad in summary.bad_rows.iter().take(20) {
        println!(
            "  line {}{}: {}",
            bad.line,
            bad.item_id
                .as_deref()
                .map(|id| format!(" (id {id})"))
                .unwrap_or_default(),
            bad.reason
        );
    }
    if summary.bad_rows.len() > 20 {
        println!("  ... and {} more", summary.bad_rows.len() - 20);
    }
    Ok(())
}
