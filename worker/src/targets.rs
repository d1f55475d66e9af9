//! Turning the labels of a decoded batch into training targets.

use std::collections::BTreeMap;

use atelier_models::ModelSpec;
use atelier_models::{END, PAD, START};
use atelier_pipeline::Batch;
use tch::{Device, Tensor};

/// Images and targets of the items in a batch whose image decoded.
#[derive(Debug)]
pub struct Inputs {
    pub images: Tensor,
    /// Per attribute, `[N]` class indices (IGNORE_INDEX where unlabelled).
    pub classes: BTreeMap<String, Tensor>,
    /// `[N, T]` caption tokens, `<start> … <end>` padded (captioner).
    pub tokens: Option<Tensor>,
    pub count: usize,
}

/// Images first: a picture that fails to decode on the GPU leaves the batch.
pub fn inputs(spec: &ModelSpec, batch: &mut Batch, device: Device) -> Inputs {
    let images = crate::device::device_images(batch, device);
    let ok: Vec<_> = batch.items.iter().filter(|i| i.slot.is_ok()).collect();
    let classes = spec
        .labels
        .iter()
        .map(|(attribute, map)| {
            let targets: Vec<i64> = ok
                .iter()
                .map(|item| map.target(item.labels.get(attribute)))
                .collect();
            (
                attribute.clone(),
                crate::device::upload(&Tensor::from_slice(&targets), device),
            )
        })
        .collect();
    let tokens = spec.vocab.as_ref().map(|vocab| {
        let rows: Vec<Vec<i64>> = ok
            .iter()
            .map(|item| {
                let mut row = vec![START];
                if let Some(caption) = item.labels.get(atelier_catalog::CAPTION) {
                    row.extend(vocab.encode(caption).into_iter().take(spec.max_caption_len));
                    row.push(END);
                }
                row
            })
            .collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(1).max(2);
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|row| {
                row.iter()
                    .copied()
                    .chain(std::iter::repeat(PAD))
                    .take(width)
            })
            .collect();
        crate::device::upload(
            &Tensor::from_slice(&flat).view([rows.len() as i64, width as i64]),
            device,
        )
    });
    Inputs {
        images,
        classes,
        tokens,
        count: ok.len(),
    }
}
