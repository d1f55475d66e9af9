//! Bulk tagging: every catalogue row in, one tag row out, in input order.
//!
//! Output: one Parquet file per input file, with the same name, under the output
//! prefix. Columns: `item_id`; per attribute `<attr>` (label), `<attr>_prob`,
//! `<attr>_top3` and `<attr>_top3_prob`; `caption`; with `--embeddings`,
//! `embedding` (L2-normalised pooled backbone features, see `similar`);
//! `model_version`; and `error`, set (and the tags null) for items whose
//! image could not be used.

mod predictions;
mod similar;
mod write;

use std::sync::Arc;
use std::time::Instant;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use atelier_catalog::{part_name, seal_tag_output, ManifestPart, TagManifest};
use atelier_catalog::{Catalog, ReadRange, StoreLocation};
use atelier_models::Model;
use atelier_models::{CheckpointDir, Manifest};
use atelier_proto::{CatalogColumns, EmbeddingPrecision, InferenceOptions};
use serde::Serialize;
use tch::Device;
use tokio::runtime::Handle;

pub use similar::{similar, Neighbour, EMBEDDING};
pub use write::Tagging;

/// An `embedding` column's type: a fixed-size list of floats, which pyarrow,
/// DuckDB (`array_cosine_similarity` after a cast to `FLOAT[n]`) and LanceDB
/// read as vectors.
fn embedding_type(precision: EmbeddingPrecision, dim: i32) -> DataType {
    let element = match precision {
        EmbeddingPrecision::Float32 => DataType::Float32,
        EmbeddingPrecision::Float16 => DataType::Float16,
    };
    DataType::FixedSizeList(Arc::new(Field::new("item", element, true)), dim)
}

use crate::error::{Result, WorkerError};
use crate::evaluate::{load_model, Layout};

#[derive(Debug, Clone)]
pub struct TagOptions {
    /// A classifier checkpoint, a captioner checkpoint, or one of each.
    pub checkpoints: Vec<String>,
    pub catalog: String,
    /// The catalogue's column names.
    pub columns: CatalogColumns,
    pub out: String,
    pub threads: usize,
    pub device: String,
    pub overwrite: bool,
    pub inference: InferenceOptions,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TagSummary {
    pub items: usize,
    pub errors: usize,
    pub files: Vec<String>,
    pub seconds: f64,
    pub model_version: String,
    pub stages: atelier_proto::StageTimes,
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
    pub stages: atelier_proto::StageTimes,
}

impl Taggers {
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The length of an embedding: the first model's pooled features.
    fn embedding_dim(&self) -> i32 {
        self.models
            .first()
            .map_or(0, |(_, model)| model.spec.arch.feature_dim() as i32)
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
            for attribute in model.spec.attributes() {
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
                || manifest.framing != first.0.framing
            {
                return Err(WorkerError::InvalidOptions(
                    "the checkpoints were trained at different image sizes, framings or normalisations; tag with each separately".into(),
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

    /// The output's columns: `item_id` in the catalogue's own id type (a
    /// join back to it needs no cast), and an `embedding` one when
    /// `embeddings` says how to store it.
    pub fn schema(&self, id_type: DataType, embeddings: Option<EmbeddingPrecision>) -> SchemaRef {
        let mut fields = vec![Field::new("item_id", id_type, false)];
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
        if let Some(precision) = embeddings {
            fields.push(Field::new(
                similar::EMBEDDING,
                embedding_type(precision, self.embedding_dim()),
                true,
            ));
        }
        fields.push(Field::new("model_version", DataType::Utf8, false));
        fields.push(Field::new("error", DataType::Utf8, true));
        Arc::new(Schema::new(fields))
    }
}

pub fn tag(
    options: &TagOptions,
    handle: &Handle,
    mut progress: impl FnMut(usize),
) -> Result<TagSummary> {
    let started = Instant::now();
    let device = crate::device::parse_device(&options.device)?;
    let layout = Layout::from(&options.inference);
    crate::device::check_gpu_decode(layout.gpu_decode, device)?;
    let taggers = Taggers::load(&options.checkpoints, handle, device, layout)?;
    let catalog = handle.block_on(Catalog::open_mapped(&options.catalog, &options.columns))?;
    let out = StoreLocation::parse(&options.out)?;
    handle.block_on(atelier_catalog::prepare_output(&out, options.overwrite))?;
    let mut summary = TagSummary {
        model_version: taggers.version.clone(),
        ..TagSummary::default()
    };
    let tagging = Tagging {
        device,
        beams: options.inference.beams,
        batch_size: options.inference.batch_size,
        threads: options.threads,
        fetch: options.inference.fetch,
        embeddings: options.inference.embeddings,
    };
    let created_unix_ms = unix_ms();
    let mut parts = Vec::with_capacity(catalog.files.len());
    for (index, file) in catalog.files.iter().enumerate() {
        let range = ReadRange::groups(
            index,
            (0..file.metadata.metadata().num_row_groups()).collect(),
        );
        let name = part_name(index);
        let target = out.child(&name);
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
        parts.push(ManifestPart {
            file: name,
            rows: written.rows as u64,
            items_with_errors: written.errors as u64,
            attempts: 1,
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    // The layout a cluster job's coordinator commits, so every reader of
    // an output (and `similar`) sees one format.
    let manifest = TagManifest {
        job_id: None,
        catalog: catalog.location.url(),
        columns: options.columns.clone(),
        checkpoints: options.checkpoints.clone(),
        model_version: summary.model_version.clone(),
        rows: summary.items as u64,
        items_with_errors: summary.errors as u64,
        shards: parts.len(),
        shards_retried: 0,
        created_unix_ms,
        started_unix_ms: Some(created_unix_ms),
        finished_unix_ms: unix_ms(),
        seconds: summary.seconds,
        parts,
    };
    handle.block_on(seal_tag_output(&out, manifest.to_json().into()))?;
    Ok(summary)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
