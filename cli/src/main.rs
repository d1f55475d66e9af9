//! `atelier`: the one user-facing binary.

mod commands;
mod progress;

use atelier_process::LogArgs;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "atelier",
    version,
    about = "Tags a fashion catalogue with colour, brand, clothing type and a caption"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make, import and check catalogues.
    #[command(subcommand)]
    Catalog(commands::catalog::CatalogCommand),
    /// Run the image pipeline over a catalogue and report its throughput.
    Pipeline(commands::pipeline::PipelineArgs),
    /// Train a classifier (color, brand, category, pool) or the captioner.
    Train(Box<commands::train::TrainArgs>),
    /// Evaluate a checkpoint: accuracy, top-5, per-class P/R/F1, confusion; BLEU for captions.
    Test(commands::test::TestArgs),
    /// Tag every item of a catalogue with a trained model, into Parquet.
    Tag(commands::tag::TagArgs),
    /// The products most similar to one, from a tag output with embeddings.
    Similar(commands::similar::SimilarArgs),
    /// Draw training curves and confusion heatmaps (PNG and SVG) under the checkpoint.
    Plot(commands::plot::PlotArgs),
    /// The whole job on this machine with local files: the README's first command.
    Local(commands::local::LocalArgs),
    /// Run the coordinator: jobs in, tasks out to workers, state in SQLite.
    Coordinator(atelier_coordinator::CoordinatorArgs),
    /// Run a worker: takes tasks from the coordinator and runs them.
    Worker(commands::cluster::WorkerArgs),
    /// Submit a job to the coordinator.
    #[command(subcommand)]
    Submit(commands::jobs::SubmitCommand),
    /// Show a job (or all of them); --watch follows it with a progress bar.
    Status(commands::jobs::StatusArgs),
    /// List jobs, newest first.
    Jobs(commands::jobs::JobsArgs),
    /// Cancel a job; its workers stop at their next batch.
    Cancel(commands::jobs::CancelArgs),
    /// What this machine offers: libtorch, GPUs, NCCL, nvJPEG (checked and timed).
    Doctor(commands::doctor::DoctorArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The cause chain on one line; no backtrace, whatever RUST_BACKTRACE says.
            eprintln!("error: {}", atelier_proto::one_line(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any thread starts (see atelier_process::keep_freed_memory).
    let kept = matches!(
        cli.command,
        Command::Local(_)
            | Command::Train(_)
            | Command::Test(_)
            | Command::Tag(_)
            | Command::Worker(_)
            | Command::Pipeline(_)
            | Command::Coordinator(_)
    ) && atelier_process::keep_freed_memory();
    cli.log.init(kept);
    let runtime = atelier_process::io_runtime()?;
    let handle = runtime.handle().clone();
    // Commands block on compute; they run on this thread and use the runtime for I/O.
    let result = match cli.command {
        Command::Catalog(command) => commands::catalog::run(command, &handle),
        Command::Pipeline(args) => commands::pipeline::run(&args, &handle),
        Command::Local(args) => commands::local::run(&args, &handle),
        Command::Train(args) => commands::train::run(&args, &handle),
        Command::Test(args) => commands::test::run(&args, &handle),
        Command::Tag(args) => commands::tag::run(&args, &handle),
        Command::Plot(args) => commands::plot::run(&args, &handle),
        Command::Similar(args) => commands::similar::run(&args, &handle),
        Command::Coordinator(args) => commands::cluster::run_coordinator(&args, &handle),
        Command::Worker(args) => commands::cluster::run_worker(&args, &handle),
        Command::Submit(command) => commands::jobs::submit(command, &handle),
        Command::Status(args) => commands::jobs::status(&args, &handle),
        Command::Jobs(args) => commands::jobs::jobs(&args, &handle),
        Command::Cancel(args) => commands::jobs::cancel(&args, &handle),
        Command::Doctor(args) => commands::doctor::run(&args),
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}
