//! Optimizer steps through libtorch's fused operators (`_fused_sgd_`,
//! `_fused_adam_`, `_fused_adamw_`), what `torch.optim`'s `fused=True`
//! calls: one pass over each parameter on a CPU, a few multi-tensor kernels
//! for all of them on CUDA. Done op by op, an Adam step costs a dozen passes
//! and several temporaries per parameter (ResNet-18, 2 CPU threads: 58 ms
//! against 5 ms fused) and, on a GPU, thousands of kernel launches.
//!
//! tch binds none of the `_fused_*` and `_foreach_*` operators, so their
//! dispatcher entry points are declared directly by mangled name, as
//! `autocast` does with libtorch's own functions. A C++ exception cannot
//! cross into Rust, so everything an operator checks is checked here first,
//! and lists that fail a check are left to the caller's op-by-op rule.

pub mod adam;
pub mod sgd;

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

/// `c10::ArrayRef<at::Tensor>`: a pointer and a length, passed by value
/// (trivially copyable, so the C calling convention applies).
#[repr(C)]
struct TensorList {
    data: *const *mut c_void,
    len: usize,
}

impl TensorList {
    fn of(tensors: &[*mut c_void]) -> Self {
        Self {
            data: tensors.as_ptr(),
            len: tensors.len(),
        }
    }
}

/// `std::optional<at::Tensor>` (libstdc++): the tensor's one pointer, then
/// the engaged flag; only the empty one is ever passed.
#[repr(C)]
struct NoTensor {
    value: *mut c_void,
    engaged: bool,
}

const NO_TENSOR: NoTensor = NoTensor {
    value: std::ptr::null_mut(),
    engaged: false,
};

/// The `at::Tensor`s behind tch tensors, laid out as an array. An
/// `at::Tensor` is one pointer (its `intrusive_ptr<TensorImpl>`); these
/// copies are borrowed, without reference counts, for the length of a call
/// in which the tensors they come from stay alive.
fn at_tensors(tensors: &[&Tensor]) -> Vec<*mut c_void> {
    tensors
        .iter()
        // SAFETY: tch's handle points at a live `at::Tensor`, whose first and
        // only field is the implementation pointer.
        .map(|t| unsafe { *(t.as_ptr() as *const *mut c_void) })
        .collect()
}

/// Whether `sizes`/`strides` cover their elements exactly once with no gaps
/// (contiguous in some order of the dimensions, as channels-last is).
fn dense(sizes: &[i64], strides: &[i64]) -> bool {
    let mut dims: Vec<(i64, i64)> = sizes
        .iter()
        .zip(strides)
        .filter(|(&size, _)| size != 1)
        .map(|(&size, &stride)| (stride, size))
        .collect();
    dims.sort_unstable();
    let mut expected = 1;
    for (stride, size) in dims {
        if stride != expected {
            return false;
        }
        expected *= size;
    }
    true
}

/// What the fused operators require of their tensor lists (on CUDA,
/// `check_fast_path_restrictions`; the CPU kernels walk each tensor's memory
/// as one flat array): equally long lists, one device and float kind for
/// all, and each parameter's companions (gradient, optimizer state) laid out
/// exactly as it is, densely.
fn fusable(params: &[&Tensor], companions: &[&[&Tensor]]) -> bool {
    let Some(first) = params.first() else {
        return false;
    };
    let (device, kind) = (first.device(), first.kind());
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
    ) || !matches!(device, Device::Cpu | Device::Cuda(_))
        || companions.iter().any(|list| list.len() != params.len())
    {
        return false;
    }
    params.iter().enumerate().all(|(i, p)| {
        let (sizes, strides) = (p.size(), p.stride());
        std::iter::once(*p)
            .chain(companions.iter().map(|list| list[i]))
            .all(|t| {
                t.defined()
                    && t.device() == device
                    && t.kind() == kind
                    && t.size() == sizes
                    && t.stride() == strides
            })
            && dense(&sizes, &strides)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_is_contiguity_in_some_order_of_the_dimensions() {
        assert!(dense(&[2, 3], &[3, 1]));
        assert!(dense(&[2, 3, 4, 5], &[60, 1, 15, 3]));
        assert!(dense(&[1, 3], &[7, 1]));
        assert!(!dense(&[4], &[2]));
        assert!(!dense(&[2, 2], &[1, 1]));
    }

    #[test]
    fn companions_must_match_their_parameter() {
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let same = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let wrong_shape = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let wrong_kind = Tensor::ones([4], (Kind::Double, Device::Cpu));
        assert!(fusable(&[&p], &[&[&same], &[&same]]));
        assert!(!fusable(&[&p], &[&[&same], &[&wrong_shape]]));
        assert!(!fusable(&[&p], &[&[&wrong_kind]]));
        assert!(!fusable(&[&p], &[&[&same], &[]]));
        assert!(!fusable(&[], &[]));
        let ints = Tensor::ones([4], (Kind::Int64, Device::Cpu));
        assert!(!fusable(&[&ints], &[&[&ints]]));
    }
}
