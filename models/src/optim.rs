//! Optimizers with state that can be saved and restored, and learning-rate schedules.
//!
//! tch's optimizers keep their state inside libtorch where it cannot be
//! checkpointed; resuming a run must restore momentum and Adam moments exactly,
//! so the update rules live here (the same rules as torch.optim).

use atelier_proto::{OptimizerKind, ScheduleKind};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::fused::adam::{AdamLists, AdamStep};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

impl OptimizerConfig {
    pub fn new(kind: OptimizerKind, weight_decay: f64) -> Self {
        Self {
            kind,
            weight_decay,
            momentum: 0.9,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}

/// Update rules over named parameters; state tensors are named
/// `<param>.<slot>` so they can be saved beside the weights.
#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    /// Per parameter: momentum buffer (SGD) or first and second moments (Adam).
    slots: Vec<Vec<Tensor>>,
    /// For the fused Adam operators: one float per parameter on their
    /// device, all holding the current step (views of one tensor, so one
    /// fill a step); made at the first step.
    step_counts: Option<(Tensor, Vec<Tensor>)>,
    /// Whether it was said that the fused operators refused the parameters.
    said_op_by_op: bool,
    pub steps: i64,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, params: Vec<(String, Tensor)>) -> Self {
        let slots = params
            .iter()
            .map(|(_, p)| {
                let n = if config.kind == OptimizerKind::Sgd {
                    1
                } else {
                    2
                };
                (0..n).map(|_| p.zeros_like().detach()).collect()
            })
            .collect();
        Self {
            config,
            params,
            slots,
            step_counts: None,
            said_op_by_op: false,
            steps: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            let fused = match self.config.kind {
                OptimizerKind::Sgd => self.fused_sgd(lr, t == 1.0),
                OptimizerKind::Adam | OptimizerKind::Adamw => self.fused_adam(lr, t),
            };
            if !fused {
                let expected = self.config.kind != OptimizerKind::Sgd || self.config.momentum > 0.0;
                if expected && !self.said_op_by_op {
                    self.said_op_by_op = true;
                    tracing::warn!(
                        optimizer = ?self.config.kind,
                        "optimizer steps run op by op, slower: the parameters, gradients or state do not fit libtorch's fused operator (mixed devices or kinds, or unlike layouts)"
                    );
                }
                self.step_by_ops(lr, t);
            }
        });
    }

    /// The update rules one operation at a time, for what the fused
    /// operators refuse; call under `no_grad`.
    fn step_by_ops(&mut self, lr: f64, t: f64) {
        let c = self.config;
        for ((_, param), slots) in self.params.iter_mut().zip(&mut self.slots) {
            let grad = param.grad();
            if !grad.defined() {
                continue;
            }
            match c.kind {
                OptimizerKind::Sgd => {
                    let grad = if c.weight_decay != 0.0 {
                        &grad + &*param * c.weight_decay
                    } else {
                        grad
                    };
                    let buffer = &mut slots[0];
                    if t == 1.0 {
                        buffer.copy_(&grad);
                    } else {
                        let _ = buffer.g_mul_scalar_(c.momentum).g_add_(&grad);
                    }
                    let update = if c.momentum != 0.0 {
                        &*buffer * lr
                    } else {
                        grad * lr
                    };
                    let _ = param.g_sub_(&update);
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let grad = if c.kind == OptimizerKind::Adam && c.weight_decay != 0.0 {
                        &grad + &*param * c.weight_decay
                    } else {
                        grad
                    };
                    if c.kind == OptimizerKind::Adamw && c.weight_decay != 0.0 {
                        let _ = param.g_mul_scalar_(1.0 - lr * c.weight_decay);
                    }
                    let (b1, b2) = c.betas;
                    let (first, second) = slots.split_at_mut(1);
                    let m = &mut first[0];
                    let v = &mut second[0];
                    let _ = m.g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
                    let _ = v.g_mul_scalar_(b2).g_add_(&(&grad * &grad * (1.0 - b2)));
                    let m_hat = &*m / (1.0 - b1.powf(t));
                    let v_hat = &*v / (1.0 - b2.powf(t));
                    let update = m_hat / (v_hat.sqrt() + c.eps) * lr;
                    let _ = param.g_sub_(&update);
                }
            }
        }
    }

    /// The SGD step through libtorch's fused operator, for the parameters
    /// that have gradients; false (nothing done) where it does not apply.
    fn fused_sgd(&self, lr: f64, first_step: bool) -> bool {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let mut lists = (Vec::new(), Vec::new(), Vec::new());
        for (((_, param), grad), slots) in self.params.iter().zip(&grads).zip(&self.slots) {
            if let (true, Some(buffer)) = (grad.defined(), slots.first()) {
                lists.0.push(param);
                lists.1.push(grad);
                lists.2.push(buffer);
            }
        }
        let hyper = (self.config.weight_decay, self.config.momentum, lr);
        crate::fused::sgd::step(&lists.0, &lists.1, &lists.2, hyper, first_step)
    }

    /// The Adam or AdamW step through libtorch's fused operators, for the
    /// parameters that have gradients; false (nothing done) where they do
    /// not apply.
    fn fused_adam(&mut self, lr: f64, step: f64) -> bool {
        let params = &self.params;
        let (counts, count_views) = self.step_counts.get_or_insert_with(|| {
            let device = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
            let counts = Tensor::zeros([params.len() as i64], (Kind::Float, device));
            let views = (0..params.len() as i64).map(|i| counts.get(i)).collect();
            (counts, views)
        });
        let _ = counts.fill_(step);
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
        let mut lists: [Vec<&Tensor>; 5] = Default::default();
        for ((((_, param), grad), slots), count) in params
            .iter()
            .zip(&grads)
            .zip(&self.slots)
            .zip(&*count_views)
        {
            if let (true, [m, v]) = (grad.defined(), slots.as_slice()) {
                for (list, tensor) in lists.iter_mut().zip([param, grad, m, v, count]) {
                    list.push(tensor);
                }
            }
        }
        let c = self.config;
        let lists = AdamLists {
            params: &lists[0],
            grads: &lists[1],
            exp_avgs: &lists[2],
            exp_avg_sqs: &lists[3],
            step_counts: &lists[4],
        };
        let settings = AdamStep {
            lr,
            betas: c.betas,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: c.kind == OptimizerKind::Adamw,
        };
        crate::fused::adam::step(&lists, settings)
    }

    /// Named state tensors for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, _), slots) in self.params.iter().zip(&self.slots) {
            for (i, slot) in slots.iter().enumerate() {
                out.push((format!("{name}.slot{i}"), slot.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for ((name, _), slots) in self.params.iter().zip(&mut self.slots) {
            for (i, slot) in slots.iter_mut().enumerate() {
                let key = format!("{name}.slot{i}");
                let saved = by_name
                    .get(key.as_str())
                    .ok_or_else(|| format!("optimizer state lacks {key}"))?;
                if saved.size() != slot.size() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        saved.size(),
                        slot.size()
                    ));
                }
                tch::no_grad(|| slot.copy_(&saved.to_device(slot.device())));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: i64,
    pub total_steps: i64,
    /// Step schedule: multiply by `gamma` every `step_every` steps.
    pub step_every: i64,
    pub gamma: f64,
}

impl Schedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: i64) -> f64 {
        let total = self.total_steps.max(1) as f64;
        let s = step as f64;
        if self.kind == ScheduleKind::Onecycle {
            let peak = (0.3 * total).max(1.0);
            let (start, end) = (self.base_lr / 25.0, self.base_lr / 1e4);
            return if s < peak {
                start + (self.base_lr - start) * s / peak
            } else {
                let progress = ((s - peak) / (total - peak).max(1.0)).min(1.0);
                end + (self.base_lr - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            };
        }
        if step < self.warmup_steps {
            return self.base_lr * (s + 1.0) / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::Onecycle => self.base_lr,
            ScheduleKind::Cosine => {
                let warm = self.warmup_steps as f64;
                let progress = ((s - warm) / (total - warm).max(1.0)).min(1.0);
                self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Step => {
                self.base_lr * self.gamma.powi((step / self.step_every.max(1)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn quadratic(kind: OptimizerKind) -> f64 {
        let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerConfig::new(kind, 0.0),
            vec![("x".into(), x.shallow_clone())],
        );
        for _ in 0..200 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Float).backward();
            opt.step(0.05);
        }
        (&x * &x).sum(Kind::Float).double_value(&[])
    }

    #[test]
    fn every_optimizer_minimises_a_quadratic() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let loss = quadratic(kind);
            assert!(loss < 1e-2, "{kind:?} left loss {loss}");
        }
    }

    #[test]
    fn sgd_matches_torch_momentum_rule() {
        // torch.optim.SGD(lr=0.1, momentum=0.9) on f(x)=x^2 from x=1: 1, 0.8, 0.46, ...
        let x = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerConfig::new(OptimizerKind::Sgd, 0.0),
            vec![("x".into(), x.shallow_clone())],
        );
        let mut seen = Vec::new();
        for _ in 0..3 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Double).backward();
            opt.step(0.1);
            seen.push(x.double_value(&[0]));
        }
        let expected = [0.8, 0.46, 0.062];
        for (a, b) in seen.iter().zip(expected) {
            assert!((a - b).abs() < 1e-9, "{seen:?}");
        }
        let _ = Device::Cpu;
    }

    #[test]
    fn adam_and_adamw_match_torch_optim() {
        // torch.optim.Adam / AdamW(lr=0.1, weight_decay=0.1) on
        // f(x) = x0^2 + 3 x1^2 from (1, -2), float64.
        let expected = [
            (
                OptimizerKind::Adam,
                [
                    [0.9000000004761904, -1.9000000000819672],
                    [0.8004122286431954, -1.8001664857760116],
                    [0.7015862728718214, -1.7006233915318487],
                ],
            ),
            (
                OptimizerKind::Adamw,
                [
                    [0.8900000004999999, -1.8800000000833332],
                    [0.7815718559365048, -1.7614089502485435],
                    [0.6751012216400697, -1.6443686830529762],
                ],
            ),
        ];
        for ((kind, trajectory), by_ops) in expected.iter().flat_map(|e| [(e, false), (e, true)]) {
            let kind = *kind;
            let x = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
            let weights = Tensor::from_slice(&[1.0f64, 3.0]);
            let mut opt = Optimizer::new(
                OptimizerConfig::new(kind, 0.1),
                vec![("x".into(), x.shallow_clone())],
            );
            for (step, want) in trajectory.iter().enumerate() {
                opt.zero_grad();
                (&x * &x * &weights).sum(Kind::Double).backward();
                if by_ops {
                    opt.steps += 1;
                    tch::no_grad(|| opt.step_by_ops(0.1, opt.steps as f64));
                } else {
                    opt.step(0.1);
                }
                let seen: Vec<f64> = Vec::try_from(&x.detach()).unwrap();
                for (a, b) in seen.iter().zip(want) {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{kind:?} (by ops: {by_ops}) step {step}: {seen:?} vs {want:?}"
                    );
                }
            }
            // These parameters go through the fused operator.
            (&x * &x).sum(Kind::Double).backward();
            assert!(tch::no_grad(|| opt.fused_adam(0.1, 4.0)), "{kind:?}");
        }
    }

    #[test]
    fn schedules_warm_up_and_decay() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            step_every: 0,
            gamma: 0.1,
        };
        assert!((s.lr(0) - 0.01).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!(s.lr(109) < 1e-3);
        let step = Schedule {
            kind: ScheduleKind::Step,
            warmup_steps: 0,
            step_every: 50,
            ..s
        };
        assert!((step.lr(120) - 0.001).abs() < 1e-12);
        let one = Schedule {
            kind: ScheduleKind::Onecycle,
            warmup_steps: 0,
            ..s
        };
        assert!(one.lr(0) < one.lr(30) && one.lr(109) < one.lr(60));
    }
}
