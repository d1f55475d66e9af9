//! Bulk tagging: every catalogue row in, one tag row out, in input order.
//!
//! Output: one Parquet file per input file, with the same name, under the output
//! prefix. Columns: `item_id`; per attribute `<attr>` (label), `<attr>_prob`,
//! `<attr>_top3` and `<attr>_top3_prob`; `caption`; `model_version`; and
//! `error`, set (and the tags null) for items whose image could not be used.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use atelier_catalog::{Catalog, ReadRange, StoreLocation};
use atelier_models::checkpoint::{CheckpointDir, Manifest};
use atelier_models::Model;
use atelier_pipeline::{Batch, ImageLoader, Pixels};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use serde::Serialize;
use tch::{Device, Kind, Tensor};
use tokio::runtime::Handle;

use crate::error::{Result, WorkerError};
use crate::evaluate::{inference_loader_options, load_model, Layout};

#[derive(Debug, Clone)]
pub struct TagOptions {
    /// A classifier checkpoint, a captioner checkpoint, or one of each.
    pub checkpoints: Vec<String>,
    pub catalog: String,
    pub out: String,
    pub batch_size: usize,
    pub threads: usize,
    pub device: String,
    pub beams: usize,
    pub overwrite: bool,
    pub layout: Layout,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TagSummary {
    pub items: usize,
    pub errors: usize,
    pub files: Vec<String>,
    pub seconds: f64,
    pub model_version: String,
    pub stages: atelier_proto::domain::StageTimes,
}

/// Models loaded for tagging, with what they predict.
pub struct Taggers {
    models: Vec<(Manifest, Model)>,
    attributes: Vec<(String, usize)>,
    captions: Option<usize>,
    version: String,
    gpu_decode: bool,
}

impl std::fmt::Debug for Taggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taggers")
            .field("attributes", &self.attributes)
            .field("version", &self.version)
            .finish()
    }
}

/// How many rows of one output file are written, how many of them carry an
/// error, and where the time went so far (pipeline stages summed over its
/// threads; forward and write on the calling thread).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Written {
    pub rows: usize,
    pub errors: usize,
    pub stages: atelier_proto::domain::StageTimes,
}

