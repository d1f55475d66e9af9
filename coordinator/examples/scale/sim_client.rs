//! The calls a simulated worker makes, through tonic (what
//! `atelier worker` uses) or the lean h2 client (`SIM_CLIENT=tonic|h2`).

use atelier_proto::client::{worker_client, Connect, WorkerClient};
use atelier_proto::v1;

use crate::lean_client::LeanClient;

#[derive(Clone)]
pub enum SimClient {
    Tonic(WorkerClient),
    Lean(LeanClient),
}

impl SimClient {
    pub async fn connect(address: &str, lean: bool) -> anyhow::Result<Self> {
        Ok(if lean {
            Self::Lean(LeanClient::connect(address).await?)
        } else {
            Self::Tonic(worker_client(address, &Connect::default())?)
        })
    }

    pub async fn register(
        &mut self,
        request: v1::RegisterRequest,
    ) -> anyhow::Result<v1::RegisterResponse> {
        Ok(match self {
            Self::Tonic(client) => client.register(request).await?.into_inner(),
            Self::Lean(client) => client.call("WorkerService/Register", &request).await?,
        })
    }

    pub async fn heartbeat(
        &mut self,
        request: v1::HeartbeatRequest,
    ) -> anyhow::Result<v1::HeartbeatResponse> {
        Ok(match self {
            Self::Tonic(client) => client.heartbeat(request).await?.into_inner(),
            Self::Lean(client) => client.call("WorkerService/Heartbeat", &request).await?,
        })
    }

    pub async fn lease_task(
        &mut self,
        request: v1::LeaseTaskRequest,
    ) -> anyhow::Result<v1::LeaseTaskResponse> {
        Ok(match self {
            Self::Tonic(client) => client.lease_task(request).await?.into_inner(),
            Self::Lean(client) => client.call("WorkerService/LeaseTask", &request).await?,
        })
    }

    pub async fn complete_task(
        &mut self,
        request: v1::CompleteTaskRequest,
    ) -> anyhow::Result<v1::CompleteTaskResponse> {
        Ok(match self {
            Self::Tonic(client) => client.complete_task(request).await?.into_inner(),
            Self::Lean(client) => client.call("WorkerService/CompleteTask", &request).await?,
        })
    }
}
