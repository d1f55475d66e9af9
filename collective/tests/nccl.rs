//! NCCL without a GPU: the library loads (or is reported missing) and joining
//! a communicator fails with an error; nothing panics.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use atelier_collective::{CollectiveError, NcclCollective, NcclLibrary, NcclUniqueId};

#[test]
fn nccl_loads_from_the_torch_wheel_or_says_why_not() {
    match NcclLibrary::load() {
        Ok(library) => {
            let version = library.version().unwrap();
            assert!(version >= 20_000, "NCCL version {version}");
            println!("NCCL {version} from {}", library.path());
        }
        Err(error) => {
            assert!(matches!(error, CollectiveError::NcclUnavailable(_)));
            assert!(error.to_string().contains("libnccl.so.2"), "{error}");
        }
    }
}

#[test]
fn a_communicator_without_a_gpu_is_an_error() {
    if tch::Cuda::is_available() {
        return; // Covered by bench/gpu/ddp.sh on GPU machines.
    }
    let Ok(library) = NcclLibrary::load() else {
        return;
    };
    let id = library
        .unique_id()
        .unwrap_or(NcclUniqueId::from_bytes(&[0; 128]).unwrap());
    let error = NcclCollective::new(library, id, 0, 1, 0, Duration::from_secs(20)).unwrap_err();
    println!("{error}");
    assert!(!error.to_string().is_empty());
}

#[test]
fn unique_ids_round_trip_through_bytes() {
    let bytes: Vec<u8> = (0..128).map(|i| i as u8).collect();
    let id = NcclUniqueId::from_bytes(&bytes).unwrap();
    assert_eq!(id.to_bytes(), bytes);
    assert!(NcclUniqueId::from_bytes(&bytes[..5]).is_err());
}
