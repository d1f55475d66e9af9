//! `metrics.jsonl`, the curves `atelier plot` draws, and the training loss
//! averaged over a logging window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Kind;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: i64,
    pub epoch: f64,
    pub split: String,
    /// JSON has no NaN; a diverged loss is written as null and read back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub lr: f64,
    pub images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, f64>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The loss summed over a logging window's items. A single process keeps
/// the sum on the device: reading a loss back every step would make the host
/// wait for the GPU each time instead of queueing the next step while the
/// device runs this one. A gang learns the sum from its all-reduce.
#[derive(Debug, Default)]
pub(super) struct WindowLoss {
    sum: f64,
    items: f64,
    on_device: Option<tch::Tensor>,
}

impl WindowLoss {
    pub(super) fn add(&mut self, loss_sum: f64, items: f64) {
        self.sum += loss_sum;
        self.items += items;
    }

    pub(super) fn add_on_device(&mut self, mean: &tch::Tensor, items: usize) {
        let sum = mean.to_kind(Kind::Double) * items as f64;
        self.on_device = Some(match self.on_device.take() {
            Some(total) => total + sum,
            None => sum,
        });
        self.items += items as f64;
    }

    /// The mean loss per item so far; waits for the device.
    pub(super) fn mean(&self) -> f64 {
        let on_device = self.on_device.as_ref().map_or(0.0, |t| t.double_value(&[]));
        (self.sum + on_device) / self.items.max(1.0)
    }
}
