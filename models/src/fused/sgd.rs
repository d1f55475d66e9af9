//! SGD with momentum through `_fused_sgd_`, what
//! `torch.optim.SGD(fused=True)` calls.

use tch::Tensor;

use super::{at_tensors, fusable, NoTensor, TensorList, NO_TENSOR};

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
    if momentum <= 0.0 || !fusable(params, &[grads, buffers]) {
        return false;
    }
    let (p, g, b) = (at_tensors(params), at_tensors(grads), at_tensors(buffers));
    let none = NO_TENSOR;
    // SAFETY: the lists point at live tensors (borrowed above) that pass
    // every check the operator makes, so it returns without throwing;
    // `none` outlives the call.
    unsafe {
        at_fused_sgd(
            TensorList::of(&p),
            TensorList::of(&g),
            TensorList::of(&b),
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
    use tch::{Device, Kind};

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
        let shapes: [&[i64]; 5] = [&[7], &[4, 3, 3, 3], &[1], &[130, 17], &[5, 3, 1, 1]];
        let hyper = (5e-4, 0.9, 0.1);
        let make = || -> Vec<Tensor> {
            shapes
                .iter()
                .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
                .collect()
        };
        let params = make();
        // Weights channels-last, as training with --channels-last keeps them.
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
            let grads: Vec<Tensor> = params.iter().map(super::super::random_grad_for).collect();
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
}
