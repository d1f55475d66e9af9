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

/// Whether two tensors of `sizes` lie in memory alike: equal strides
/// wherever a dimension has more than one element (a size-1 dimension's
/// stride never moves an offset). Autograd gives a channels-last 1x1 conv
/// weight of strides (64, 1, 1, 1) a gradient of strides (64, 1, 64, 64).
fn same_layout(sizes: &[i64], a: &[i64], b: &[i64]) -> bool {
    a.len() == sizes.len()
        && b.len() == sizes.len()
        && sizes
            .iter()
            .zip(a.iter().zip(b))
            .all(|(&size, (x, y))| size == 1 || x == y)
}

/// What the fused operators require of their tensor lists (on CUDA,
/// `check_fast_path_restrictions`, whose stride check skips size-1
/// dimensions since PyTorch 2.5; the CPU kernels walk each tensor's memory
/// as one flat array): equally long lists, one device and float kind for
/// all, and each parameter's companions (gradient, optimizer state) laid out
/// as it is, densely.
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
                    && same_layout(&sizes, &t.stride(), &strides)
            })
            && dense(&sizes, &strides)
    })
}

/// A random gradient laid out as autograd lays out `param`'s under
/// --channels-last: like it, except that a 1x1 weight (whose channels-last
/// and contiguous strides coincide, (C, 1, 1, 1)) gets (C, 1, C, C).
#[cfg(test)]
pub(crate) fn random_grad_for(param: &Tensor) -> Tensor {
    let size = param.size();
    if let [_, channels, 1, 1] = size[..] {
        let flat = Tensor::randn([param.numel() as i64], (param.kind(), param.device()));
        return flat.as_strided(&size[..], [channels, 1, channels, channels], 0);
    }
    if param.is_contiguous() {
        return Tensor::randn_like(param);
    }
    crate::model::channels_last(&Tensor::randn_like(param))
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

    #[test]
    fn a_size_one_dimension_may_have_any_stride() {
        let options = (Kind::Float, Device::Cpu);
        let weight = Tensor::ones([4, 3, 1, 1], options).as_strided([4, 3, 1, 1], [3, 1, 1, 1], 0);
        let grad = Tensor::ones([4, 3, 1, 1], options).as_strided([4, 3, 1, 1], [3, 1, 3, 3], 0);
        assert!(fusable(&[&weight], &[&[&grad]]));
        let transposed =
            Tensor::ones([4, 3, 1, 1], options).as_strided([4, 3, 1, 1], [1, 4, 1, 1], 0);
        assert!(!fusable(&[&weight], &[&[&transposed]]));
        assert!(same_layout(&[2, 1], &[1, 5], &[1, 9]));
        assert!(!same_layout(&[2, 2], &[2, 1], &[1, 2]));
    }
}
