//! One batch's predictions: queued on the device, then read back as rows.
//!
//! The two halves are apart so that a lane can queue batch k+1 on the GPU
//! before it reads batch k back and turns it into rows: the GPU then works
//! while the host builds and writes them.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use atelier_pipeline::BatchItem;
use tch::{Device, Kind, Tensor};

use super::Taggers;
use crate::completion::CompletionEvent;
use crate::error::{Result, WorkerError};

/// The most likely classes kept per attribute.
const TOP: i64 = 3;

/// A batch whose predictions are queued: every attribute's top classes side
/// by side (`[decoded items, sum of the attributes' widths]`), on their way
/// to host memory, and its captions (already on the host: decoding them
/// reads every step back).
pub(super) struct Queued {
    items: Vec<BatchItem>,
    top: Option<Top>,
    captions: Option<Vec<String>>,
    /// `[decoded items, dim]`, L2-normalised, still on the device.
    embeddings: Option<Tensor>,
}

struct Top {
    probs: Tensor,
    classes: Tensor,
    arrival: Arrival,
}

/// When the copies to the host can be read.
enum Arrival {
    Now,
    After(CompletionEvent),
    /// No event could be recorded: wait for the whole GPU.
    DeviceIdle(usize),
}

/// A batch with its predictions on the host, ready to become rows.
pub(super) struct Predicted {
    items: Vec<BatchItem>,
    top: Option<HostTop>,
    captions: Option<Vec<String>>,
    /// Decoded items' embeddings laid end to end.
    embeddings: Option<Vec<f32>>,
}

impl Queued {
    /// Waits for the batch's predictions to reach the host.
    pub(super) fn read_back(self) -> Result<Predicted> {
        // After the top classes' wait, the device has done this batch; the
        // embeddings' copy does not wait on the next one.
        let top = self.top.map(Top::read).transpose()?;
        let embeddings = self
            .embeddings
            .map(|e| Vec::<f32>::try_from(e.to_device(Device::Cpu).contiguous().view(-1)))
            .transpose()?;
        Ok(Predicted {
            top,
            items: self.items,
            captions: self.captions,
            embeddings,
        })
    }
}

impl Predicted {
    /// Items whose picture could not be used.
    pub(super) fn errors(&self) -> usize {
        self.items.iter().filter(|item| item.slot.is_err()).count()
    }
}

/// The top classes of every decoded item, read back.
struct HostTop {
    probs: Vec<f32>,
    classes: Vec<i64>,
    /// Columns per item: the attributes' widths summed.
    stride: usize,
}

impl Taggers {
    /// Queues the predictions for the decoded ones of a batch's `items`.
    /// `images`: those items on the device, none if none decoded.
    pub(super) fn queue(
        &self,
        items: Vec<BatchItem>,
        images: Option<&Tensor>,
        beams: usize,
        embeddings: bool,
    ) -> Result<Queued> {
        let _guard = tch::no_grad_guard();
        let Some(images) = images else {
            return Ok(Queued {
                items,
                top: None,
                captions: None,
                embeddings: None,
            });
        };
        let features: Vec<Tensor> = self
            .models
            .iter()
            .map(|(_, model)| model.features(images, false))
            .collect();
        let mut logits: Vec<_> = self
            .models
            .iter()
            .zip(&features)
            .map(|((_, model), features)| model.logits(features))
            .collect();
        let mut probs = Vec::new();
        let mut classes = Vec::new();
        for (attribute, index) in &self.attributes {
            let position = logits[*index]
                .iter()
                .position(|(name, _)| name == attribute)
                .ok_or_else(|| {
                    WorkerError::BadInput(format!("the model has no head for {attribute}"))
                })?;
            let (_, logits) = logits[*index].swap_remove(position);
            let (p, c) =
                logits
                    .softmax(-1, Kind::Float)
                    .topk(self.width(attribute, *index), -1, true, true);
            probs.push(p);
            classes.push(c);
        }
        let top =
            (!probs.is_empty()).then(|| to_host(Tensor::cat(&probs, 1), Tensor::cat(&classes, 1)));
        let captions = self.captions(&features, beams)?;
        // The first model's pooled features, as unit vectors: cosine
        // similarity is then a dot product.
        let embeddings = embeddings.then(|| {
            let pooled = features[0].to_kind(Kind::Float);
            let norms = pooled
                .norm_scalaropt_dim(2, [1].as_slice(), true)
                .clamp_min(1e-12);
            pooled / norms
        });
        Ok(Queued {
            items,
            top,
            captions,
            embeddings,
        })
    }

