//! The log subscriber, set up once by each binary's `main`.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The logging flag both binaries take.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ATELIER_LOG_FORMAT")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Sets up the subscriber, then records whether freed memory is kept
    /// (decided earlier, before any thread started: see `memory`).
    pub fn init(&self, kept_freed_memory: bool) {
        init_tracing(self.log_format);
        tracing::debug!(
            kept = kept_freed_memory,
            "freed memory is kept for reuse, not returned to the kernel"
        );
    }
}

/// Logs to stderr at `RUST_LOG`'s levels (`info` when unset).
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal, never in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
