use std::time::Duration;

/// Why a collective failed. A dead or silent peer is retryable: the
/// coordinator restarts the whole gang from its last checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("{op} with rank {peer}: {source}")]
    Peer {
        op: &'static str,
        peer: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: rank {peer} did not answer within {after:?}")]
    Timeout {
        op: &'static str,
        peer: usize,
        after: Duration,
    },
    #[error("{op}: rank {peer} is out of step: {detail}")]
    Mismatch {
        op: &'static str,
        peer: usize,
        detail: String,
    },
    #[error("{call} failed: {message} (ncclResult {code})")]
    Nccl {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("NCCL is not available: {0}")]
    NcclUnavailable(String),
    #[error("invalid tensor for {op}: {detail}")]
    InvalidTensor { op: &'static str, detail: String },
    #[error("invalid collective setup: {0}")]
    Setup(String),
}

impl CollectiveError {
    /// A restart on the same or other machines may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Peer { .. }
                | Self::Timeout { .. }
                | Self::Mismatch { .. }
                | Self::Nccl { .. }
                | Self::Setup(_)
        )
    }

    /// A peer went away or went silent: its worker is the one that failed
    /// (preempted, killed, cut off), not this rank.
    pub fn is_peer_lost(&self) -> bool {
        matches!(self, Self::Peer { .. } | Self::Timeout { .. })
    }

    pub(crate) fn io(op: &'static str, peer: usize, timeout: Duration, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Self::Timeout {
                op,
                peer,
                after: timeout,
            },
            _ => Self::Peer {
                op,
                peer,
                source: e,
            },
        }
    }
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;
