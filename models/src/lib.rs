//! atelier's models on tch, with the research code's structure: a ResNet
//! backbone with one linear head per attribute (`Classify`, or all attributes
//! pooled on one backbone), and a GRU captioner started from the image
//! features (`Annotator`). Checkpoints are safetensors plus a JSON manifest.

pub mod annotator;
pub mod autocast;
pub mod checkpoint;
pub mod error;
pub mod fused;
pub mod labels;
pub mod model;
pub mod optim;
pub mod resnet;
pub mod vocab;

pub use error::{ModelError, Result};
pub use labels::{LabelMap, IGNORE_INDEX, UNKNOWN_LABEL};
pub use model::{Model, ModelSpec};
pub use vocab::Vocab;
