//! The CUDA runtime binding (atelier-cuda) in a process that has libtorch
//! loaded, as every process using it does.

use atelier_cuda::{set_device, CudaRuntime};

#[test]
fn the_runtime_binds_whole_or_not_at_all_and_never_panics() {
    // The CUDA wheel's libtorch brings libcudart even to a machine without a
    // GPU; a CPU-only libtorch brings none. Asking tch first loads libtorch.
    let devices = tch::Cuda::device_count();
    match CudaRuntime::get() {
        Some(_) if devices == 0 => {
            assert!(
                matches!(set_device(0), Some(Err(_))),
                "no device 0 to select"
            );
        }
        Some(_) => assert_eq!(set_device(0), Some(Ok(()))),
        None => assert_eq!(set_device(0), None),
    }
}
