//! `atelier coordinator` and `atelier worker`: the two long-running servers.

use std::path::PathBuf;

use anyhow::Context;
use atelier_coordinator::CoordinatorArgs;
use atelier_process::bind_announced;
use atelier_process::shutdown_signal;
use atelier_proto::Connect;
use atelier_worker::{run_agent, serve_health, AgentOptions, WorkerMetrics};
use clap::Args;

use super::jobs::ClientArgs;
use tokio::runtime::Handle;

/// How a client authenticates to the coordinator and which TLS roots it trusts.
#[derive(Debug, Clone, Default, Args)]
pub struct AccessArgs {
    /// Shared secret for both services (clients send it as a bearer token).
    #[arg(long = "token", env = "ATELIER_TOKEN", hide_env_values = true)]
    pub value: Option<String>,
    /// PEM certificate to trust for an https:// coordinator (a private CA or a
    /// self-signed certificate), besides the system roots.
    #[arg(long, env = "ATELIER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl AccessArgs {
    pub fn connect(&self) -> anyhow::Result<Connect> {
        let ca_pem = self
            .tls_ca
            .as_ref()
            .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
            .transpose()?;
        Ok(Connect {
            token: self.value.clone(),
            ca_pem,
        })
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// cpu, cuda:N, a comma list (cuda:0,cuda:1; cpu,cpu) or cuda:all: one
    /// lane per device, each taking tasks and train ranks of its own.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Decode threads, shared out among the lanes (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Host or IP the other ranks of a train gang reach this worker at
    /// [default: this machine's address on the route to the coordinator].
    #[arg(long, env = "ATELIER_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// libtorch's compute threads [default: all cores]; with several CPU
    /// workers on one machine, give each its share of the cores.
    #[arg(long)]
    pub compute_threads: Option<usize>,
    /// Give a task up, and stop this worker, when its compute thread shows
    /// no sign of life (no batch, step or poll) for this many seconds: it is
    /// stuck in a hung read or device call that no cancel reaches.
    #[arg(long, default_value_t = atelier_worker::DEFAULT_STALL_TIMEOUT.as_secs())]
    pub stall_timeout_s: u64,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Serve the gRPC health service on this address (Kubernetes probes).
    #[arg(long)]
    pub health_addr: Option<String>,
}

pub fn run_coordinator(args: &CoordinatorArgs, handle: &Handle) -> anyhow::Result<()> {
    handle
        .block_on(atelier_coordinator::run(args, shutdown_signal()))
        .context("coordinator")
}

/// Binds `address` and says where (port 0 picks a free port).
async fn bind(address: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    bind_announced(address, what)
        .await
        .with_context(|| format!("binding the {what} address {address}"))
}

pub fn run_worker(args: &WorkerArgs, handle: &Handle) -> anyhow::Result<()> {
    if let Some(threads) = args.compute_threads {
        tch::set_num_threads(threads.max(1) as i32);
    }
    let options = AgentOptions {
        connect: args.client.token.connect()?,
        device: args.device.clone(),
        threads: args.threads.unwrap_or_else(super::all_cores),
        advertise_host: args.advertise_host.clone(),
        metrics: Some(WorkerMetrics::new(&args.device)),
        stall_timeout: std::time::Duration::from_secs(args.stall_timeout_s.max(1)),
        ..AgentOptions::new(&args.client.coordinator)
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    handle.block_on(async {
        if let (Some(address), Some(metrics)) = (&args.metrics_addr, &options.metrics) {
            let listener = bind(address, "metrics").await?;
            let metrics = std::sync::Arc::clone(metrics);
            let render: atelier_telemetry::Render = std::sync::Arc::new(move || metrics.render());
            tokio::spawn(atelier_telemetry::serve_metrics(
                listener,
                render,
                until_stopped(),
            ));
        }
        if let Some(address) = &args.health_addr {
            let listener = bind(address, "health").await?;
            tokio::spawn(serve_health(listener, until_stopped()));
        }
        anyhow::Ok(())
    })?;
    let summary = handle.block_on(run_agent(options, shutdown_signal()));
    let _ = stop.send(true);
    let summary = summary.with_context(|| format!("worker of {}", args.client.coordinator))?;
    println!(
        "worker stopped: {} tasks done, {} failed, {} stopped",
        summary.tasks_done, summary.tasks_failed, summary.tasks_stopped
    );
    Ok(())
}
