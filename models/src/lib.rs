//! atelier's models on tch, with the research code's structure: a ResNet
//! backbone with one linear head per attribute (`Classify`, or all attributes
//! pooled on one backbone), and a GRU captioner started from the image
//! features (`Annotator`). Checkpoints are safetensors plus a JSON manifest.
//! The modules are private; what other crates use is re-exported here.

mod annotator;
mod autocast;
mod checkpoint;
mod error;
mod fused;
mod labels;
mod model;
mod optim;
mod resnet;
mod vocab;

pub use autocast::{cpu_has_bf16, Bf16Autocast};
pub use checkpoint::{
    read_safetensors_file, CheckpointDir, Manifest, Normalization as SavedNormalization,
    FORMAT_VERSION, MANIFEST, METRICS,
};
pub use error::{ModelError, Result};
pub use labels::{LabelMap, IGNORE_INDEX, UNKNOWN_LABEL};
pub use model::{channels_last, Model, ModelSpec, BACKBONE_PREFIX};
pub use optim::{Optimizer, OptimizerConfig, Schedule};
pub use vocab::{tokenize, Vocab, END, PAD, START, UNK};
