//! SGD with momentum as one fused pass per parameter (CPU) or a few
//! multi-tensor kernels for all of them (CUDA): libtorch's `_fused_sgd_`,
//! what `torch.optim.SGD(fused=True)` calls. Done op by op, the same rule
//! costs six passes over every parameter, three temporaries and, on a GPU,
//! about a thousand kernel launches a step for a ResNet-50.
//!
//! tch does not bind the `_fused_*` and `_foreach_*` operators, so the
//! dispatcher's entry point is declared directly, as `autocast` does with
//! libtorch's own functions. A C++ exception cannot cross into Rust, so
//! everything the operator checks is checked here first, and a list that
//! fails a check is left to the caller's op-by-op rule.

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

/// `c10::ArrayRef<at::Tensor>`: a pointer and a length, passed by value.
#[repr(C)]
struct TensorList {
    data: *const *mut c_void,
    len: usize,
}

/// `std::optional<at::Tensor>` (libstdc++): the tensor's one pointer, then
/// the engaged flag; only the empty one is ever passed.
#[repr(C)]
struct NoTensor {
    value: *mut c_void,
    engaged: bool,
}

extern "C" {
    /// `at::_ops::_fused_sgd_::call(params, grads, momentum_buffers,
    /// weight_decay, momentum, lr, dampening, nesterov, maximize,
    /// is_first_step, grad_scale, found_inf)`.
    #[link_name = "_ZN2at4_ops11_fused_sgd_4callEN3c108ArrayRefINS_6TensorEEES5_S5_ddddbbbRKSt8optionalIS4_ES9_"]
    fn at_fused_sgd(
        params: TensorList,
        grads: TensorList,
        momentum_buffers: TensorList,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        dampening: f64,
        nesterov: bool,
        maximize: bool,
        is_first_step: bool,
        grad_scale: *const NoTensor,
        found_inf: *const NoTensor,
    );
}

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

/// What `_fused_sgd_` requires of its lists (on CUDA,
/// `check_fast_path_restrictions`): one device and kind for all, float
/// kinds, and each parameter's gradient and buffer laid out exactly as it is.
fn fusable(params: &[&Tensor], grads: &[&Tensor], buffers: &[&Tensor]) -> bool {
    let Some(first) = params.first() else {
        return false;
    };
    let (device, kind) = (first.device(), first.kind());
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
    ) || !matches!(device, Device::Cpu | Device::Cuda(_))
        || grads.len() != params.len()
        || buffers.len() != params.len()
    {
        return false;
    }
    params.iter().zip(grads).zip(buffers).all(|((p, g), b)| {
        let (sizes, strides) = (p.size(), p.stride());
        [p, g, b].iter().all(|t| {
            t.defined()
                && t.device() == device
                && t.kind() == kind
                && t.size() == sizes
                && t.stride() == strides
        }) && dense(&sizes, &strides)
    })
}

/// One SGD step with momentum (no dampening, not Nesterov), in place:
/// `b = g + weight_decay * p` on the first step, else
/// `b = momentum * b + g + weight_decay * p`; then `p -= lr * b`. False,
/// with nothing changed, when the lists cannot go through the fused
/// operator; call under `no_grad`.
pub fn step(
    params: &[&Tensor],
    grads: &[&Tensor],
    buffers: &[&Tensor],
    hyper: (f64, f64, f64),
    first_step: bool,
) -> bool {
    let (weight_decay, momentum, lr) = hyper;
    if momentum <= 0.0 || !fusable(params, grads, buffers) {
        return false;
    }
    let (p, g, b) = (at_tensors(params), at_tensors(grads), at_tensors(buffers));
    let list = |v: &Vec<*mut c_void>| TensorList {
        data: v.as_ptr(),
        len: v.len(),
    };
    let none = NoTensor {
        value: std::ptr::null_mut(),
        engaged: false,
    };
    // SAFETY: the lists point at live tensors (borrowed above) that pass
    // every check the operator makes, so it returns without throwing;
    // `none` outlives the call.
    unsafe {
        at_fused_sgd(
            list(&p),
            list(&g),
            list(&b),
            weight_decay,
            momentum,
            lr,
            0.0,
            false,
            false,
            first_step,
            &none,
            &none,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op-by-op rule the fused operator replaces.
    fn by_ops(p: &mut Tensor, g: &Tensor, b: &mut Tensor, hyper: (f64, f64, f64), first: bool) {
        let (wd, m, lr) = hyper;
        let d = g + &*p * wd;
        if first {
            b.copy_(&d);
        } else {
            let _ = b.g_mul_scalar_(m).g_add_(&d);
        }
        let _ = p.g_sub_(&(&*b * lr));
    }

    fn refs(tensors: &[Tensor]) -> Vec<&Tensor> {
        tensors.iter().collect()
    }

    #[test]
    fn the_fused_step_follows_the_op_by_op_rule() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(3);
        let shapes: [&[i64]; 4] = [&[7], &[4, 3, 3, 3], &[1], &[130, 17]];
        let hyper = (5e-4, 0.9, 0.1);
        let make = || -> Vec<Tensor> {
            shapes
                .iter()
                .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
                .collect()
        };
        let params = make();
        // One weight channels-last, as training with --channels-last keeps it.
        let mut params: Vec<Tensor> = params
            .into_iter()
            .map(|p| {
                if p.dim() == 4 {
                    crate::model::channels_last(&p)
                } else {
                    p
                }
            })
            .collect();
        let mut reference: Vec<Tensor> = params.iter().map(|p| p.copy()).collect();
        let buffers: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
        let mut reference_buffers: Vec<Tensor> = buffers.iter().map(Tensor::copy).collect();
        for step_index in 0..3 {
            let grads: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    let g = Tensor::randn_like(p);
                    if p.is_contiguous() {
                        g
                    } else {
                        crate::model::channels_last(&g)
                    }
                })
                .collect();
            assert!(step(
                &refs(&params),
                &refs(&grads),
                &refs(&buffers),
                hyper,
                step_index == 0
            ));
            for ((p, b), g) in reference.iter_mut().zip(&mut reference_buffers).zip(&grads) {
                by_ops(p, g, b, hyper, step_index == 0);
            }
        }
        for (fused, by_ops) in params.iter_mut().zip(&reference) {
            let diff = (&*fused - by_ops).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "fused and op-by-op differ by {diff}");
        }
    }

    #[test]
    fn lists_the_operator_would_refuse_are_left_alone() {
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let wrong_shape = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let wrong_kind = Tensor::ones([4], (Kind::Double, Device::Cpu));
        let b = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        for g in [&wrong_shape, &wrong_kind] {
            assert!(!step(&[&p], &[g], &[&b], (0.0, 0.9, 0.1), true));
        }
        let strided = Tensor::ones([8], (Kind::Float, Device::Cpu)).slice(0, 0, 8, 2);
        assert!(!step(
            &[&strided],
            &[&strided],
            &[&strided],
            (0.0, 0.9, 0.1),
            true
        ));
        assert!(!step(&[&p], &[&p], &[&b], (0.0, 0.0, 0.1), true));
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), [1.0; 4]);
    }

    #[test]
    fn density_is_contiguity_in_some_order_of_the_dimensions() {
        assert!(dense(&[2, 3], &[3, 1]));
        assert!(dense(&[2, 3, 4, 5], &[60, 1, 15, 3]));
        assert!(dense(&[1, 3], &[7, 1]));
        assert!(!dense(&[4], &[2]));
        assert!(!dense(&[2, 2], &[1, 1]));
    }
}
