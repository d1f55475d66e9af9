use super::*;
use crate::domain::*;
use crate::options::{
    Arch, CatalogColumns, EmbeddingPrecision, FetchOptions, Framing, GangOptions, InferenceOptions,
    Label, ScheduleKind, Task, TrainOptions,
};
use crate::v1;

#[test]
fn a_refused_work_call_keeps_its_code_and_message() {
    let status = tonic::Status::failed_precondition("lease t/1 attempt 2 is no longer held");
    let v1::work_response::Answer::Error(error) = work_error(&status) else {
        panic!("not an error answer");
    };
    let back = work_status(error);
    assert_eq!(back.code(), tonic::Code::FailedPrecondition);
    assert_eq!(back.message(), status.message());
}

#[test]
fn a_job_survives_the_round_trip() {
    let job = JobStatus {
        id: "job-1".into(),
        kind: JobKind::Tag,
        state: JobState::Running,
        created_unix_ms: 1,
        updated_unix_ms: 2,
        error: None,
        description: "tag".into(),
        tag: Some(TagProgress {
            items_total: 10,
            items_done: 4,
            shards_total: 2,
            ..Default::default()
        }),
        train: None,
        stages: StageTimes::default(),
        metrics: [("accuracy".to_string(), 0.5)].into(),
    };
    let back = JobStatus::try_from(v1::Job::from(job.clone())).unwrap();
    assert_eq!(back, job);
}

#[test]
fn a_tag_submission_without_checkpoints_is_refused() {
    let request = v1::SubmitTagJobRequest {
        catalog: "file:///c".into(),
        output: "file:///o".into(),
        ..Default::default()
    };
    let error = TagJobSpec::try_from(request).unwrap_err();
    assert!(error.to_string().contains("checkpoints"), "{error}");
}

#[test]
fn an_assignment_survives_the_round_trip() {
    let assignment = Assignment {
        lease: LeaseRef {
            task_id: "job-1/00003".into(),
            attempt: 2,
        },
        job_id: "job-1".into(),
        work: TaskWork::Tag(ShardWork {
            catalog: "file:///c".into(),
            columns: Default::default(),
            ranges: vec![FileRowGroups {
                file: "file:///c/part-00000.parquet".into(),
                row_groups: vec![2, 3],
                rows: Some(100..612),
            }],
            checkpoints: vec!["file:///ck".into()],
            output: "file:///o/part-00003.parquet".into(),
            inference: InferenceOptions {
                batch_size: 32,
                beams: 1,
                bf16: true,
                channels_last: false,
                gpu_decode: true,
                embeddings: Some(EmbeddingPrecision::Float16),
                fetch: FetchOptions {
                    max_image_bytes: 1 << 20,
                    fetch_per_host: 3,
                },
            },
            rows: 100,
        }),
    };
    let back = Assignment::try_from(v1::Task::from(assignment.clone())).unwrap();
    assert_eq!(back, assignment);
}

fn train_spec() -> TrainJobSpec {
    TrainJobSpec {
        catalog: "file:///c".into(),
        columns: CatalogColumns {
            id: "sku".into(),
            image_uri: "link".into(),
            labels: vec!["color=baseColour".parse().unwrap()],
            ..CatalogColumns::default()
        },
        checkpoint: "file:///k".into(),
        options: TrainOptions {
            task: Task::Color,
            framing: Framing::Squash,
            arch: Arch::Resnet18,
            schedule: ScheduleKind::Step,
            max_steps: Some(40),
            backbone_weights: Some("/w.safetensors".into()),
            ..TrainOptions::default()
        },
        gang: GangOptions {
            world_size: 4,
            ranks_per_worker: Some(2),
            ..GangOptions::default()
        },
    }
}

#[test]
fn a_train_spec_and_a_train_rank_survive_the_round_trip() {
    let spec = train_spec();
    let back = TrainJobSpec::try_from(v1::SubmitTrainJobRequest::from(spec.clone())).unwrap();
    assert_eq!(back, spec);
    let assignment = Assignment {
        lease: LeaseRef {
            task_id: "job-1/00003".into(),
            attempt: 1,
        },
        job_id: "job-1".into(),
        work: TaskWork::Train { spec, rank: 3 },
    };
    let back = Assignment::try_from(v1::Task::from(assignment.clone())).unwrap();
    assert_eq!(back, assignment);
}

#[test]
fn absent_train_options_take_the_recipe() {
    let request = v1::SubmitTrainJobRequest {
        catalog: "file:///c".into(),
        checkpoint: "file:///k".into(),
        ..Default::default()
    };
    let spec = TrainJobSpec::try_from(request).unwrap();
    assert_eq!(spec.options, TrainOptions::RECIPE);
    assert_eq!(spec.gang, GangOptions::DEFAULT);
    assert_eq!(spec.columns, CatalogColumns::default());
}

#[test]
fn a_train_submission_with_an_unknown_name_or_a_bad_value_is_refused() {
    let with = |change: fn(&mut v1::SubmitTrainJobRequest)| {
        let mut request = v1::SubmitTrainJobRequest::from(train_spec());
        change(&mut request);
        TrainJobSpec::try_from(request).unwrap_err().to_string()
    };
    let error = with(|r| r.optimizer = Some("lion".into()));
    assert!(
        error.contains("optimizer") && error.contains("lion") && error.contains("adamw"),
        "{error}"
    );
    let error = with(|r| r.arch = Some("vgg16".into()));
    assert!(
        error.contains("vgg16") && error.contains("resnet50"),
        "{error}"
    );
    let error = with(|r| r.lr = Some(-1.0));
    assert!(error.contains("--lr"), "{error}");
    let error = with(|r| r.world_size = Some(3));
    assert!(error.contains("multiple"), "{error}");
}

#[test]
fn a_train_rank_outside_its_world_is_refused() {
    let mut task = v1::Task::from(Assignment {
        lease: LeaseRef {
            task_id: "job-1/00000".into(),
            attempt: 1,
        },
        job_id: "job-1".into(),
        work: TaskWork::Train {
            spec: train_spec(),
            rank: 0,
        },
    });
    if let Some(v1::task::Work::Train(rank)) = &mut task.work {
        rank.rank = 4;
    }
    let error = Assignment::try_from(task).unwrap_err().to_string();
    assert!(error.contains("rank 4 of a world of 4"), "{error}");
}

#[test]
fn a_column_mapping_naming_an_unknown_label_or_one_column_twice_is_refused_at_submit() {
    let request = |labels: &[(&str, &str)], id: &str| v1::SubmitTagJobRequest {
        catalog: "file:///c".into(),
        checkpoints: vec!["file:///k".into()],
        output: "file:///o".into(),
        columns: Some(v1::CatalogColumns {
            id: Some(id.into()),
            labels: labels
                .iter()
                .map(|(l, c)| (l.to_string(), c.to_string()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ok = TagJobSpec::try_from(request(&[("color", "baseColour")], "sku")).unwrap();
    assert_eq!(ok.columns.id, "sku");
    assert_eq!(ok.columns.label(Label::Color), "baseColour");
    let error = TagJobSpec::try_from(request(&[("colour", "baseColour")], "sku"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"colour\" is not a label"), "{error}");
    let error = TagJobSpec::try_from(request(&[], "image_uri"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"image_uri\""), "{error}");
}
