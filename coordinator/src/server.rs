//! The coordinator's gRPC server on an already-bound listener.

use std::future::Future;
use std::path::Path;

use atelier_proto::v1::job_service_server::JobServiceServer;
use atelier_proto::v1::worker_service_server::WorkerServiceServer;
use atelier_proto::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::event_loop;
use crate::service::auth::BearerAuth;
use crate::service::jobs::JobApi;
use crate::service::workers::WorkerApi;
use crate::state::{Now, State};
use crate::store::StateStore;

/// Serves both services, health and reflection on `listener` until `shutdown`
/// resolves, with its state in the SQLite file at `state_path` (created if
/// missing; reloaded, with every job where it was, if not).
pub async fn serve(
    listener: TcpListener,
    state_path: &Path,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with_metrics(listener, None, state_path, config, shutdown).await
}

/// `serve`, plus Prometheus metrics on `metrics` (GET /metrics).
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state_path: &Path,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let restored = Restored::load(state_path, &config)?;
    restored.serve(listener, metrics, config, shutdown).await
}

/// The coordinator's state as its file left it, ready to serve. Loading it
/// apart from serving lets a command refuse a bad state file before it says
/// it is listening.
#[derive(Debug)]
pub struct Restored {
    store: StateStore,
    state: State,
}

impl Restored {
    /// Opens (or creates) the SQLite file at `state_path` and rebuilds every
    /// job from it. Blocking file I/O.
    pub fn load(state_path: &Path, config: &CoordinatorConfig) -> Result<Self> {
        let mut store = StateStore::open(state_path)?;
        let loaded = store.load()?;
        tracing::info!(
            jobs = loaded.jobs.len(),
            tasks = loaded.tasks.len(),
            state = %state_path.display(),
            "coordinator state loaded"
        );
        let state = State::restore(config.lease_timeout, loaded, Now::read())
            .with_max_lost_workers(config.max_lost_workers)
            .with_no_worker_timeout(config.no_worker_timeout);
        Ok(Self { store, state })
    }

    /// Serves both services, health and reflection on `listener` (and
    /// metrics on `metrics`) until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        config: CoordinatorConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let (handle, loop_thread) =
            event_loop::start(self.state, self.store, config.max_lease_wait)
                .map_err(|e| CoordinatorError::Internal(format!("starting the event loop: {e}")))?;

        let auth = BearerAuth::new(config.token.as_deref());
        // Workers may have a credential of their own, which users lack.
        let worker_auth =
            BearerAuth::new(config.worker_token.as_deref().or(config.token.as_deref()));
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<JobServiceServer<JobApi>>().await;
        health.set_serving::<WorkerServiceServer<WorkerApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| CoordinatorError::Internal(format!("reflection: {e}")))?;
        let jobs = JobServiceServer::with_interceptor(
            JobApi {
                handle: handle.clone(),
                config: config.clone(),
            },
            auth.clone(),
        );
        let workers = WorkerServiceServer::with_interceptor(
            WorkerApi {
                handle: handle.clone(),
                config: config.clone(),
            },
            worker_auth,
        );
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(metrics) = metrics {
            let scraped = handle.clone();
            let render: atelier_telemetry::Render =
                std::sync::Arc::new(move || crate::prometheus::render(&scraped));
            tokio::spawn(atelier_telemetry::serve_metrics(
                metrics,
                render,
                async move {
                    let _ = metrics_stopped.await;
                },
            ));
        }
        drop(handle);
        let address = listener.local_addr().ok();
        tracing::info!(?address, "coordinator serving");
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            atelier_proto::install_crypto_provider();
            let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| {
                    CoordinatorError::InvalidArgument(format!("TLS certificate or key: {e}"))
                })?;
        }
        // The loop ends early only when it failed (its store could not save
        // a batch, or it panicked): then nothing can be answered durably any
        // more, so health says NOT_SERVING and the server stops, rather than
        // answer with a dead loop while workers retry for ever.
        let (loop_ended, loop_ended_rx) = tokio::sync::watch::channel(false);
        let joined = tokio::task::spawn_blocking(move || {
            let joined = loop_thread.join();
            let _ = loop_ended.send(true);
            joined
        });
        let stop = {
            let loop_ended_rx = loop_ended_rx.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = ended(loop_ended_rx) => {
                        tracing::error!("the event loop stopped; the coordinator stops serving");
                        health.set_not_serving::<JobServiceServer<JobApi>>().await;
                        health.set_not_serving::<WorkerServiceServer<WorkerApi>>().await;
                    }
                }
            }
        };
        let serving = builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(jobs)
            .add_service(workers)
            .serve_with_incoming_shutdown(without_nagle(listener), stop);
        // A graceful stop waits for open calls; after a failed loop, watch
        // streams would never end, so they get a few seconds.
        let served = tokio::select! {
            served = serving => served.map_err(|e| CoordinatorError::Internal(format!("grpc server: {e}"))),
            () = async {
                ended(loop_ended_rx).await;
                tokio::time::sleep(LOOP_FAILED_GRACE).await;
            } => Ok(()),
        };
        // The services (and the metrics server) held the last loop handles;
        // with them gone the loop ends.
        let _ = stop_metrics.send(());
        let looped = joined
            .await
            .map_err(|e| CoordinatorError::Internal(format!("joining the event loop: {e}")))?
            .map_err(|_| CoordinatorError::Internal("the event loop panicked".into()))?;
        // The loop's own error says why it stopped; it comes first.
        looped?;
        served
    }
}

/// Resolves once `flag` is true (or its sender is gone).
async fn ended(mut flag: tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}

/// How long open calls get to finish once the event loop has failed.
const LOOP_FAILED_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Accepted connections with Nagle's algorithm off, as tonic sets up the
/// listeners it binds itself (`serve_with_incoming` leaves sockets as they
/// come): a small answer is sent at once instead of waiting for the
/// acknowledgement of the previous one.
fn without_nagle(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not turn off nagle on a connection");
            }
        }
        accepted
    })
}
