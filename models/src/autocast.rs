//! bf16 autocast on CUDA. tch exposes only the legacy, deprecated switch,
//! whose dtype is fp16 and which logs a warning on every use; libtorch's
//! per-device functions are exported from `libtorch_cpu`, which every binary
//! here links, so they are declared directly. Their arguments are one-byte
//! enums and `bool`, passed like C integers on every platform torch ships.

use tch::Device;

use crate::error::{ModelError, Result};

const DEVICE_TYPE_CUDA: i8 = 1;
const SCALAR_TYPE_BFLOAT16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn at_increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn at_decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_clear_cache();
}

/// Restores the previous state when dropped, so a panic inside the region
/// cannot leave autocast on for the thread.
struct Region {
    was_enabled: bool,
}

impl Region {
    fn enter() -> Self {
        // SAFETY: plain accessors of libtorch's thread-local autocast state.
        unsafe {
            let was_enabled = at_is_autocast_enabled(DEVICE_TYPE_CUDA);
            at_set_autocast_enabled(DEVICE_TYPE_CUDA, true);
            at_increment_nesting();
            Self { was_enabled }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; the cast-weight cache is dropped when the
        // outermost region ends, as `torch.autocast.__exit__` does.
        unsafe {
            if at_decrement_nesting() == 0 {
                at_clear_cache();
            }
            at_set_autocast_enabled(DEVICE_TYPE_CUDA, self.was_enabled);
        }
    }
}

/// Mixed precision for a forward pass: matmuls and convolutions in bf16,
/// reductions and the loss in f32, as `torch.autocast("cuda", torch.bfloat16)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Autocast {
    enabled: bool,
}

impl Bf16Autocast {
    /// Off, or on for a CUDA device; bf16 autocast on a CPU is refused
    /// because libtorch's legacy switch only reaches CUDA.
    pub fn new(requested: bool, device: Device) -> Result<Self> {
        if requested && !device.is_cuda() {
            return Err(ModelError::Spec(
                "bf16 autocast needs a CUDA device; drop --bf16 on cpu".into(),
            ));
        }
        if requested {
            // SAFETY: a plain setter on libtorch's thread-local autocast state.
            unsafe { at_set_autocast_dtype(DEVICE_TYPE_CUDA, SCALAR_TYPE_BFLOAT16) };
        }
        Ok(Self { enabled: requested })
    }

    pub fn off() -> Self {
        Self { enabled: false }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.enabled {
            return f();
        }
        let _region = Region::enter();
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_on_cpu_and_a_no_op_when_off() {
        assert!(Bf16Autocast::new(true, Device::Cpu).is_err());
        let off = Bf16Autocast::new(false, Device::Cpu).unwrap();
        assert!(!off.enabled());
        assert_eq!(off.run(|| 7), 7);
    }

    #[test]
    fn a_region_switches_cuda_autocast_on_and_back_off() {
        // Only thread-local flags change, so this runs without a GPU.
        unsafe { at_set_autocast_dtype(DEVICE_TYPE_CUDA, SCALAR_TYPE_BFLOAT16) };
        let enabled = || unsafe { at_is_autocast_enabled(DEVICE_TYPE_CUDA) };
        assert!(!enabled());
        let on = Bf16Autocast { enabled: true };
        assert!(on.run(|| on.run(enabled)));
        assert!(!enabled());
    }
}
