//! Adam and AdamW through `_fused_adam_` and `_fused_adamw_`, what
//! `torch.optim.Adam(fused=True)` and `AdamW(fused=True)` call.

use tch::{Kind, Tensor};

use super::{at_tensors, fusable, NoTensor, TensorList, NO_TENSOR};

/// Declares the Adam-family operators, which share one signature:
/// `(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
/// beta1, beta2, weight_decay, eps, amsgrad, maximize, grad_scale,
/// found_inf)`.
macro_rules! fused_adam_operators {
    ($($name:ident = $symbol:literal;)*) => {
        extern "C" {
            $(
                #[link_name = $symbol]
                fn $name(
                    params: TensorList,
                    grads: TensorList,
                    exp_avgs: TensorList,
                    exp_avg_sqs: TensorList,
                    max_exp_avg_sqs: TensorList,
                    state_steps: TensorList,
                    lr: f64,
                    beta1: f64,
                    beta2: f64,
                    weight_decay: f64,
                    eps: f64,
                    amsgrad: bool,
                    maximize: bool,
                    grad_scale: *const NoTensor,
                    found_inf: *const NoTensor,
                );
            )*
        }
    };
}

fused_adam_operators! {
    at_fused_adam = "_ZN2at4_ops12_fused_adam_4callEN3c108ArrayRefINS_6TensorEEES5_S5_S5_S5_S5_dddddbbRKSt8optionalIS4_ES9_";
    at_fused_adamw = "_ZN2at4_ops13_fused_adamw_4callEN3c108ArrayRefINS_6TensorEEES5_S5_S5_S5_S5_dddddbbRKSt8optionalIS4_ES9_";
}

/// An Adam step's settings. `decoupled` is AdamW: the weight decay shrinks
/// the parameters (`p *= 1 - lr * weight_decay`) instead of joining the
/// gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

/// Adam's tensors, one entry per parameter: its gradient, its first and
/// second moments, and its step count (a one-element float tensor on the
/// parameter's device holding the number of this step, counted from 1;
/// the CUDA kernel reads it from device memory).
#[derive(Debug)]
pub struct AdamLists<'a> {
    pub params: &'a [&'a Tensor],
    pub grads: &'a [&'a Tensor],
    pub exp_avgs: &'a [&'a Tensor],
    pub exp_avg_sqs: &'a [&'a Tensor],
    pub step_counts: &'a [&'a Tensor],
}

impl AdamLists<'_> {
    fn fusable(&self) -> bool {
        let Some(first) = self.params.first() else {
            return false;
        };
        fusable(self.params, &[self.grads, self.exp_avgs, self.exp_avg_sqs])
            && self.step_counts.len() == self.params.len()
            && self.step_counts.iter().all(|s| {
                s.defined()
                    && s.kind() == Kind::Float
                    && s.numel() == 1
                    && s.device() == first.device()
            })
    }
}

