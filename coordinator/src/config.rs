use std::time::Duration;

use crate::places::WritePolicy;
use crate::plan::ShardSizing;

/// How the coordinator paces workers and cuts jobs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// A lease not renewed for this long expires and its task goes back in the queue.
    pub lease_timeout: Duration,
    /// How tag shards are sized when a job does not say.
    pub shard_sizing: ShardSizing,
    /// Attempts per task when a job does not say.
    pub default_max_attempts: u32,
    /// Lost workers (expired leases) a task or a gang may suffer.
    pub max_lost_workers: u32,
    /// Tag and eval jobs fail after this long with no worker registered.
    pub no_worker_timeout: Duration,
    /// Longest a LeaseTask call waits for work.
    pub max_lease_wait: Duration,
    /// Where jobs may write (`--output-root`) and where never (the state file).
    pub write_policy: WritePolicy,
    /// The most shards a tag job may be cut into (each is a task record).
    pub max_shards_per_job: usize,
    /// Shared secret that clients send as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The workers' own secret; `None` lets `token` serve workers too.
    pub worker_token: Option<String>,
    /// Serve TLS with this certificate chain and key (PEM); plain HTTP/2 without.
    pub tls: Option<TlsIdentity>,
}

/// A server certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("TlsIdentity(..)")
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(10),
            shard_sizing: ShardSizing {
                max_rows: 8192,
                per_worker: 4,
            },
            default_max_attempts: 3,
            max_lost_workers: crate::state::DEFAULT_MAX_LOST_WORKERS,
            no_worker_timeout: crate::state::DEFAULT_NO_WORKER_TIMEOUT,
            max_lease_wait: Duration::from_secs(20),
            max_shards_per_job: 200_000,
            write_policy: WritePolicy::default(),
            token: None,
            worker_token: None,
            tls: None,
        }
    }
}
