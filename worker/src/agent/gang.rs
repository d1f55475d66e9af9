//! Joining a train job's gang: every rank binds a ring listener and offers
//! its address through the coordinator's rendezvous (rank 0 of a CUDA gang
//! also offers an NCCL id); once all ranks have offered, each builds the
//! collective the gang agreed on.

use std::time::{Duration, Instant};

use atelier_collective::{
    Collective, NcclCollective, NcclLibrary, NcclUniqueId, RingCollective, RingOptions, RingSecret,
    SingleRank,
};
use atelier_proto::{Gang, RendezvousOffer};
use tch::Device;

use crate::error::{Result, WorkerError};

/// Offers this rank to the gang; `Ok(None)` while some rank has not offered yet.
pub type Rendezvous = dyn Fn(RendezvousOffer) -> Result<Option<Gang>> + Send + Sync;

/// Has the coordinator make a checkpoint manifest that rank 0 staged the
/// checkpoint; refused once the rank's lease is lost.
pub type CommitCheckpoint = dyn Fn(bytes::Bytes) -> Result<()> + Send + Sync;

/// How long the ranks of a gang may take to all reach the rendezvous.
const GATHER_TIMEOUT: Duration = Duration::from_secs(300);

/// NCCL for CUDA ranks when the library loads, unless `ATELIER_COLLECTIVE=ring`.
fn wants_nccl(device: Device) -> Option<std::sync::Arc<NcclLibrary>> {
    if !device.is_cuda() || std::env::var("ATELIER_COLLECTIVE").as_deref() == Ok("ring") {
        return None;
    }
    match NcclLibrary::load() {
        Ok(library) => Some(library),
        Err(e) => {
            tracing::warn!(error = %e, "nccl unavailable; cuda ranks use the tcp ring");
            None
        }
    }
}

/// Whether the ring all-reduces buckets while backward runs: by default when
/// some peer is on another host, where the ring waits on the network (1.21x
/// images/s on a 1 Gbit/s link) rather than taking cores from backward, which
/// is what it does among ranks of one machine (0.92x there; BENCHMARKS.md).
/// `ATELIER_RING_OVERLAP=1` or `0` decides instead.
fn ring_overlap(setting: Option<&str>, peers: &[String], own_host: &str) -> bool {
    match setting {
        Some("1") => true,
        Some("0") => false,
        _ => peers.iter().any(|peer| {
            let host = peer
                .rsplit_once(':')
                .map_or(peer.as_str(), |(host, _)| host);
            host != own_host
        }),
    }
}

/// One rank alone needs no collective, except that `ATELIER_COLLECTIVE=nccl`
/// on a CUDA worker runs NCCL anyway, to check it on a one-GPU machine.
fn single(device: Device, timeout: Duration) -> Result<Box<dyn Collective>> {
    let forced = std::env::var("ATELIER_COLLECTIVE").as_deref() == Ok("nccl");
    let (true, Device::Cuda(index)) = (forced, device) else {
        return Ok(Box::new(SingleRank));
    };
    let library = NcclLibrary::load()?;
    let id = library.unique_id()?;
    tracing::info!(
        version = library.version()?,
        "nccl forced for a world of one"
    );
    Ok(Box::new(NcclCollective::new(
        library, id, 0, 1, index, timeout,
    )?))
}

pub fn join_gang(
    rank: usize,
    world: usize,
    device_name: &str,
    advertise_host: &str,
    rendezvous: &Rendezvous,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Box<dyn Collective>> {
    let device = crate::device::parse_device(device_name)?;
    if world == 1 {
        return single(device, timeout);
    }
    let nccl = wants_nccl(device);
    let listener = RingCollective::bind("0.0.0.0")?;
    let port = listener
        .local_addr()
        .map_err(|e| WorkerError::Internal(format!("ring listener address: {e}")))?
        .port();
    let nccl_unique_id = match (&nccl, rank) {
        (Some(library), 0) => library.unique_id()?.to_bytes(),
        _ => Vec::new(),
    };
    let offer = RendezvousOffer {
        address: format!("{advertise_host}:{port}"),
        nccl_unique_id,
    };
    let deadline = Instant::now() + GATHER_TIMEOUT;
    let gang = loop {
        if stop() {
            return Err(WorkerError::Cancelled);
        }
        match rendezvous(offer.clone()) {
            Ok(Some(gang)) => break gang,
            Ok(None) => {}
            // The coordinator may be restarting; its state survives.
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "rendezvous not answered; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(WorkerError::Collective(
                atelier_collective::CollectiveError::Setup(format!(
                    "not every rank of the gang reached the rendezvous within {GATHER_TIMEOUT:?}"
                )),
            ));
        }
    };
    tracing::info!(
        rank,
        world,
        session = gang.session,
        nccl = !gang.nccl_unique_id.is_empty(),
        "gang assembled"
    );
    if gang.nccl_unique_id.is_empty() {
        let options = RingOptions {
            timeout,
            session: gang.session,
            secret: RingSecret(gang.ring_secret.0),
            overlap_backward: ring_overlap(
                std::env::var("ATELIER_RING_OVERLAP").ok().as_deref(),
                &gang.peer_addresses,
                advertise_host,
            ),
            ..RingOptions::default()
        };
        return Ok(Box::new(RingCollective::connect(
            rank,
            listener,
            &gang.peer_addresses,
            options,
        )?));
    }
    let (Some(library), Device::Cuda(index)) = (nccl, device) else {
        return Err(WorkerError::Collective(
            atelier_collective::CollectiveError::Setup(format!(
                "rank 0 chose NCCL but this rank runs on {device_name}; a gang's ranks must all be CUDA ranks with NCCL, or set ATELIER_COLLECTIVE=ring on every worker"
            )),
        ));
    };
    let id = NcclUniqueId::from_bytes(&gang.nccl_unique_id)?;
    Ok(Box::new(NcclCollective::new(
        library, id, rank, world, index, timeout,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_overlaps_backward_when_a_peer_is_on_another_host() {
        let peers =
            |hosts: &[&str]| -> Vec<String> { hosts.iter().map(|h| format!("{h}:4000")).collect() };
        let one_machine = peers(&["10.0.0.1", "10.0.0.1"]);
        let two_machines = peers(&["10.0.0.1", "10.0.0.2"]);
        assert!(!ring_overlap(None, &one_machine, "10.0.0.1"));
        assert!(ring_overlap(None, &two_machines, "10.0.0.1"));
        assert!(ring_overlap(Some("1"), &one_machine, "10.0.0.1"));
        assert!(!ring_overlap(Some("0"), &two_machines, "10.0.0.1"));
        // IPv6 peers keep their colons before the port's.
        assert!(!ring_overlap(None, &peers(&["[::1]", "[::1]"]), "[::1]"));
    }
}
