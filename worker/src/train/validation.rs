//! The loss of a batch, and the validation metrics of an epoch.

use std::collections::BTreeMap;

use atelier_catalog::Catalog;
use atelier_collective::Collective;
use atelier_models::Model;
use atelier_pipeline::ItemFilter;
use tch::{Device, Kind};
use tokio::runtime::Handle;

use crate::dataset::in_validation;
use crate::error::{Result, WorkerError};
use crate::sampler::validates_on;
use crate::targets::inputs;

use super::loaders::loader_for;
use super::TrainSetup;

/// The training loss of a batch (classification or captioning).
pub fn loss(
    model: &Model,
    inputs: &crate::targets::Inputs,
    train: bool,
    label_smoothing: f64,
) -> tch::Tensor {
    let features = model.features(&inputs.images, train);
    match (model.annotator(), &inputs.tokens) {
        (Some(annotator), Some(tokens)) => annotator.loss(&features, tokens),
        _ => model.training_loss(&model.logits(&features), &inputs.classes, label_smoothing),
    }
}

/// Loss and accuracy on the validation split. Each rank validates its share
/// and the sums are added up over ranks, so every rank ends with the same
/// figures for the whole split.
pub(super) fn validate_epoch(
    setup: &TrainSetup,
    catalog: &Catalog,
    handle: &Handle,
    model: &Model,
    epoch: usize,
    collective: &mut dyn Collective,
    stop: &dyn Fn() -> bool,
) -> Result<BTreeMap<String, f64>> {
    let device = model.device();
    let mut metrics = BTreeMap::new();
    let options = &setup.options;
    if options.val_fraction == 0.0 {
        return Ok(metrics);
    }
    let (rank, world) = (collective.rank(), collective.world_size());
    let fraction = options.val_fraction;
    let keep =
        ItemFilter::new(move |id| in_validation(id, fraction) && validates_on(id, rank, world));
    let loader = loader_for(setup, catalog, handle, epoch, true, keep, 0)?;
    let heads: Vec<&str> = model.spec.attributes();
    // loss sum, items, then (correct, labelled) per head.
    let mut sums = vec![0.0f64; 2 + 2 * heads.len()];
    {
        let _guard = tch::no_grad_guard();
        for batch in loader {
            if stop() {
                return Err(WorkerError::Cancelled);
            }
            let mut batch = batch?;
            let inputs = inputs(&model.spec, &mut batch, device);
            if inputs.count == 0 {
                continue;
            }
            let features = model.features(&inputs.images, false);
            let loss = match (model.annotator(), &inputs.tokens) {
                (Some(annotator), Some(tokens)) => annotator.loss(&features, tokens),
                _ => {
                    let logits = model.logits(&features);
                    let (loss, accuracy) = model.classification_loss(&logits, &inputs.classes);
                    for ((name, _), (c, n)) in logits.iter().zip(accuracy) {
                        if let Some(h) = heads.iter().position(|h| h == name) {
                            sums[2 + 2 * h] += c as f64;
                            sums[3 + 2 * h] += n as f64;
                        }
                    }
                    loss
                }
            };
            sums[0] += loss.to_kind(Kind::Double).double_value(&[]) * inputs.count as f64;
            sums[1] += inputs.count as f64;
        }
    }
    if world > 1 {
        let mut totals = tch::Tensor::from_slice(&sums).to_device(device);
        collective.all_reduce_sum(&mut totals)?;
        sums = Vec::<f64>::try_from(totals.to_device(Device::Cpu))
            .map_err(|e| WorkerError::Internal(format!("reading validation totals: {e}")))?;
    }
    let count = sums[1];
    metrics.insert("loss".into(), mean_loss(sums[0], count, epoch)?);
    let mut accuracies = Vec::new();
    for (h, name) in heads.iter().enumerate() {
        let (correct, labelled) = (sums[2 + 2 * h], sums[3 + 2 * h]);
        if labelled == 0.0 && model.annotator().is_some() {
            continue;
        }
        let accuracy = correct / labelled.max(1.0);
        accuracies.push(accuracy);
        metrics.insert(format!("accuracy_{name}"), accuracy);
    }
    if !accuracies.is_empty() {
        metrics.insert(
            "accuracy".into(),
            accuracies.iter().sum::<f64>() / accuracies.len() as f64,
        );
    }
    metrics.insert("items".into(), count);
    Ok(metrics)
}

/// The mean validation loss of epoch `epoch` (from 0). A training loss can
/// stay finite while the model's outputs are not (its batch norms' running
/// statistics gone bad); the run stops here rather than save that model.
fn mean_loss(sum: f64, items: f64, epoch: usize) -> Result<f64> {
    let loss = sum / items.max(1.0);
    if items > 0.0 && !loss.is_finite() {
        return Err(WorkerError::BadInput(format!(
            "validation loss became {loss} in epoch {}: the model's outputs are not finite (its weights or batch-norm statistics); lower --lr",
            epoch + 1
        )));
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_with_outputs_that_are_not_finite_stops_the_run_at_validation() {
        assert_eq!(mean_loss(6.0, 3.0, 0).unwrap(), 2.0);
        assert_eq!(mean_loss(0.0, 0.0, 0).unwrap(), 0.0);
        let error = mean_loss(f64::NAN, 15.0, 1).unwrap_err().to_string();
        assert!(
            error.contains("validation loss became NaN in epoch 2"),
            "{error}"
        );
        assert!(mean_loss(f64::INFINITY, 1.0, 0).is_err());
    }
}
