//! The layout of a tag output prefix, one for every writer (a cluster job's
//! coordinator, a single-process `atelier tag`) and every reader:
//!
//! ```text
//! <prefix>/part-00000.parquet ...   the rows, one part per shard (or per catalogue file)
//! <prefix>/_manifest.json           what ran and what each part holds (written after the parts)
//! <prefix>/_SUCCESS                 empty, written last: the output is complete
//! ```
//!
//! The metadata names start with `_`, which dataset readers (pyarrow,
//! pandas, Spark, Hive) skip, so the prefix itself opens as one Parquet
//! dataset.

use atelier_proto::CatalogColumns;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::{CatalogError, Result};
use crate::store::StoreLocation;

pub const TAG_MANIFEST: &str = "_manifest.json";
pub const SUCCESS: &str = "_SUCCESS";

/// The name of part `index` under the prefix.
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// `_manifest.json`: what ran, the totals, and every part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagManifest {
    /// The cluster job that wrote the output; absent for `atelier tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub catalog: String,
    /// The catalogue's column names the run read.
    #[serde(default)]
    pub columns: CatalogColumns,
    pub checkpoints: Vec<String>,
    pub model_version: String,
    /// One per catalogue row.
    pub rows: u64,
    pub items_with_errors: u64,
    pub shards: usize,
    pub shards_retried: u32,
    pub created_unix_ms: i64,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: i64,
    pub seconds: f64,
    pub parts: Vec<ManifestPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// Its name under the prefix.
    pub file: String,
    pub rows: u64,
    pub items_with_errors: u64,
    pub attempts: u32,
}

impl TagManifest {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Writes `_manifest.json` and then `_SUCCESS` under `output`, whose parts
/// are all in place: a reader that sees `_SUCCESS` sees a whole output.
pub async fn seal_tag_output(output: &StoreLocation, manifest_json: Bytes) -> Result<()> {
    for (name, body) in [(TAG_MANIFEST, manifest_json), (SUCCESS, Bytes::new())] {
        let target = output.child(name);
        target
            .store
            .put(&target.path, body.into())
            .await
            .map_err(|e| CatalogError::store(target.url(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_are_hidden_from_dataset_readers_and_parts_are_not() {
        let prefix = object_store::path::Path::from("tags/2026-12-03");
        let hidden = |name: &str| crate::is_hidden(&prefix, &prefix.clone().join(name));
        assert!(hidden(TAG_MANIFEST) && hidden(SUCCESS));
        assert!(!hidden(&part_name(7)));
        assert_eq!(part_name(7), "part-00007.parquet");
    }
}
