//! New names for jobs and workers. They are drawn here, outside the state
//! machine, and passed into it, so that its transitions stay deterministic.

use atelier_proto::{JobId, WorkerId};

/// A job id that sorts by submission time: `job-` then the submission's
/// unix milliseconds and a random tail in hex.
pub fn new_job_id(unix_ms: i64) -> JobId {
    JobId::new(format!("job-{unix_ms:x}{:04x}", rand::random::<u16>()))
}

/// A worker lane's id: its host name and a random tail, so that an id from
/// before a coordinator restart never names a new worker.
pub fn new_worker_id(hostname: &str) -> WorkerId {
    let host = if hostname.is_empty() {
        "worker"
    } else {
        hostname
    };
    WorkerId::new(format!("{host}-{:08x}", rand::random::<u32>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_origin_and_differ_between_draws() {
        let job = new_job_id(0x18c_0000_0000);
        assert!(job.as_str().starts_with("job-18c00000000"), "{job}");
        assert_ne!(new_worker_id("gpu-7"), new_worker_id("gpu-7"));
        assert!(new_worker_id("").as_str().starts_with("worker-"));
    }
}
