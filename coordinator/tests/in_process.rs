//! A whole coordinator in-process on port 0, driven by hand-made workers:
//! lease expiry and fencing with short intervals, the next lease carried by a
//! completion, the `Work` stream, health and reflection.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use atelier_catalog::{generate, GenerateOptions};
use atelier_catalog::{StoreLocation, WriterOptions};
use atelier_coordinator::{serve, CoordinatorConfig};
use atelier_proto::v1;
use atelier_proto::PROTOCOL_VERSION;
use atelier_proto::{job_client_lazy, worker_client, Connect, WorkerClient};
use tokio::sync::oneshot;

struct Running {
    address: String,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<atelier_coordinator::Result<()>>,
}

impl Running {
    /// Stops the server and checks that it ended cleanly.
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

async fn start(dir: &std::path::Path, config: CoordinatorConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let state = dir.join("state.db");
    let server = tokio::spawn(async move {
        serve(listener, &state, config, async {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        address,
        stop: Some(stop),
        server,
    }
}

fn catalogue(dir: &std::path::Path) -> (String, String) {
    let catalog = dir.join("catalog").to_str().unwrap().to_string();
    let options = GenerateOptions {
        items: 300,
        width: 32,
        height: 40,
        threads: 2,
        writer: WriterOptions {
            rows_per_group: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    generate(
        &options,
        StoreLocation::parse(&catalog).unwrap(),
        runtime.handle(),
        |_| {},
    )
    .unwrap();
    // The coordinator checks only that a checkpoint has a manifest.
    let checkpoint = dir.join("model");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(checkpoint.join("manifest.json"), b"{}").unwrap();
    (catalog, checkpoint.to_str().unwrap().to_string())
}

async fn register(client: &mut WorkerClient) -> String {
    client
        .register(v1::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            hostname: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

async fn lease(client: &mut WorkerClient, worker_id: &str) -> Option<v1::Task> {
    client
        .lease_task(v1::LeaseTaskRequest {
            worker_id: worker_id.to_string(),
            wait_ms: 2000,
        })
        .await
        .unwrap()
        .into_inner()
        .task
}

/// 300 items in row groups of 100: a tag job of three shards.
async fn submit_three_shards(
    address: &str,
    dir: &std::path::Path,
    catalog: String,
    checkpoint: String,
) {
    let mut jobs = job_client_lazy(address, &Connect::default()).unwrap();
    jobs.submit_tag_job(v1::SubmitTagJobRequest {
        catalog,
        checkpoints: vec![checkpoint],
        output: dir.join("out").to_str().unwrap().into(),
        target_shard_rows: Some(100),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_expired_lease_moves_the_shard_and_fences_off_the_old_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, checkpoint) = catalogue(dir.path());
    runtime().block_on(async {
        let config = CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(50),
            lease_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let running = start(dir.path(), config).await;
        let mut jobs = job_client_lazy(&running.address, &Connect::default()).unwrap();
        let job_id = jobs
            .submit_tag_job(v1::SubmitTagJobRequest {
                catalog,
                checkpoints: vec![checkpoint],
                output: dir.path().join("out").to_str().unwrap().into(),
                target_shard_rows: Some(300),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .job_id;

        let mut stalled = worker_client(&running.address, &Connect::default()).unwrap();
        let stalled_id = register(&mut stalled).await;
        let first = lease(&mut stalled, &stalled_id).await.expect("a shard");
        let first_lease = first.lease.clone().unwrap();
        assert_eq!(first_lease.attempt, 1);
        // No heartbeat: after the lease timeout the shard goes to the next worker.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut healthy = worker_client(&running.address, &Connect::default()).unwrap();
        let healthy_id = register(&mut healthy).await;
        let second = lease(&mut healthy, &healthy_id)
            .await
            .expect("the same shard again");
        let second_lease = second.lease.clone().unwrap();
        assert_eq!(second_lease.task_id, first_lease.task_id);
        assert_eq!(second_lease.attempt, 2);

        // The stalled worker wakes up: its reports are refused.
        let refused = stalled
            .complete_task(v1::CompleteTaskRequest {
                worker_id: stalled_id.clone(),
                lease: Some(first_lease.clone()),
                rows_written: 300,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
        let revoked = stalled
            .heartbeat(v1::HeartbeatRequest {
                worker_id: stalled_id,
                leases: vec![first_lease],
            })
            .await;
        // The stalled worker was forgotten or its lease is revoked; either way it must stop.
        match revoked {
            Ok(response) => assert_eq!(response.into_inner().revoked.len(), 1),
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound),
        }

        // The job shows the retry while it runs.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let job = jobs
            .get_job(v1::GetJobRequest { job_id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.state, v1::JobState::Running as i32);
        assert_eq!(job.tag.unwrap().shards_retried, 1);

        running.shutdown().await;
    });
}

#[test]
fn a_completion_can_carry_the_next_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, checkpoint) = catalogue(dir.path());
    runtime().block_on(async {
        let running = start(dir.path(), CoordinatorConfig::default()).await;
        submit_three_shards(&running.address, dir.path(), catalog, checkpoint).await;
        let mut worker = worker_client(&running.address, &Connect::default()).unwrap();
        let worker_id = register(&mut worker).await;
        let mut task = lease(&mut worker, &worker_id).await.expect("a shard");
        let mut seen = Vec::new();
        loop {
            let held = task.lease.clone().unwrap();
            seen.push(held.task_id.clone());
            let answer = worker
                .complete_task(v1::CompleteTaskRequest {
                    worker_id: worker_id.clone(),
                    lease: Some(held),
                    rows_written: 100,
                    lease_next: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            match answer.next {
                Some(next) => task = next,
                None => break,
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "{seen:?}");
        // Every shard went out with a completion; nothing is left to lease.
        assert!(lease(&mut worker, &worker_id).await.is_none());
        running.shutdown().await;
    });
}

/// One call on a `Work` stream.
async fn work_call(
    calls: &tokio::sync::mpsc::Sender<v1::WorkRequest>,
    answers: &mut tonic::Streaming<v1::WorkResponse>,
    call: v1::work_request::Call,
) -> v1::work_response::Answer {
    calls
        .send(v1::WorkRequest { call: Some(call) })
        .await
        .unwrap();
    answers.message().await.unwrap().unwrap().answer.unwrap()
}

#[test]
fn the_work_stream_answers_each_call_in_turn_and_survives_a_refusal() {
    use v1::work_request::Call;
    use v1::work_response::Answer;
    let dir = tempfile::tempdir().unwrap();
    let (catalog, checkpoint) = catalogue(dir.path());
    runtime().block_on(async {
        let running = start(dir.path(), CoordinatorConfig::default()).await;
        submit_three_shards(&running.address, dir.path(), catalog, checkpoint).await;
        let mut worker = worker_client(&running.address, &Connect::default()).unwrap();
        let worker_id = register(&mut worker).await;
        let (calls, queued) = tokio::sync::mpsc::channel(1);
        let mut answers = worker
            .work(tokio_stream::wrappers::ReceiverStream::new(queued))
            .await
            .unwrap()
            .into_inner();
        let lease_request = |worker_id: &str| {
            Call::Lease(v1::LeaseTaskRequest {
                worker_id: worker_id.to_string(),
                wait_ms: 2000,
            })
        };
        let Answer::Lease(first) = work_call(&calls, &mut answers, lease_request(&worker_id)).await
        else {
            panic!("a lease answered with something else");
        };
        let held = first.task.unwrap().lease.unwrap();

        // A completion under a lease that is not held is refused with the
        // unary call's code, and the stream goes on.
        let stale = v1::LeaseRef {
            attempt: held.attempt + 1,
            ..held.clone()
        };
        let complete = |lease: v1::LeaseRef, lease_next: bool| {
            Call::Complete(v1::CompleteTaskRequest {
                worker_id: worker_id.clone(),
                lease: Some(lease),
                rows_written: 100,
                lease_next,
                ..Default::default()
            })
        };
        let Answer::Error(refused) = work_call(&calls, &mut answers, complete(stale, false)).await
        else {
            panic!("a stale completion was accepted");
        };
        assert_eq!(
            tonic::Code::from(refused.code),
            tonic::Code::FailedPrecondition,
            "{}",
            refused.message
        );
        let Answer::Error(unknown) = work_call(&calls, &mut answers, lease_request("nobody")).await
        else {
            panic!("an unknown worker got a lease");
        };
        assert_eq!(tonic::Code::from(unknown.code), tonic::Code::NotFound);

        // The real lease still completes, carrying the next one, on the same stream.
        let mut task_ids = vec![held.task_id.clone()];
        let mut next = Some(held);
        while let Some(lease) = next.take() {
            let Answer::Complete(done) =
                work_call(&calls, &mut answers, complete(lease, true)).await
            else {
                panic!("a completion answered with something else");
            };
            next = done.next.map(|task| task.lease.unwrap());
            task_ids.extend(next.iter().map(|l| l.task_id.clone()));
        }
        task_ids.sort();
        task_ids.dedup();
        assert_eq!(task_ids.len(), 3, "{task_ids:?}");
        drop(calls);
        assert!(answers.message().await.unwrap().is_none());
        running.shutdown().await;
    });
}

#[test]
fn health_and_reflection_answer_generic_clients() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let config = CoordinatorConfig {
            token: Some("s3cret".into()),
            ..Default::default()
        };
        let running = start(dir.path(), config).await;
        let channel = tonic::transport::Endpoint::from_shared(running.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        // Health and reflection need no token, as load balancers and grpcurl expect.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "atelier.v1.JobService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            serving.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel);
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(futures::stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("no service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"atelier.v1.JobService".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"atelier.v1.WorkerService".to_string()),
            "{names:?}"
        );
        running.shutdown().await;
    });
}

#[test]
fn tls_serves_clients_that_trust_the_certificate_and_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem().into_bytes();
    let key_pem = certified.signing_key.serialize_pem().into_bytes();
    runtime().block_on(async {
        let config = CoordinatorConfig {
            tls: Some(atelier_coordinator::TlsIdentity {
                cert_pem: cert_pem.clone(),
                key_pem,
            }),
            ..Default::default()
        };
        let running = start(dir.path(), config).await;
        let port = running.address.rsplit(':').next().unwrap().to_string();
        let https = format!("https://localhost:{port}");
        let trusting = Connect {
            token: None,
            ca_pem: Some(cert_pem),
        };
        let mut jobs = atelier_proto::connect_jobs(&https, &trusting)
            .await
            .unwrap();
        let listed = jobs
            .list_jobs(v1::ListJobsRequest::default())
            .await
            .unwrap();
        assert!(listed.into_inner().jobs.is_empty());
        // Without the certificate the handshake fails; plain HTTP/2 is not served.
        let untrusting = atelier_proto::connect_jobs(&https, &Connect::default()).await;
        if let Ok(mut untrusting) = untrusting {
            let refused = untrusting.list_jobs(v1::ListJobsRequest::default()).await;
            assert!(refused.is_err(), "an unknown certificate was accepted");
        }
        let plain = atelier_proto::connect_jobs(&running.address, &Connect::default()).await;
        if let Ok(mut plain) = plain {
            assert!(plain
                .list_jobs(v1::ListJobsRequest::default())
                .await
                .is_err());
        }
        running.shutdown().await;
    });
}

#[test]
fn a_second_writer_into_a_running_jobs_output_is_refused_and_the_same_job_again_is_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, checkpoint) = catalogue(dir.path());
    runtime().block_on(async {
        let running = start(dir.path(), CoordinatorConfig::default()).await;
        let mut jobs = job_client_lazy(&running.address, &Connect::default()).unwrap();
        let out = dir.path().join("out");
        let request = v1::SubmitTagJobRequest {
            catalog,
            checkpoints: vec![checkpoint],
            output: out.to_str().unwrap().into(),
            target_shard_rows: Some(100),
            ..Default::default()
        };
        let first = jobs
            .submit_tag_job(request.clone())
            .await
            .unwrap()
            .into_inner()
            .job_id;
        // A part the first job has finished, which --overwrite would delete.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("part-00000.parquet"), b"done").unwrap();
        let again = v1::SubmitTagJobRequest {
            output: format!("{}/", out.to_str().unwrap()),
            overwrite: true,
            ..request.clone()
        };
        let refused = jobs.submit_tag_job(again).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
        assert!(refused.message().contains(&first), "{refused:?}");
        assert!(out.join("part-00000.parquet").exists());
        // The same request again (a retried submit) is the first job.
        let retried = jobs.submit_tag_job(request).await.unwrap().into_inner();
        assert_eq!(retried.job_id, first);
        assert!(out.join("part-00000.parquet").exists());
        running.shutdown().await;
    });
}

#[test]
fn a_train_job_submitted_during_a_tag_job_starts_as_its_shards_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, checkpoint) = catalogue(dir.path());
    runtime().block_on(async {
        let running = start(dir.path(), CoordinatorConfig::default()).await;
        let mut jobs = job_client_lazy(&running.address, &Connect::default()).unwrap();
        // 300 items in shards of 10: far more shards than lanes.
        jobs.submit_tag_job(v1::SubmitTagJobRequest {
            catalog: catalog.clone(),
            checkpoints: vec![checkpoint],
            output: dir.path().join("out").to_str().unwrap().into(),
            target_shard_rows: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut lanes = Vec::new();
        for _ in 0..2 {
            let mut client = worker_client(&running.address, &Connect::default()).unwrap();
            let id = register(&mut client).await;
            let task = lease(&mut client, &id).await.expect("a shard");
            lanes.push((client, id, task));
        }
        jobs.submit_train_job(v1::SubmitTrainJobRequest {
            catalog,
            checkpoint: dir.path().join("trained").to_str().unwrap().into(),
            model_type: Some("color".into()),
            world_size: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
        // Each lane finishes its shard and polls for more: the gang gets
        // them, though tag shards are still queued.
        let mut got = Vec::new();
        for (client, id, task) in &mut lanes {
            let answer = client
                .complete_task(v1::CompleteTaskRequest {
                    worker_id: id.clone(),
                    lease: task.lease.clone(),
                    rows_written: 10,
                    lease_next: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                answer.next.is_none(),
                "a lane held for the gang took a shard"
            );
        }
        let polls = lanes.iter_mut().map(|(client, id, _)| {
            let mut client = client.clone();
            let id = id.clone();
            async move { lease(&mut client, &id).await }
        });
        for task in futures::future::join_all(polls).await {
            got.push(task.expect("work for a held lane"));
        }
        let ranks = got
            .iter()
            .filter(|t| matches!(t.work, Some(v1::task::Work::Train(_))))
            .count();
        assert_eq!(ranks, 2, "{got:?}");
        running.shutdown().await;
    });
}

#[test]
fn workers_have_a_credential_of_their_own_that_users_lack() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let config = CoordinatorConfig {
            token: Some("for-users".into()),
            worker_token: Some("for-workers".into()),
            ..CoordinatorConfig::default()
        };
        let running = start(dir.path(), config).await;
        let register_with = |token: &'static str| {
            let address = running.address.clone();
            async move {
                let mut client = worker_client(&address, &Connect::token(Some(token))).unwrap();
                client
                    .register(v1::RegisterRequest {
                        protocol_version: PROTOCOL_VERSION,
                        hostname: "test".into(),
                        ..Default::default()
                    })
                    .await
            }
        };
        let refused = register_with("for-users").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
        assert!(register_with("for-workers").await.is_ok());
        // Nor may a worker's credential submit, list or cancel jobs.
        let list = |token: &'static str| {
            let address = running.address.clone();
            async move {
                let mut jobs = job_client_lazy(&address, &Connect::token(Some(token))).unwrap();
                jobs.list_jobs(v1::ListJobsRequest::default()).await
            }
        };
        let refused = list("for-workers").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
        assert!(list("for-users").await.is_ok());
        running.shutdown().await;
    });
}