    /// How many classes the output keeps for `attribute` of model `index`.
    fn width(&self, attribute: &str, index: usize) -> i64 {
        TOP.min(self.models[index].1.spec.labels[attribute].len() as i64)
    }

    fn captions(&self, features: &[Tensor], beams: usize) -> Result<Option<Vec<String>>> {
        let Some(index) = self.captions else {
            return Ok(None);
        };
        let (_, model) = &self.models[index];
        let annotator = model
            .annotator()
            .ok_or_else(|| WorkerError::BadInput("captioner without annotator".into()))?;
        let vocab = model
            .spec
            .vocab
            .as_ref()
            .ok_or_else(|| WorkerError::BadInput("captioner without vocabulary".into()))?;
        let tokens = if beams > 1 {
            annotator.beam_search(&features[index], beams, model.spec.max_caption_len)
        } else {
            annotator.annotate(&features[index], model.spec.max_caption_len)
        };
        Ok(Some(tokens.iter().map(|t| vocab.decode(t)).collect()))
    }

    /// The output rows of a batch, one per item, in its order.
    pub(super) fn rows(&self, predicted: Predicted, schema: &SchemaRef) -> Result<RecordBatch> {
        let Predicted {
            items,
            top,
            captions,
            embeddings,
        } = predicted;
        let mut ids = StringBuilder::new();
        let mut versions = StringBuilder::new();
        let mut errors = StringBuilder::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for item in &items {
            ids.append_value(&item.item_id);
            versions.append_value(&self.version);
            match &item.slot {
                Ok(_) => errors.append_null(),
                Err(e) => errors.append_value(e.to_string()),
            }
        }
        // The loader reads every id as text; the output keeps the
        // catalogue's type, which the text of an integer casts back to exactly.
        let ids: ArrayRef = Arc::new(ids.finish());
        let id_type = schema.field(0).data_type();
        columns.push(if id_type == ids.data_type() {
            ids
        } else {
            let exact = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            arrow::compute::cast_with_options(&ids, id_type, &exact).map_err(|e| {
                WorkerError::BadInput(format!("item ids do not read back as {id_type}: {e}"))
            })?
        });
        let mut offset = 0;
        for (attribute, index) in &self.attributes {
            let map = &self.models[*index].1.spec.labels[attribute];
            let width = self.width(attribute, *index) as usize;
            let mut label = StringBuilder::new();
            let mut prob = Float32Builder::new();
            let mut top3 = ListBuilder::new(StringBuilder::new());
            let mut top3_prob = ListBuilder::new(Float32Builder::new());
            for item in &items {
                let found = match (&top, &item.slot) {
                    (Some(top), Ok(slot)) => top.item(*slot, offset, width),
                    _ => None,
                };
                match found {
                    Some((probs, classes)) => {
                        label.append_value(map.name(classes[0]));
                        prob.append_value(probs[0]);
                        for &class in classes {
                            top3.values().append_value(map.name(class));
                        }
                        top3.append(true);
                        for &p in probs {
                            top3_prob.values().append_value(p);
                        }
                        top3_prob.append(true);
                    }
                    None => {
                        label.append_null();
                        prob.append_null();
                        top3.append(false);
                        top3_prob.append(false);
                    }
                }
            }
            offset += width;
            columns.push(Arc::new(label.finish()));
            columns.push(Arc::new(prob.finish()));
            columns.push(Arc::new(top3.finish()));
            columns.push(Arc::new(top3_prob.finish()));
        }
        let mut caption = StringBuilder::new();
        for item in &items {
            match (&captions, &item.slot) {
                (Some(captions), Ok(slot)) => caption.append_option(captions.get(*slot)),
                _ => caption.append_null(),
            }
        }
        columns.push(Arc::new(caption.finish()));
        if let Ok(field) = schema.field_with_name(super::EMBEDDING) {
            columns.push(embedding_column(
                &items,
                embeddings.as_deref(),
                field.data_type(),
            )?);
        }
        columns.push(Arc::new(versions.finish()));
        columns.push(Arc::new(errors.finish()));
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)
            .map_err(atelier_catalog::CatalogError::from)?)
    }
}

