//! The calls a simulated worker makes, through tonic (what
//! `atelier worker` uses) or the lean h2 client (`SIM_CLIENT=tonic|h2`).

use atelier_proto::v1;
use atelier_proto::{worker_client, Connect, WorkerClient};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::lean_client::{LeanClient, LeanStream};

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

    /// Opens the `Work` stream on which `atelier worker` leases and completes.
    pub async fn open_work(&mut self) -> anyhow::Result<SimWork> {
        Ok(match self {
            Self::Tonic(client) => {
                let (calls, queued) = mpsc::channel(1);
                let answers = client.work(ReceiverStream::new(queued)).await?.into_inner();
                SimWork::Tonic { calls, answers }
            }
            Self::Lean(client) => SimWork::Lean(client.open_stream("WorkerService/Work").await?),
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

pub enum SimWork {
    Tonic {
        calls: mpsc::Sender<v1::WorkRequest>,
        answers: tonic::Streaming<v1::WorkResponse>,
    },
    Lean(LeanStream),
}

impl SimWork {
    /// One call on the stream; an error answer becomes an error.
    pub async fn call(
        &mut self,
        call: v1::work_request::Call,
    ) -> anyhow::Result<v1::work_response::Answer> {
        let request = v1::WorkRequest { call: Some(call) };
        let response: v1::WorkResponse = match self {
            Self::Tonic { calls, answers } => {
                calls.send(request).await?;
                answers
                    .message()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the work stream ended"))?
            }
            Self::Lean(stream) => stream.call(&request).await?,
        };
        match response.answer {
            Some(v1::work_response::Answer::Error(error)) => {
                anyhow::bail!("work call refused: {} (code {})", error.message, error.code)
            }
            Some(answer) => Ok(answer),
            None => anyhow::bail!("a work answer without an answer"),
        }
    }
}
