//! Checkpoint commits of a gang's rank 0: the coordinator writes a step's
//! manifest only while the rank holds its lease, and holds the checkpoint's
//! place while it does, so a rank that lost its lease cannot change the
//! checkpoint and no submit can empty the place under a commit in flight.

use atelier_proto::{JobId, JobSpec, LeaseRef, TaskWork, WorkerId};

use super::{Now, State};
use crate::error::{CoordinatorError, Result};

/// One commit between its start and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointCommit {
    pub id: u64,
    pub job_id: JobId,
    /// The checkpoint prefix the manifest goes to.
    pub checkpoint: String,
}

impl State {
    /// Lets rank 0 holding `lease` commit a step now, and holds its
    /// checkpoint until [`State::end_checkpoint_commit`]. Refused as a stale
    /// lease once the lease was lost, and for any other rank.
    pub fn begin_checkpoint_commit(
        &mut self,
        worker_id: &WorkerId,
        lease: &LeaseRef,
        now: Now,
    ) -> Result<CheckpointCommit> {
        self.see_worker(worker_id, now)?;
        // The lease is the fence, as for every report: a worker registers
        // under a new id after a coordinator restart and keeps its leases.
        let task = self.check_lease(lease)?;
        let TaskWork::Train { rank: 0, .. } = task.work else {
            return Err(CoordinatorError::InvalidArgument(format!(
                "task {} is not rank 0 of a train job: only rank 0 commits checkpoints",
                lease.task_id
            )));
        };
        let job_id = task.job_id.clone();
        let Some(JobSpec::Train(spec)) = self.jobs.get(&job_id).map(|job| &job.spec) else {
            return Err(CoordinatorError::Internal(format!(
                "train task {} without its train job",
                lease.task_id
            )));
        };
        let commit = CheckpointCommit {
            id: self.next_checkpoint_commit,
            job_id,
            checkpoint: spec.checkpoint.clone(),
        };
        self.next_checkpoint_commit += 1;
        self.checkpoint_commits.insert(commit.id, commit.clone());
        Ok(commit)
    }

    pub fn end_checkpoint_commit(&mut self, commit: &CheckpointCommit) {
        self.checkpoint_commits.remove(&commit.id);
    }

    /// A commit in flight into `url` or a prefix around or inside it.
    pub(super) fn commit_in_flight(&self, url: &str) -> Option<&CheckpointCommit> {
        self.checkpoint_commits
            .values()
            .find(|commit| super::places_overlap(&commit.checkpoint, url))
    }
}
