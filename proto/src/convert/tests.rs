use super::*;
use crate::domain::*;
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
            ranges: vec![FileRowGroups {
                file: "file:///c/part-00000.parquet".into(),
                row_groups: vec![2, 3],
                rows: Some(100..612),
            }],
            checkpoints: vec!["file:///ck".into()],
            output: "file:///o/part-00003.parquet".into(),
            inference: InferenceSettings {
                batch_size: 32,
                beams: 1,
                bf16: true,
                channels_last: false,
                gpu_decode: true,
            },
            rows: 100,
        }),
    };
    let back = Assignment::try_from(v1::Task::from(assignment.clone())).unwrap();
    assert_eq!(back, assignment);
}