/// One Adam (or AdamW) step in place, without AMSGrad, as `torch.optim`
/// does it. False, with nothing changed, when the lists cannot go through
/// the fused operator; call under `no_grad`.
pub fn step(lists: &AdamLists, settings: AdamStep) -> bool {
    if !lists.fusable() {
        return false;
    }
    let p = at_tensors(lists.params);
    let g = at_tensors(lists.grads);
    let m = at_tensors(lists.exp_avgs);
    let v = at_tensors(lists.exp_avg_sqs);
    let s = at_tensors(lists.step_counts);
    let no_max_exp_avg_sqs: [*mut std::ffi::c_void; 0] = [];
    let operator = if settings.decoupled {
        at_fused_adamw
    } else {
        at_fused_adam
    };
    let none = NO_TENSOR;
    // SAFETY: the lists point at live tensors (borrowed above) that pass
    // every check the operator makes (the AMSGrad list is empty, as it must
    // be without AMSGrad), so it returns without throwing; `none` outlives
    // the call.
    unsafe {
        operator(
            TensorList::of(&p),
            TensorList::of(&g),
            TensorList::of(&m),
            TensorList::of(&v),
            TensorList::of(&no_max_exp_avg_sqs),
            TensorList::of(&s),
            settings.lr,
            settings.betas.0,
            settings.betas.1,
            settings.weight_decay,
            settings.eps,
            false,
            false,
            &none,
            &none,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    /// `torch.optim.Adam`/`AdamW`'s single-tensor rule, op by op.
    fn by_ops(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, t: f64, c: AdamStep) {
        let g = if c.decoupled {
            let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
            g.shallow_clone()
        } else {
            g + &*p * c.weight_decay
        };
        let (b1, b2) = c.betas;
        let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
        let _ = v.g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
        let denom = (&*v / (1.0 - b2.powf(t))).sqrt() + c.eps;
        let _ = p.g_sub_(&(&*m / (1.0 - b1.powf(t)) / denom * c.lr));
    }

    fn refs(tensors: &[Tensor]) -> Vec<&Tensor> {
        tensors.iter().collect()
    }

    #[test]
    fn the_fused_steps_follow_the_op_by_op_rules() {
        let _guard = tch::no_grad_guard();
        for decoupled in [false, true] {
            tch::manual_seed(5);
            let settings = AdamStep {
                lr: 1e-2,
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.05,
                decoupled,
            };
            let shapes: [&[i64]; 5] = [&[7], &[4, 3, 3, 3], &[1], &[130, 17], &[5, 3, 1, 1]];
            // Weights channels-last, as training with --channels-last keeps them.
            let mut params: Vec<Tensor> = shapes
                .iter()
                .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
                .map(|p| {
                    if p.dim() == 4 {
                        crate::model::channels_last(&p)
                    } else {
                        p
                    }
                })
                .collect();
            let mut reference: Vec<Tensor> = params.iter().map(Tensor::copy).collect();
            let zeros =
                |of: &[Tensor]| -> Vec<Tensor> { of.iter().map(Tensor::zeros_like).collect() };
            let (m, v) = (zeros(&params), zeros(&params));
            let (mut rm, mut rv) = (zeros(&params), zeros(&params));
            let mut counts = Tensor::zeros([shapes.len() as i64], (Kind::Float, Device::Cpu));
            let count_views: Vec<Tensor> =
                (0..shapes.len() as i64).map(|i| counts.get(i)).collect();
            for t in 1..=3 {
                let _ = counts.fill_(t as f64);
                let grads: Vec<Tensor> = params.iter().map(super::super::random_grad_for).collect();
                let lists = AdamLists {
                    params: &refs(&params),
                    grads: &refs(&grads),
                    exp_avgs: &refs(&m),
                    exp_avg_sqs: &refs(&v),
                    step_counts: &refs(&count_views),
                };
                assert!(step(&lists, settings));
                for (((p, g), m), v) in reference.iter_mut().zip(&grads).zip(&mut rm).zip(&mut rv) {
                    by_ops(p, g, m, v, t as f64, settings);
                }
            }
            for (fused, by_ops) in params.iter_mut().zip(&reference) {
                let diff = (&*fused - by_ops).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "decoupled {decoupled}: fused and op-by-op differ by {diff}"
                );
            }
            assert_eq!(
                counts.double_value(&[0]),
                3.0,
                "the operator must not count steps itself"
            );
        }
    }

    #[test]
    fn lists_the_operator_would_refuse_are_left_alone() {
        let p = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let z = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let count = Tensor::ones([], (Kind::Float, Device::Cpu));
        let int_count = Tensor::ones([], (Kind::Int64, Device::Cpu));
        let settings = AdamStep {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        };
        let refused = [
            AdamLists {
                params: &[&p],
                grads: &[&z],
                exp_avgs: &[&z],
                exp_avg_sqs: &[&z],
                step_counts: &[&int_count],
            },
            AdamLists {
                params: &[&p],
                grads: &[&z],
                exp_avgs: &[&z],
                exp_avg_sqs: &[&z],
                step_counts: &[],
            },
            AdamLists {
                params: &[&p],
                grads: &[&z],
                exp_avgs: &[],
                exp_avg_sqs: &[&z],
                step_counts: &[&count],
            },
        ];
        for lists in &refused {
            assert!(!step(lists, settings));
        }
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), [1.0; 4]);
    }
}
