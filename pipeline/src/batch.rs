//! What the pipeline yields: a batch of items in input order and their pixels.

use atelier_catalog::Labels;

use crate::error::{ItemError, ItemFailure};

/// One input row and what became of it.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub item_id: String,
    pub labels: Labels,
    /// Extra columns requested in [`crate::LoaderOptions::extra_columns`], in that order.
    pub extra: Vec<Option<String>>,
    /// The row of `pixels` holding this item's image, or why there is none.
    pub slot: Result<usize, ItemError>,
}

/// A batch of items, every input row present, in input order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub items: Vec<BatchItem>,
    /// `ok_count() × 3 × size × size` floats, NCHW, normalised.
    pub pixels: Vec<f32>,
    pub size: usize,
}

impl Batch {
    /// Items whose image decoded; the leading dimension of [`Batch::tensor`].
    pub fn ok_count(&self) -> usize {
        self.items.iter().filter(|i| i.slot.is_ok()).count()
    }

    pub fn failures(&self) -> impl Iterator<Item = ItemFailure> + '_ {
        self.items.iter().filter_map(|item| match &item.slot {
            Ok(_) => None,
            Err(error) => Some(ItemFailure {
                item_id: item.item_id.clone(),
                error: error.clone(),
            }),
        })
    }

    /// The decoded images as an `[N, 3, size, size]` float tensor on the CPU.
    pub fn tensor(&self) -> tch::Tensor {
        let n = self.ok_count() as i64;
        let s = self.size as i64;
        tch::Tensor::from_slice(&self.pixels).view([n, 3, s, s])
    }
}
