//! Where a shard's attempt writes, and where its part is committed.
//!
//! A worker never writes a part's final name. Each attempt writes an object
//! of its own under the output's `_attempts/<job>/` prefix; the coordinator,
//! once the job can no longer be cancelled, renames the attempt that
//! completed under a live lease to `part-NNNNN.parquet`. So a worker that
//! lost its lease (cut off, paused, or its job cancelled) and writes late
//! leaves an object nobody reads, and never changes a committed part or
//! another job's output. Readers of `*.parquet` under the output, and of
//! the manifest, never see `_attempts/`: its name starts with `_`.

use crate::ids::JobId;

/// The prefix, under a tag job's output, that its attempts write to.
pub const STAGING_DIR: &str = "_attempts";

/// The staging prefix of `job_id` under the output URL `output`.
pub fn staging_prefix(output: &str, job_id: &JobId) -> String {
    format!("{}/{STAGING_DIR}/{job_id}", output.trim_end_matches('/'))
}

/// The object that attempt `attempt` of `job_id`'s shard writes, for the
/// part whose final URL is `part` (`<output>/part-00007.parquet` becomes
/// `<output>/_attempts/<job>/part-00007.attempt-3.parquet`).
pub fn staged_part(part: &str, job_id: &JobId, attempt: u32) -> String {
    let (output, name) = part.rsplit_once('/').unwrap_or(("", part));
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    format!(
        "{}/{stem}.attempt-{attempt}.parquet",
        staging_prefix(output, job_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_of_each_job_writes_its_own_object_beside_the_parts() {
        let job = JobId::from("job-7");
        let part = "s3://shop/tags/part-00007.parquet";
        assert_eq!(
            staged_part(part, &job, 3),
            "s3://shop/tags/_attempts/job-7/part-00007.attempt-3.parquet"
        );
        assert_ne!(staged_part(part, &job, 3), staged_part(part, &job, 4));
        assert_ne!(
            staged_part(part, &job, 3),
            staged_part(part, &JobId::from("job-8"), 3)
        );
        assert_eq!(
            staging_prefix("s3://shop/tags/", &job),
            "s3://shop/tags/_attempts/job-7"
        );
    }
}
