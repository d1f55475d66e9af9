//! The one place where wire messages become domain values and back: job
//! specs, states and progress in `jobs`, what workers and the coordinator say
//! to each other in `worker`.

mod jobs;
mod worker;

pub use jobs::job_state;
pub use worker::{
    commit_checkpoint_request, complete_request, fail_request, gang, lease, progress_request,
    rendezvous_request, rendezvous_response, work_error, work_status,
};

use crate::error::{ProtoError, Result};
use crate::ids::{JobId, WorkerId};

pub(crate) fn required<T>(value: Option<T>, field: &'static str) -> Result<T> {
    value.ok_or(ProtoError::Missing(field))
}

/// A job id from the wire; an empty one is missing.
pub fn job_id(value: String) -> Result<JobId> {
    non_empty(value, "job_id").map(JobId::new)
}

/// A worker id from the wire; an empty one is missing.
pub fn worker_id(value: String) -> Result<WorkerId> {
    non_empty(value, "worker_id").map(WorkerId::new)
}

pub(crate) fn non_empty(value: String, field: &'static str) -> Result<String> {
    if value.trim().is_empty() {
        Err(ProtoError::Missing(field))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
