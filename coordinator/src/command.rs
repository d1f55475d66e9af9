//! The coordinator as a command: its flags, and serving them until a shutdown
//! signal. `atelier coordinator` and the libtorch-free `atelier-coordinator`
//! binary both run this, so they take the same flags.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{CoordinatorConfig, TlsIdentity};
use crate::error::{CoordinatorError, Result};
use crate::places::{resolved, WritePolicy};
use crate::plan::ShardSizing;
use crate::server::Restored;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// SQLite file with every job, task and attempt; reloaded on restart.
    #[arg(long, default_value = "data/coordinator.db")]
    pub state: PathBuf,
    /// Shared secret for both services (clients send it as a bearer token).
    #[arg(long, env = "ATELIER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A separate secret for workers: with it, only holders of this one may
    /// register, lease and report work, and users' --token no longer can.
    #[arg(long, env = "ATELIER_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Serve without a token on an address beyond loopback: anyone who
    /// reaches it can then submit and cancel jobs and act as a worker.
    #[arg(long)]
    pub insecure: bool,
    /// A lease not renewed by a heartbeat for this long expires.
    #[arg(long, default_value_t = 10_000)]
    pub lease_timeout_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    pub heartbeat_interval_ms: u64,
    /// Rows per tag shard when a job does not say; fewer when the catalogue
    /// would otherwise give the registered workers under --shards-per-worker
    /// shards each (never under 512 rows).
    #[arg(long, default_value_t = 8192)]
    pub shard_rows: u64,
    /// Shards to aim for per registered worker when a job does not set its
    /// shard size; 0 always cuts --shard-rows.
    #[arg(long, default_value_t = 4)]
    pub shards_per_worker: u64,
    /// Attempts per task when a job does not say.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Times a task or a train gang may lose its worker (the lease expired:
    /// preempted, killed, cut off) before its job fails. Lost workers do not
    /// count against a job's max attempts or max restarts.
    #[arg(long, default_value_t = crate::state::DEFAULT_MAX_LOST_WORKERS)]
    pub max_lost_workers: u32,
    /// A tag or eval job fails after this many seconds with no worker
    /// registered (train gangs have their own --gang-timeout-s).
    #[arg(long, default_value_t = crate::state::DEFAULT_NO_WORKER_TIMEOUT.as_secs())]
    pub no_worker_timeout_s: u64,
    /// The most shards a tag job may be cut into; a job that would need more
    /// is refused at submit (each shard is a task record in memory).
    #[arg(long, default_value_t = CoordinatorConfig::default().max_shards_per_job)]
    pub max_shards_per_job: usize,
    /// Jobs may write (tag outputs, checkpoints) only inside these prefixes
    /// (repeat it or separate them with commas) [default: anywhere but the
    /// state file].
    #[arg(
        long = "output-root",
        value_delimiter = ',',
        env = "ATELIER_OUTPUT_ROOTS"
    )]
    pub output_roots: Vec<String>,
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

impl CoordinatorArgs {
    pub fn config(&self) -> Result<CoordinatorConfig> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|error| CoordinatorError::Io {
                what: format!("reading {}", path.display()),
                error,
            })
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            }),
            _ => None,
        };
        if self.lease_timeout_ms <= self.heartbeat_interval_ms {
            return Err(CoordinatorError::InvalidArgument(format!(
                "--lease-timeout-ms {} must be longer than --heartbeat-interval-ms {}, or every \
                 lease expires before its worker's heartbeat renews it",
                self.lease_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        Ok(CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            lease_timeout: Duration::from_millis(self.lease_timeout_ms),
            shard_sizing: ShardSizing {
                max_rows: self.shard_rows,
                per_worker: self.shards_per_worker,
            },
            default_max_attempts: self.max_attempts,
            max_lost_workers: self.max_lost_workers,
            no_worker_timeout: Duration::from_secs(self.no_worker_timeout_s),
            max_shards_per_job: self.max_shards_per_job,
            write_policy: WritePolicy {
                roots: self
                    .output_roots
                    .iter()
                    .map(|root| resolved(root))
                    .collect::<Result<_>>()?,
                // `--overwrite` around it would delete the coordinator's state.
                protected: vec![resolved(&self.state.to_string_lossy())?],
            },
            token: self.token.clone(),
            worker_token: self.worker_token.clone(),
            tls,
            ..CoordinatorConfig::default()
        })
    }
}

/// Loads the state, binds, prints `coordinator listening on ADDR` (scripts
/// and the test harness wait for it) and serves until `shutdown` resolves.
/// A bad state file or address fails before that line.
pub async fn run(args: &CoordinatorArgs, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let config = args.config()?;
    let restored = {
        let (path, config) = (args.state.clone(), config.clone());
        tokio::task::spawn_blocking(move || Restored::load(&path, &config))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("loading the state: {e}")))??
    };
    let metrics = match &args.metrics_addr {
        Some(address) => Some(
            atelier_process::bind_announced(address, "metrics")
                .await
                .map_err(|error| CoordinatorError::Io {
                    what: format!("binding the metrics address {address}"),
                    error,
                })?,
        ),
        None => None,
    };
    let bound = |error| CoordinatorError::Io {
        what: format!("binding {}", args.listen),
        error,
    };
    let listener = bind_for_workers(&args.listen).await.map_err(bound)?;
    let address = listener.local_addr().map_err(bound)?;
    if args.token.is_none() && !args.insecure && !address.ip().is_loopback() {
        return Err(CoordinatorError::InvalidArgument(format!(
            "refusing to serve {} without a token: anyone who reaches {address} could submit \
             and cancel jobs or act as a worker; give --token (or ATELIER_TOKEN), listen on \
             loopback, or pass --insecure",
            args.listen
        )));
    }
    println!("coordinator listening on {address}");
    restored.serve(listener, metrics, config, shutdown).await
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{bind_for_workers, CoordinatorArgs};

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        args: CoordinatorArgs,
    }

    #[test]
    fn a_lease_timeout_a_heartbeat_cannot_renew_in_time_is_refused() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["coordinator"];
            argv.extend(extra);
            Command::parse_from(argv).args.config()
        };
        let error = parse(&[
            "--lease-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "2000",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("--lease-timeout-ms") && error.contains("--heartbeat-interval-ms"),
            "{error}"
        );
        assert!(parse(&[
            "--lease-timeout-ms",
            "2000",
            "--heartbeat-interval-ms",
            "2000"
        ])
        .is_err());
        assert!(parse(&[]).is_ok());
    }

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
