//! Checkpoints under an object-store prefix.
//!
//! ```text
//! <prefix>/manifest.json                       what the run is and where it stands (written last)
//! <prefix>/weights-<step>-<writer>.safetensors  model variables, batch-norm buffers included
//! <prefix>/optimizer-<step>-<writer>.safetensors
//! <prefix>/metrics-<step>-<writer>.jsonl        one JSON object per logged step or epoch
//! ```
//!
//! The manifest names the files of its step, and it is committed only after
//! they are complete, so a reader never sees a half-written checkpoint; files
//! of earlier steps are removed afterwards. Each writer (a process training
//! alone, or one attempt of a gang's rank 0) names its files apart, so a
//! writer that lost its lease never replaces a file another one committed.

use std::collections::BTreeMap;

use atelier_catalog::StoreLocation;
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{ModelError, Result};
use crate::model::ModelSpec;
use crate::optim::{OptimizerConfig, Schedule};

pub const MANIFEST: &str = "manifest.json";
pub const METRICS: &str = "metrics.jsonl";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub atelier_version: String,
    pub model: ModelSpec,
    pub image_size: usize,
    /// How photos were fitted to the square; `test` and `tag` fit them the
    /// same way. Checkpoints from before it was recorded were centre-cropped.
    #[serde(default = "centre_crop")]
    pub framing: atelier_proto::Framing,
    pub normalization: Normalization,
    /// Epochs fully done.
    pub epoch: usize,
    /// Batches done within the current epoch (0 at an epoch boundary).
    pub batch_in_epoch: usize,
    /// Optimizer steps done.
    pub step: i64,
    pub weights: String,
    pub optimizer_state: Option<String>,
    pub optimizer: Option<OptimizerConfig>,
    pub schedule: Option<Schedule>,
    /// The latest validation metrics, by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The training options the run started with, for resuming with the same ones.
    #[serde(default)]
    pub train: serde_json::Value,
    /// The catalogue column names the run read its ids and labels under.
    #[serde(default)]
    pub columns: atelier_proto::CatalogColumns,
    /// The metrics log of this step ([`METRICS`] when absent).
    #[serde(default)]
    pub metrics_log: Option<String>,
}

fn centre_crop() -> atelier_proto::Framing {
    atelier_proto::Framing::CenterCrop
}

impl Manifest {
    /// The file that holds the metrics logged up to this step.
    pub fn metrics_file(&self) -> &str {
        self.metrics_log.as_deref().unwrap_or(METRICS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A checkpoint prefix and the operations on it.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub location: StoreLocation,
}

impl CheckpointDir {
    pub fn parse(url: &str) -> Result<Self> {
        Ok(Self {
            location: StoreLocation::parse(url)?,
        })
    }

    pub fn url(&self) -> String {
        self.location.url()
    }

    fn error(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Checkpoint {
            url: self.url(),
            reason: reason.into(),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let location = self.location.child(name);
        match location.store.get(&location.path).await {
            Ok(result) => Ok(Some(
                result
                    .bytes()
                    .await
                    .map_err(|e| self.error(format!("{name}: {e}")))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(format!("{name}: {e}"))),
        }
    }

    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        let location = self.location.child(name);
        location
            .store
            .put(&location.path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.error(format!("writing {name}: {e}")))?;
        Ok(())
    }

    /// The manifest, or `None` when the prefix holds no checkpoint yet.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        let Some(bytes) = self.get(MANIFEST).await? else {
            return Ok(None);
        };
        let mut manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("{MANIFEST} is not valid: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(self.error(format!(
                "format version {} (this atelier reads {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        manifest.model = manifest.model.reindexed();
        Ok(Some(manifest))
    }

    /// The manifest, failing when there is none.
    pub async fn require_manifest(&self) -> Result<Manifest> {
        self.manifest()
            .await?
            .ok_or_else(|| self.error(format!("no {MANIFEST}: not a checkpoint")))
    }

    /// Loads the weights file `name` into `model` (see [`Model::load_safetensors`]).
    pub async fn load_weights(&self, name: &str, model: &mut crate::Model) -> Result<usize> {
        let bytes = self
            .get(name)
            .await?
            .ok_or_else(|| self.error(format!("{name} is missing")))?;
        model
            .load_safetensors(&bytes)
            .map_err(|e| self.error(format!("{name}: {e}")))
    }

    pub async fn read_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let bytes = self
            .get(name)
            .await?
            .ok_or_else(|| self.error(format!("{name} is missing")))?;
        tensors_from_bytes(&bytes).map_err(|e| self.error(format!("{name}: {e}")))
    }

    /// Writes a step's weights, optimizer state and metrics log under names
    /// that carry `writer` (so that no other writer's files are ever
    /// replaced), points `manifest` at them, and returns the manifest to
    /// commit. Nothing a reader follows changes until it is committed.
    pub async fn stage(
        &self,
        manifest: &mut Manifest,
        weights: &[(String, Tensor)],
        optimizer: Option<&[(String, Tensor)]>,
        metrics: Bytes,
        writer: &str,
    ) -> Result<Bytes> {
        let writer: String = writer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let step = manifest.step;
        let weights_name = format!("weights-{step:08}-{writer}.safetensors");
        self.put(&weights_name, tensors_to_bytes(weights)?).await?;
        manifest.weights = weights_name;
        manifest.optimizer_state = match optimizer {
            Some(state) => {
                let name = format!("optimizer-{step:08}-{writer}.safetensors");
                self.put(&name, tensors_to_bytes(state)?).await?;
                Some(name)
            }
            None => None,
        };
        let metrics_name = format!("metrics-{step:08}-{writer}.jsonl");
        self.put(&metrics_name, metrics).await?;
        manifest.metrics_log = Some(metrics_name);
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| self.error(e.to_string()))?;
        Ok(Bytes::from(json))
    }

    /// Makes a staged manifest the checkpoint, here: for a process that
    /// trains alone. A gang's steps are committed by the coordinator.
    pub async fn commit(&self, manifest: Bytes) -> Result<()> {
        atelier_catalog::commit_checkpoint(&self.location, manifest)
            .await
            .map_err(|e| self.error(e.to_string()))
    }
}

/// Serialises named tensors as safetensors (through a temporary file, as tch writes files).
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Bytes> {
    let dir = tempfile::tempdir().map_err(|source| ModelError::Io {
        path: "temporary directory".into(),
        source,
    })?;
    let path = dir.path().join("t.safetensors");
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, &path)?;
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Bytes::from(bytes))
}

pub fn tensors_from_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::new();
    each_tensor(bytes, |name, tensor| {
        tensors.push((name, tensor));
        Ok(())
    })?;
    Ok(tensors)
}

/// Hands each tensor of a safetensors buffer to `f` in turn, each copied out
/// of `bytes` only when its turn comes.
pub fn each_tensor(bytes: &[u8], mut f: impl FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Corrupt(format!("not safetensors ({e})")))?;
    for (name, view) in file.tensors() {
        f(name, Tensor::try_from(view)?)?;
    }
    Ok(())
}

/// Reads a local safetensors file (bring-your-own backbone weights).
pub fn read_safetensors_file(path: &str) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| ModelError::Weights(format!("{path}: {e}")))
}
