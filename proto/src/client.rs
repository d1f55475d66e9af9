//! Clients of both services with the bearer token attached to every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::error::{ProtoError, Result};
use crate::v1::job_service_client::JobServiceClient;
use crate::v1::worker_service_client::WorkerServiceClient;

#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self> {
        token
            .filter(|t| !t.is_empty())
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ProtoError::Invalid {
                        field: "token",
                        reason: "must be printable ASCII".into(),
                    })
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, BearerToken>;
pub type JobClient = JobServiceClient<Authed>;
pub type WorkerClient = WorkerServiceClient<Authed>;

/// How a client reaches the coordinator.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    pub token: Option<String>,
    /// PEM certificate(s) to trust for `https://` besides the system roots
    /// (a private CA, or a self-signed coordinator certificate).
    pub ca_pem: Option<Vec<u8>>,
}

impl Connect {
    pub fn token(token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_string),
            ca_pem: None,
        }
    }

    fn bearer(&self) -> Result<BearerToken> {
        BearerToken::new(self.token.as_deref())
    }
}

/// Picks rustls's crypto provider for the process. Several crates in the
/// build enable different ones, so rustls cannot choose by itself.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means some other part of the process chose first; fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn endpoint(url: &str, connect: &Connect) -> Result<Endpoint> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let invalid = |e: &dyn std::fmt::Display| ProtoError::Invalid {
        field: "coordinator",
        reason: format!("{url}: {e}"),
    };
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| invalid(&e))?;
    if url.starts_with("https://") {
        install_crypto_provider();
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &connect.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| invalid(&e))?;
    } else if connect.ca_pem.is_some() {
        return Err(invalid(
            &"a TLS CA was given for a plain http:// address; use https://",
        ));
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// A user's client; fails at once, naming the address, when nothing answers.
pub async fn connect_jobs(url: &str, connect: &Connect) -> Result<JobClient> {
    let channel = endpoint(url, connect)?
        .connect()
        .await
        .map_err(|e| ProtoError::Unreachable {
            url: url.to_string(),
            reason: crate::error_text::one_line(&e),
        })?;
    Ok(
        JobServiceClient::with_interceptor(channel, connect.bearer()?)
            .max_decoding_message_size(64 << 20),
    )
}

/// A worker's client; connects on first use and again after every failure, so
/// a worker outlives a coordinator restart.
pub fn worker_client(url: &str, connect: &Connect) -> Result<WorkerClient> {
    let channel = endpoint(url, connect)?.connect_lazy();
    Ok(WorkerServiceClient::with_interceptor(
        channel,
        connect.bearer()?,
    ))
}

/// A job client that connects lazily, for in-process use.
pub fn job_client_lazy(url: &str, connect: &Connect) -> Result<JobClient> {
    let channel = endpoint(url, connect)?.connect_lazy();
    Ok(JobServiceClient::with_interceptor(
        channel,
        connect.bearer()?,
    ))
}
