//! `atelier coordinator` and `atelier worker`: the two long-running servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atelier_coordinator::{CoordinatorConfig, TlsIdentity};
use atelier_proto::client::Connect;
use atelier_worker::agent::{run_agent, serve_health, AgentOptions, WorkerMetrics};
use clap::Args;

use super::jobs::ClientArgs;
use tokio::runtime::Handle;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// SQLite file with every job, task and attempt; reloaded on restart.
    #[arg(long, default_value = "data/coordinator.db")]
    pub state: PathBuf,
    #[command(flatten)]
    pub token: AccessArgs,
    /// A lease not renewed by a heartbeat for this long expires.
    #[arg(long, default_value_t = 10_000)]
    pub lease_timeout_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    pub heartbeat_interval_ms: u64,
    /// Rows per tag shard when a job does not say.
    #[arg(long, default_value_t = 8192)]
    pub shard_rows: u64,
    /// Attempts per task when a job does not say.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

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
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Serve the gRPC health service on this address (Kubernetes probes).
    #[arg(long)]
    pub health_addr: Option<String>,
}

impl CoordinatorArgs {
    pub fn config(&self) -> anyhow::Result<CoordinatorConfig> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            }),
            _ => None,
        };
        Ok(CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            lease_timeout: Duration::from_millis(self.lease_timeout_ms),
            default_shard_rows: self.shard_rows,
            default_max_attempts: self.max_attempts,
            token: self.token.value.clone(),
            tls,
            ..CoordinatorConfig::default()
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

pub fn run_coordinator(args: &CoordinatorArgs, handle: &Handle) -> anyhow::Result<()> {
    handle.block_on(async {
        let metrics = match &args.metrics_addr {
            Some(address) => Some(bind(address, "metrics").await?),
            None => None,
        };
        let listener = bind_for_workers(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let address = listener.local_addr()?;
        // The harness and scripts wait for this line.
        println!("coordinator listening on {address}");
        let config = args.config()?;
        atelier_coordinator::serve_with_metrics(
            listener,
            metrics,
            &args.state,
            config,
            shutdown_signal(),
        )
        .await
        .context("coordinator")
    })
}

/// Binds the coordinator's address with room for a thousand workers that
/// connect at once (all of them, after a coordinator restart): tokio's
/// default backlog of 1,024 overflowed under the scale benchmark, and every
/// dropped SYN cost its worker a one-second retransmit.
async fn bind_for_workers(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    const BACKLOG: u32 = 4096;
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(address).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Binds `address` and says where (port 0 picks a free port).
async fn bind(address: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} address {address}"))?;
    println!("{what} listening on {}", listener.local_addr()?);
    Ok(listener)
}

pub fn run_worker(args: &WorkerArgs, handle: &Handle) -> anyhow::Result<()> {
    if let Some(threads) = args.compute_threads {
        tch::set_num_threads(threads.max(1) as i32);
    }
    let options = AgentOptions {
        connect: args.client.token.connect()?,
        device: args.device.clone(),
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
        advertise_host: args.advertise_host.clone(),
        metrics: Some(WorkerMetrics::new(&args.device)),
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

#[cfg(test)]
mod tests {
    use super::bind_for_workers;

    #[tokio::test]
    async fn the_coordinator_listener_accepts_on_the_port_it_picked() {
        let listener = bind_for_workers("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        assert_ne!(address.port(), 0);
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
        assert_eq!(
            connected.unwrap().peer_addr().unwrap(),
            address,
            "the client reached the coordinator's listener"
        );
        assert!(accepted.is_ok());
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_not_a_second_listener() {
        let first = bind_for_workers("127.0.0.1:0").await.unwrap();
        let taken = first.local_addr().unwrap().to_string();
        let second = bind_for_workers(&taken).await;
        assert!(second.is_err(), "bound {taken} twice");
    }
}
