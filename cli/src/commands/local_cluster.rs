//! A coordinator and workers inside this process on loopback, for `atelier local`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use atelier_coordinator::CoordinatorConfig;
use atelier_coordinator::ShardSizing;
use atelier_worker::{run_agent, AgentOptions};
use tokio::runtime::Handle;
use tokio::sync::watch;

#[derive(Debug)]
pub struct LocalCluster {
    pub address: String,
    stop: watch::Sender<bool>,
    coordinator: tokio::task::JoinHandle<atelier_coordinator::Result<()>>,
    workers: Vec<tokio::task::JoinHandle<atelier_worker::Result<atelier_worker::AgentSummary>>>,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl LocalCluster {
    /// A coordinator on a free loopback port with its state in `state`, and
    /// `workers` workers sharing `threads` decode threads.
    pub fn start(
        handle: &Handle,
        state: &Path,
        workers: usize,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let listener = handle
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding a loopback port for the coordinator")?;
        let address = format!("http://{}", listener.local_addr()?);
        let config = CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(500),
            lease_timeout: Duration::from_secs(5),
            shard_sizing: ShardSizing {
                max_rows: 512,
                per_worker: 4,
            },
            ..CoordinatorConfig::default()
        };
        let state = state.to_path_buf();
        let coordinator = handle.spawn({
            let stop = stop_rx.clone();
            async move { atelier_coordinator::serve(listener, &state, config, stopped(stop)).await }
        });
        let workers = (0..workers)
            .map(|_| {
                let options = AgentOptions {
                    threads: (threads / workers).max(1),
                    poll_wait: Duration::from_secs(2),
                    ..AgentOptions::new(&address)
                };
                handle.spawn(run_agent(options, stopped(stop_rx.clone())))
            })
            .collect();
        Ok(Self {
            address,
            stop,
            coordinator,
            workers,
        })
    }

    /// Drains the workers, then stops the coordinator.
    pub fn stop(self, handle: &Handle) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        handle.block_on(async {
            for worker in self.workers {
                worker.await.context("worker task")??;
            }
            self.coordinator.await.context("coordinator task")??;
            Ok(())
        })
    }
}
