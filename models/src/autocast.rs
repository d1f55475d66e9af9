//! bf16 autocast on CUDA and on CPUs. tch exposes only the legacy, deprecated
//! CUDA switch, whose dtype is fp16 and which logs a warning on every use; libtorch's
//! per-device functions are exported from `libtorch_cpu`, which every binary
//! here links, so they are declared directly. Their arguments are one-byte
//! enums and `bool`, passed like C integers on every platform torch ships.

use tch::Device;

use crate::error::{ModelError, Result};

const DEVICE_TYPE_CPU: i8 = 0;
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
    device_type: i8,
    was_enabled: bool,
}

impl Region {
    fn enter(device_type: i8) -> Self {
        // SAFETY: plain accessors of libtorch's thread-local autocast state
        // (the dtype too: set here, on the thread that runs the region).
        unsafe {
            let was_enabled = at_is_autocast_enabled(device_type);
            at_set_autocast_dtype(device_type, SCALAR_TYPE_BFLOAT16);
            at_set_autocast_enabled(device_type, true);
            at_increment_nesting();
            Self {
                device_type,
                was_enabled,
            }
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
            at_set_autocast_enabled(self.device_type, self.was_enabled);
        }
    }
}

/// Mixed precision for a forward pass: matmuls and convolutions in bf16,
/// reductions and the loss in f32, as `torch.autocast(device,
/// torch.bfloat16)`. On a CPU it pays where the cores have bf16
/// instructions (AVX512-BF16, AMX); elsewhere the casts cost more than the
/// narrower arithmetic saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Autocast {
    /// libtorch's device type, when on.
    device_type: Option<i8>,
}

impl Bf16Autocast {
    /// Off, or on for `device` (CUDA or CPU).
    pub fn new(requested: bool, device: Device) -> Result<Self> {
        if !requested {
            return Ok(Self::off());
        }
        let device_type = match device {
            Device::Cpu => {
                if !cpu_has_bf16() {
                    tracing::warn!(
                        "bf16 autocast on a cpu without bf16 instructions: expect it slower than f32"
                    );
                }
                DEVICE_TYPE_CPU
            }
            Device::Cuda(_) => DEVICE_TYPE_CUDA,
            other => {
                return Err(ModelError::Spec(format!(
                    "bf16 autocast runs on cpu or cuda, not {other:?}; drop --bf16"
                )))
            }
        };
        Ok(Self {
            device_type: Some(device_type),
        })
    }

    pub fn off() -> Self {
        Self { device_type: None }
    }

    pub fn enabled(&self) -> bool {
        self.device_type.is_some()
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(device_type) = self.device_type else {
            return f();
        };
        let _region = Region::enter(device_type);
        f()
    }
}

/// Whether this CPU has bf16 arithmetic (AVX512-BF16; AMX parts have it
/// too), where oneDNN's bf16 kernels beat f32 rather than emulate.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tch::{Kind, Tensor};

    #[test]
    fn off_is_a_no_op_and_other_devices_are_refused() {
        let off = Bf16Autocast::new(false, Device::Cpu).unwrap();
        assert!(!off.enabled());
        assert_eq!(off.run(|| 7), 7);
        let error = Bf16Autocast::new(true, Device::Mps).unwrap_err();
        assert!(error.to_string().contains("Mps"), "{error}");
    }

    #[test]
    fn a_region_switches_cuda_autocast_on_and_back_off() {
        // Only thread-local flags change, so this runs without a GPU.
        let enabled = || unsafe { at_is_autocast_enabled(DEVICE_TYPE_CUDA) };
        assert!(!enabled());
        let on = Bf16Autocast {
            device_type: Some(DEVICE_TYPE_CUDA),
        };
        assert!(on.run(|| on.run(enabled)));
        assert!(!enabled());
    }

    #[test]
    fn on_a_cpu_convolutions_run_in_bf16_and_the_loss_in_f32() {
        let on = Bf16Autocast::new(true, Device::Cpu).unwrap();
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let target = Tensor::from_slice(&[1i64, 3]);
        let (conv, loss) = on.run(|| {
            let conv = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
            let logits = conv.mean_dim(&[2i64, 3][..], false, None::<Kind>);
            let loss =
                logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0);
            (conv, loss)
        });
        assert_eq!(conv.kind(), Kind::BFloat16);
        assert_eq!(loss.kind(), Kind::Float);
        let after = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(
            after.kind(),
            Kind::Float,
            "autocast stays inside the region"
        );
    }
}
