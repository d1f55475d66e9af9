//! Making a written checkpoint step *the* checkpoint: its manifest is put in
//! one write (readers follow the manifest), then the files that only the
//! previous manifest named are deleted.
//!
//! Torch-free, so that the coordinator, which commits the steps of a
//! gang's rank 0 only while that rank holds its lease, and a process that
//! trains alone commit one way.

use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde_json::Value;

use crate::error::{CatalogError, Result};
use crate::store::StoreLocation;

/// The object readers follow; written last.
pub const CHECKPOINT_MANIFEST: &str = "manifest.json";

/// A copy of the committed step's metrics log under a name that does not
/// change, for people and plotting tools.
pub const CHECKPOINT_METRICS: &str = "metrics.jsonl";

/// The manifest fields that name a file of its step.
const STEP_FILES: [&str; 3] = ["weights", "optimizer_state", "metrics_log"];

/// Puts `manifest` as `dir`'s manifest, copies the metrics log it names to
/// [`CHECKPOINT_METRICS`], then deletes the step files the previous
/// manifest named and this one does not. The files `manifest`
/// names must be plain names inside `dir` (no `/`), already written.
pub async fn commit_checkpoint(dir: &StoreLocation, manifest: Bytes) -> Result<()> {
    let invalid =
        |reason: String| CatalogError::InvalidArgument(format!("{}: {reason}", dir.url()));
    let new: Value = serde_json::from_slice(&manifest)
        .map_err(|e| invalid(format!("the manifest to commit is not JSON: {e}")))?;
    let keep = step_files(&new);
    if let Some(bad) = keep.iter().find(|name| !is_plain(name)) {
        return Err(invalid(format!(
            "the manifest names {bad:?}, not a file of the checkpoint"
        )));
    }
    let target = dir.child(CHECKPOINT_MANIFEST);
    let previous = match target.store.get(&target.path).await {
        Ok(result) => result
            .bytes()
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(CatalogError::store(target.url(), e)),
    };
    target
        .store
        .put(&target.path, manifest.into())
        .await
        .map_err(|e| CatalogError::store(target.url(), e))?;
    if let Some(log) = new.get("metrics_log").and_then(Value::as_str) {
        let (from, to) = (dir.child(log), dir.child(CHECKPOINT_METRICS));
        from.store
            .copy(&from.path, &to.path)
            .await
            .map_err(|e| CatalogError::store(to.url(), e))?;
    }
    for old in previous.as_ref().map(step_files).unwrap_or_default() {
        if keep.contains(&old) || !is_plain(&old) {
            continue;
        }
        let file = dir.child(&old);
        match file.store.delete(&file.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            // The new step stands; an old file left over only costs space.
            Err(e) => {
                tracing::warn!(file = %file.url(), error = %e, "could not remove an old checkpoint file");
            }
        }
    }
    Ok(())
}

fn step_files(manifest: &Value) -> Vec<String> {
    STEP_FILES
        .iter()
        .filter_map(|field| manifest.get(field)?.as_str().map(str::to_string))
        .collect()
}

fn is_plain(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(step: u32) -> Bytes {
        Bytes::from(
            serde_json::json!({
                "step": step,
                "weights": format!("weights-{step}.safetensors"),
                "optimizer_state": format!("optimizer-{step}.safetensors"),
                "metrics_log": format!("metrics-{step}.jsonl"),
            })
            .to_string(),
        )
    }

    #[test]
    fn a_commit_replaces_the_manifest_then_removes_only_what_the_old_one_named() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::parse(dir.path().to_str().unwrap()).unwrap();
        for name in [
            "weights-1.safetensors",
            "optimizer-1.safetensors",
            "weights-2.safetensors",
            "optimizer-2.safetensors",
            "weights-3-staged-by-another.safetensors",
            "metrics-1.jsonl",
            "metrics-2.jsonl",
        ] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        runtime
            .block_on(commit_checkpoint(&location, manifest(1)))
            .unwrap();
        runtime
            .block_on(commit_checkpoint(&location, manifest(2)))
            .unwrap();
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk["step"], 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap(),
            "metrics-2.jsonl"
        );
        assert!(!dir.path().join("metrics-1.jsonl").exists());
        assert!(!dir.path().join("weights-1.safetensors").exists());
        assert!(!dir.path().join("optimizer-1.safetensors").exists());
        assert!(dir.path().join("weights-2.safetensors").exists());
        // A file no manifest named (another writer's, not committed) stays.
        assert!(dir
            .path()
            .join("weights-3-staged-by-another.safetensors")
            .exists());

        let outside = Bytes::from(r#"{"weights": "../elsewhere/weights.safetensors"}"#);
        let error = runtime
            .block_on(commit_checkpoint(&location, outside))
            .unwrap_err();
        assert!(error.to_string().contains("elsewhere"), "{error}");
        let on_disk = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
        assert!(on_disk.contains("\"step\":2"), "{on_disk}");
    }
}
