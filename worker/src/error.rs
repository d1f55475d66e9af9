use atelier_catalog::CatalogError;
use atelier_models::ModelError;
use atelier_pipeline::PipelineError;
use atelier_proto::FailureKind;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The job's input cannot work, wherever it runs (a catalogue without
    /// the labels to learn, a model without the head asked for, a loss
    /// that diverged): report it and give up.
    #[error("{0}")]
    BadInput(String),
    /// This machine or process failed the task (a thread gone, a socket
    /// that would not bind): another attempt, here or elsewhere, may work.
    #[error("{0}")]
    Internal(String),
    /// The task panicked: a fault in atelier, retried in case it depends
    /// on the machine, and reported as the bug it is.
    #[error("the task panicked: {0}")]
    Panicked(String),
    #[error("cancelled")]
    Cancelled,
    #[error("coordinator: {}", atelier_proto::one_line(.0))]
    Coordinator(#[from] tonic::Status),
    #[error(transparent)]
    Protocol(#[from] atelier_proto::ProtoError),
    #[error("collective: {0}")]
    Collective(#[from] atelier_collective::CollectiveError),
    /// The compute thread showed no sign of life for the stall timeout: it
    /// is stuck in a read or a device call that no cancel reaches. The lane
    /// gives its lease up and the worker stops, for its supervisor to start
    /// it afresh.
    #[error(
        "the compute thread showed no sign of life for {silent:?} (--stall-timeout-s): stuck in \
         a read or a device call; this worker stops so that a fresh one takes its place"
    )]
    Stalled { silent: std::time::Duration },
    /// The GPU failed work already queued on it (a CUDA error).
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Catalog(e) => e.is_retryable(),
            WorkerError::Pipeline(e) => e.is_retryable(),
            WorkerError::Model(e) => e.is_retryable(),
            WorkerError::Coordinator(status) => matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
            ),
            WorkerError::Protocol(e) => e.is_retryable(),
            WorkerError::Collective(e) => e.is_retryable(),
            // Another worker's GPU, or this one after a restart, may do it:
            // a libtorch failure (out of memory, a sticky CUDA error) is the
            // machine's, and a lane that keeps failing is quarantined.
            WorkerError::Torch(_)
            | WorkerError::Stalled { .. }
            | WorkerError::Device(_)
            | WorkerError::Internal(_)
            | WorkerError::Panicked(_) => true,
            _ => false,
        }
    }

    /// How the coordinator should count this failure.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            WorkerError::Collective(e) if e.is_peer_lost() => FailureKind::PeerLost,
            e if e.is_retryable() => FailureKind::Retryable,
            _ => FailureKind::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_given_up_while_a_failing_machine_or_a_panic_is_retried() {
        assert!(!WorkerError::BadInput("no colour labels".into()).is_retryable());
        assert!(!WorkerError::InvalidOptions("--lr".into()).is_retryable());
        assert!(WorkerError::Internal("the compute thread stopped".into()).is_retryable());
        let panic = WorkerError::Panicked("index out of bounds".into());
        assert!(panic.is_retryable());
        let out_of_memory =
            tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB".into());
        assert!(WorkerError::Torch(out_of_memory).is_retryable());
        assert_eq!(panic.to_string(), "the task panicked: index out of bounds");
    }

    #[test]
    fn a_rank_that_lost_its_peer_says_so_and_a_bad_input_stays_permanent() {
        let peer = atelier_collective::CollectiveError::Peer {
            op: "all-reduce",
            peer: 1,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        assert_eq!(
            WorkerError::Collective(peer).failure_kind(),
            FailureKind::PeerLost
        );
        let mismatch = atelier_collective::CollectiveError::Mismatch {
            op: "all-reduce",
            peer: 1,
            detail: "step 3 against 4".into(),
        };
        assert_eq!(
            WorkerError::Collective(mismatch).failure_kind(),
            FailureKind::Retryable
        );
        assert_eq!(
            WorkerError::BadInput("no colour labels".into()).failure_kind(),
            FailureKind::Permanent
        );
    }
}