impl Taggers {
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn load(
        checkpoints: &[String],
        handle: &Handle,
        device: Device,
        layout: Layout,
    ) -> Result<Self> {
        if checkpoints.is_empty() || checkpoints.len() > 2 {
            return Err(WorkerError::InvalidOptions(
                "give one or two --checkpoint (a classifier and/or a captioner)".into(),
            ));
        }
        let mut models = Vec::new();
        let mut attributes = Vec::new();
        let mut captions = None;
        let mut versions = Vec::new();
        for (index, url) in checkpoints.iter().enumerate() {
            let dir = CheckpointDir::parse(url)?;
            let (manifest, model) = load_model(&dir, handle, device, layout)?;
            for attribute in model.spec.task.attributes() {
                if attributes.iter().any(|(a, _)| a == attribute) {
                    return Err(WorkerError::InvalidOptions(format!(
                        "two checkpoints predict {attribute}"
                    )));
                }
                attributes.push((attribute.to_string(), index));
            }
            if model.annotator().is_some() {
                if captions.is_some() {
                    return Err(WorkerError::InvalidOptions(
                        "two captioner checkpoints".into(),
                    ));
                }
                captions = Some(index);
            }
            versions.push(format!("{}#step={}", dir.url(), manifest.step));
            models.push((manifest, model));
        }
        let (first, rest) = models
            .split_first()
            .ok_or_else(|| WorkerError::InvalidOptions("no checkpoint".into()))?;
        for (manifest, _) in rest {
            if manifest.image_size != first.0.image_size
                || manifest.normalization != first.0.normalization
            {
                return Err(WorkerError::InvalidOptions(
                    "the checkpoints were trained at different image sizes or normalisations; tag with each separately".into(),
                ));
            }
        }
        Ok(Self {
            models,
            attributes,
            captions,
            version: versions.join(" "),
            gpu_decode: layout.gpu_decode && device.is_cuda(),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new("item_id", DataType::Utf8, false)];
        for (attribute, _) in &self.attributes {
            fields.push(Field::new(attribute, DataType::Utf8, true));
            fields.push(Field::new(
                format!("{attribute}_prob"),
                DataType::Float32,
                true,
            ));
            fields.push(Field::new(
                format!("{attribute}_top3"),
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ));
            fields.push(Field::new(
                format!("{attribute}_top3_prob"),
                DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
                true,
            ));
        }
        fields.push(Field::new("caption", DataType::Utf8, true));
        fields.push(Field::new("model_version", DataType::Utf8, false));
        fields.push(Field::new("error", DataType::Utf8, true));
        Arc::new(Schema::new(fields))
    }

    /// Predictions for the decoded items of `batch`, then the output rows for all of them.
    /// `images`: the decoded items of `batch` on the device, none if none decoded.
    fn tag(
        &self,
        batch: &Batch,
        images: Option<&Tensor>,
        schema: &SchemaRef,
        beams: usize,
    ) -> Result<RecordBatch> {
        let _guard = tch::no_grad_guard();
        let mut features: Vec<Option<Tensor>> = Vec::new();
        for (_, model) in &self.models {
            features.push(images.map(|x| model.features(x, false)));
        }
        let mut ids = StringBuilder::new();
        let mut versions = StringBuilder::new();
        let mut errors = StringBuilder::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for item in &batch.items {
            ids.append_value(&item.item_id);
            versions.append_value(&self.version);
            match &item.slot {
                Ok(_) => errors.append_null(),
                Err(e) => errors.append_value(e.to_string()),
            }
        }
        columns.push(Arc::new(ids.finish()));
        for (attribute, index) in &self.attributes {
            let (_, model) = &self.models[*index];
            let map = &model.spec.labels[attribute];
            let top = features[*index].as_ref().map(|f| {
                let logits = model
                    .logits(f)
                    .into_iter()
                    .find(|(n, _)| n == attribute)
                    .map(|(_, l)| l);
                logits.map(|l| {
                    let probs = l.softmax(-1, Kind::Float);
                    let (values, indices) = probs.topk(3.min(map.len() as i64), -1, true, true);
                    (
                        Vec::<Vec<f32>>::try_from(&values).unwrap_or_default(),
                        Vec::<Vec<i64>>::try_from(&indices).unwrap_or_default(),
                    )
                })
            });
            let (values, indices) = top.flatten().unwrap_or_default();
            let mut label = StringBuilder::new();
            let mut prob = Float32Builder::new();
            let mut top3 = ListBuilder::new(StringBuilder::new());
            let mut top3_prob = ListBuilder::new(Float32Builder::new());
            for item in &batch.items {
                match item
                    .slot
                    .as_ref()
                    .ok()
                    .and_then(|&slot| Some((values.get(slot)?, indices.get(slot)?)))
                {
                    Some((v, i)) => {
                        label.append_value(map.name(i[0]));
                        prob.append_value(v[0]);
                        for &class in i {
                            top3.values().append_value(map.name(class));
                        }
                        top3.append(true);
                        for &p in v {
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
            columns.push(Arc::new(label.finish()));
            columns.push(Arc::new(prob.finish()));
            columns.push(Arc::new(top3.finish()));
            columns.push(Arc::new(top3_prob.finish()));
        }
        let mut captions = StringBuilder::new();
        let decoded = match (self.captions, images.is_some()) {
            (Some(index), true) => {
                let (_, model) = &self.models[index];
                let annotator = model
                    .annotator()
                    .ok_or_else(|| WorkerError::Data("captioner without annotator".into()))?;
                let feats = features[index]
                    .as_ref()
                    .ok_or_else(|| WorkerError::Data("no features".into()))?;
                let tokens = if beams > 1 {
                    annotator.beam_search(feats, beams, model.spec.max_caption_len)
                } else {
                    annotator.annotate(feats, model.spec.max_caption_len)
                };
                let vocab = model
                    .spec
                    .vocab
                    .as_ref()
                    .ok_or_else(|| WorkerError::Data("captioner without vocabulary".into()))?;
                Some(tokens.iter().map(|t| vocab.decode(t)).collect::<Vec<_>>())
            }
            _ => None,
        };
        for item in &batch.items {
            match (&decoded, &item.slot) {
                (Some(d), Ok(slot)) => captions.append_option(d.get(*slot)),
                _ => captions.append_null(),
            }
        }
        columns.push(Arc::new(captions.finish()));
        columns.push(Arc::new(versions.finish()));
        columns.push(Arc::new(errors.finish()));
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)
            .map_err(atelier_catalog::CatalogError::from)?)
    }
}

/// How a run of `Taggers::write` uses the device and the decode threads.
#[derive(Debug, Clone, Copy)]
pub struct Tagging {
    pub device: Device,
    pub beams: usize,
    pub batch_size: usize,
    pub threads: usize,
}

impl Taggers {
    /// Tags `ranges` of `catalog` into the one Parquet object `target`, rows in
    /// input order. The object appears only when complete (`BufWriter` puts it
    /// at close), so a retried shard replaces it whole. Stops with
    /// `WorkerError::Cancelled` between batches once `cancelled` says so.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        tagging: &Tagging,
        catalog: &Catalog,
        ranges: Vec<ReadRange>,
        target: &StoreLocation,
        handle: &Handle,
        cancelled: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(Written),
    ) -> Result<Written> {
        let schema = self.schema();
        let loader_options = inference_loader_options(
            &self.models[0].0,
            tagging.batch_size,
            tagging.threads,
            tagging.device,
            self.gpu_decode,
        );
        let loader = ImageLoader::new(catalog, ranges, loader_options, handle.clone())?;
        let stats = loader.stats();
        let parquet_error = |source| atelier_catalog::CatalogError::Parquet {
            file: target.url(),
            source,
        };
        let writer = BufWriter::new(Arc::clone(&target.store), target.path.clone());
        let mut writer =
            AsyncArrowWriter::try_new(writer, Arc::clone(&schema), None).map_err(parquet_error)?;
        let mut written = Written::default();
        for batch in loader {
            if cancelled() {
                return Err(WorkerError::Cancelled);
            }
            let mut batch = batch?;
            let encoded = matches!(batch.pixels, Pixels::Encoded { .. });
            let upload = Instant::now();
            let images = (batch.ok_count() > 0)
                .then(|| crate::device::device_images(&mut batch, tagging.device));
            let seconds = upload.elapsed().as_secs_f64();
            if encoded {
                written.stages.gpu_decode += seconds;
            } else {
                written.stages.upload += seconds;
            }
            let forward = Instant::now();
            let rows = self.tag(&batch, images.as_ref(), &schema, tagging.beams)?;
            written.stages.forward += forward.elapsed().as_secs_f64();
            written.rows += rows.num_rows();
            written.errors += batch.items.len() - batch.ok_count();
            let write = Instant::now();
            handle
                .block_on(writer.write(&rows))
                .map_err(parquet_error)?;
            written.stages.write += write.elapsed().as_secs_f64();
            pipeline_stages(&mut written, &stats.snapshot());
            progress(written);
        }
        let write = Instant::now();
        handle.block_on(writer.close()).map_err(parquet_error)?;
        written.stages.write += write.elapsed().as_secs_f64();
        pipeline_stages(&mut written, &stats.snapshot());
        Ok(written)
    }
}

fn pipeline_stages(written: &mut Written, stats: &atelier_pipeline::StatsSnapshot) {
    written.stages.read = stats.read_s;
    written.stages.fetch = stats.fetch_s;
    written.stages.decode = stats.decode_s;
    written.stages.transform = stats.transform_s;
}

pub fn tag(
    options: &TagOptions,
    handle: &Handle,
    mut progress: impl FnMut(usize),
) -> Result<TagSummary> {
    let started = Instant::now();
    let device = crate::device::parse_device(&options.device)?;
    crate::device::check_gpu_decode(options.layout.gpu_decode, device)?;
    let taggers = Taggers::load(&options.checkpoints, handle, device, options.layout)?;
    let catalog = handle.block_on(Catalog::open(&options.catalog))?;
    let out = StoreLocation::parse(&options.out)?;
    handle.block_on(atelier_catalog::synthetic::prepare_output(
        &out,
        options.overwrite,
    ))?;
    let mut summary = TagSummary {
        model_version: taggers.version.clone(),
        ..TagSummary::default()
    };
    let tagging = Tagging {
        device,
        beams: options.beams,
        batch_size: options.batch_size,
        threads: options.threads,
    };
    for (index, file) in catalog.files.iter().enumerate() {
        let range = ReadRange::groups(
            index,
            (0..file.metadata.metadata().num_row_groups()).collect(),
        );
        let target = out.child(&file.location.file_name());
        let before = summary.items;
        let written = taggers.write(
            &tagging,
            &catalog,
            vec![range],
            &target,
            handle,
            &|| false,
            &mut |w| progress(before + w.rows),
        )?;
        summary.items += written.rows;
        summary.errors += written.errors;
        summary.stages.add(&written.stages);
        summary.files.push(target.url());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
