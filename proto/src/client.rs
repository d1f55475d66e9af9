//! Clients of both services with the bearer token attached to every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
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

fn endpoint(url: &str) -> Result<Endpoint> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Ok(Endpoint::from_shared(url.clone())
        .map_err(|e| ProtoError::Invalid {
            field: "coordinator",
            reason: format!("{url}: {e}"),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// A user's client; fails at once, naming the address, when nothing answers.
pub async fn connect_jobs(url: &str, token: Option<&str>) -> Result<JobClient> {
    let channel = endpoint(url)?
        .connect()
        .await
        .map_err(|e| ProtoError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(
        JobServiceClient::with_interceptor(channel, BearerToken::new(token)?)
            .max_decoding_message_size(64 << 20),
    )
}

/// A worker's client; connects on first use and again after every failure, so
/// a worker outlives a coordinator restart.
pub fn worker_client(url: &str, token: Option<&str>) -> Result<WorkerClient> {
    let channel = endpoint(url)?.connect_lazy();
    Ok(WorkerServiceClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}

/// A job client that connects lazily, for in-process use.
pub fn job_client_lazy(url: &str, token: Option<&str>) -> Result<JobClient> {
    let channel = endpoint(url)?.connect_lazy();
    Ok(JobServiceClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