/// The `embedding` column of `items` in the output's type: each decoded
/// item's vector, null for the others.
fn embedding_column(
    items: &[BatchItem],
    embeddings: Option<&[f32]>,
    output_type: &DataType,
) -> Result<ArrayRef> {
    let DataType::FixedSizeList(_, dim) = output_type else {
        return Err(WorkerError::Internal(format!(
            "the embedding column is {output_type}, not a fixed-size list"
        )));
    };
    let dim = *dim as usize;
    let mut column = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for item in items {
        let vector = match (&item.slot, embeddings) {
            (Ok(slot), Some(all)) => all.get(slot * dim..(slot + 1) * dim),
            _ => None,
        };
        match vector {
            Some(vector) => {
                column.values().append_slice(vector);
                column.append(true);
            }
            None => {
                column.values().append_nulls(dim);
                column.append(false);
            }
        }
    }
    let float32 = column.finish();
    // float16 is a cast of the float32 vectors.
    Ok(arrow::compute::cast(&float32, output_type).map_err(atelier_catalog::CatalogError::from)?)
}

/// Starts the copies of `probs` and `classes` to the host. From a GPU they go
/// into pinned memory without the host waiting (`non_blocking`), and an
/// event marks their end, so reading them later waits for nothing queued
/// after them.
fn to_host(probs: Tensor, classes: Tensor) -> Top {
    let Device::Cuda(index) = probs.device() else {
        return Top {
            probs,
            classes,
            arrival: Arrival::Now,
        };
    };
    let probs = probs.to_device_(Device::Cpu, Kind::Float, true, false);
    let classes = classes.to_device_(Device::Cpu, Kind::Int64, true, false);
    let arrival = match CompletionEvent::record(index) {
        Some(event) => Arrival::After(event),
        None => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    device = index,
                    "no cuda events; each batch's tags wait for the whole gpu"
                );
            });
            Arrival::DeviceIdle(index)
        }
    };
    Top {
        probs,
        classes,
        arrival,
    }
}

impl Top {
    fn read(self) -> Result<HostTop> {
        match self.arrival {
            Arrival::Now => {}
            Arrival::After(event) => event.wait().map_err(WorkerError::Device)?,
            Arrival::DeviceIdle(index) => tch::Cuda::synchronize(index as i64),
        }
        let stride = self.probs.size().get(1).copied().unwrap_or(0) as usize;
        Ok(HostTop {
            probs: Vec::<f32>::try_from(self.probs.contiguous().view(-1))?,
            classes: Vec::<i64>::try_from(self.classes.contiguous().view(-1))?,
            stride,
        })
    }
}

impl HostTop {
    /// The probabilities and classes of decoded item `slot` for the attribute
    /// whose columns start at `offset`.
    fn item(&self, slot: usize, offset: usize, width: usize) -> Option<(&[f32], &[i64])> {
        let start = slot * self.stride + offset;
        Some((
            self.probs.get(start..start + width)?,
            self.classes.get(start..start + width)?,
        ))
    }
}
