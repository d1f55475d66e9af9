//! `atelier-coordinator`: the coordinator alone, as `atelier coordinator`
//! runs it, in a process without libtorch. The `atelier` binary links
//! libtorch for its other commands and so maps it, and runs its static
//! initialisers, whatever the command; a scheduler needs none of it.

use clap::Parser;

use atelier_coordinator::{run, CoordinatorArgs};
use atelier_process::LogArgs;

#[derive(Debug, Parser)]
#[command(
    name = "atelier-coordinator",
    version,
    about = "Runs the atelier coordinator: jobs in, tasks out to workers, state in SQLite"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    args: CoordinatorArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any thread starts (see atelier_process::keep_freed_memory).
    let kept = atelier_process::keep_freed_memory();
    cli.log.init(kept);
    match serve(&cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", atelier_proto::one_line(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: &CoordinatorArgs) -> anyhow::Result<()> {
    let runtime = atelier_process::io_runtime()?;
    let served = runtime.block_on(run(args, atelier_process::shutdown_signal()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(served?)
}
