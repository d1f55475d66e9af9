//! The options of atelier's jobs, torch-free: what a user can ask of a
//! training run ([`TrainOptions`], [`GangOptions`]) and of inference
//! ([`InferenceOptions`]), the catalogue's column names
//! ([`CatalogColumns`]), the named choices among them, and their defaults.
//! The CLI derives its flags from these types (feature `cli`), `convert`
//! maps them to the wire, the coordinator checks them at submit and the
//! worker runs them.

mod columns;
mod inference;
mod names;
pub(crate) mod serde_compat;
mod train;

pub use columns::{CatalogColumns, LabelColumn};
pub use inference::{FetchOptions, InferenceOptions};
pub use names::{
    Arch, EmbeddingPrecision, Framing, Label, OptimizerKind, ScheduleKind, Task, UnknownName,
};
pub use train::{GangOptions, TrainOptions};
