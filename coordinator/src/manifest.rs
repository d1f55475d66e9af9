//! `manifest.json` and `_SUCCESS` under a finished tag job's output prefix.

use std::collections::HashSet;
use std::sync::Arc;

use atelier_catalog::StoreLocation;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;

use atelier_proto::TaskWork;

use crate::records::TaskRecord;
use crate::state::Finalize;

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    job_id: &'a str,
    catalog: &'a str,
    checkpoints: &'a [String],
    model_version: &'a str,
    rows: u64,
    items_with_errors: u64,
    shards: usize,
    shards_retried: u32,
    created_unix_ms: i64,
    started_unix_ms: Option<i64>,
    finished_unix_ms: i64,
    seconds: f64,
    parts: Vec<Part<'a>>,
}

#[derive(Debug, Serialize)]
struct Part<'a> {
    file: &'a str,
    rows: u64,
    items_with_errors: u64,
    attempts: u32,
}

/// Checks that every part is there, then writes the manifest and, last,
/// `_SUCCESS`, but only if `seal` still allows it (the job was not cancelled
/// meanwhile; from then on it cannot be).
pub async fn write_manifest(
    finalize: Arc<Finalize>,
    seal: impl std::future::Future<Output = bool>,
) -> Result<(), String> {
    let atelier_proto::JobSpec::Tag(spec) = &finalize.job.spec else {
        return Ok(());
    };
    let output = StoreLocation::parse(&spec.output).map_err(|e| e.to_string())?;
    check_parts_exist(&output, &finalize).await?;
    let finished = crate::state::Now::read().unix_ms;
    // Tens of thousands of parts take milliseconds to serialise: too long
    // for a runtime thread that also answers workers.
    let body = off_runtime(&finalize, move |f| manifest_json(f, finished)).await??;
    put(&output, "manifest.json", Bytes::from(body)).await?;
    if !seal.await {
        return Err("the job was cancelled while its manifest was written; no _SUCCESS".into());
    }
    put(&output, "_SUCCESS", Bytes::new()).await
}

async fn put(output: &StoreLocation, name: &str, bytes: Bytes) -> Result<(), String> {
    let target = output.child(name);
    target
        .store
        .put(&target.path, bytes.into())
        .await
        .map(drop)
        .map_err(|e| format!("{}: {e}", target.url()))
}

async fn off_runtime<T: Send + 'static>(
    finalize: &Arc<Finalize>,
    work: impl FnOnce(&Finalize) -> T + Send + 'static,
) -> Result<T, String> {
    let finalize = Arc::clone(finalize);
    tokio::task::spawn_blocking(move || work(&finalize))
        .await
        .map_err(|e| format!("building the manifest: {e}"))
}

fn manifest_json(finalize: &Finalize, finished: i64) -> Result<Vec<u8>, String> {
    let job = &finalize.job;
    let atelier_proto::JobSpec::Tag(spec) = &job.spec else {
        return Err(format!("job {} is not a tag job", job.id));
    };
    let parts: Vec<Part<'_>> = finalize.parts.iter().map(part).collect();
    let manifest = Manifest {
        job_id: job.id.as_str(),
        catalog: &spec.catalog,
        checkpoints: &spec.checkpoints,
        model_version: &job.model_version,
        rows: finalize.parts.iter().map(|t| t.rows_written).sum(),
        items_with_errors: finalize.parts.iter().map(|t| t.items_failed).sum(),
        shards: finalize.parts.len(),
        shards_retried: finalize.parts.iter().map(|t| t.retries).sum(),
        created_unix_ms: job.created_unix_ms,
        started_unix_ms: job.started_unix_ms,
        finished_unix_ms: finished,
        seconds: (finished - job.started_unix_ms.unwrap_or(job.created_unix_ms)) as f64 / 1000.0,
        parts,
    };
    serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())
}

/// Lists the output prefix once rather than asking for each part: a job of
/// thousands of shards would otherwise spend a round trip per part (tens of
/// seconds on S3) before its `_SUCCESS`. A part the listing lacks is asked
/// for directly before the job is failed for it.
async fn check_parts_exist(output: &StoreLocation, finalize: &Arc<Finalize>) -> Result<(), String> {
    for url in unlisted_parts(output, finalize).await? {
        let location = StoreLocation::parse(&url).map_err(|e| e.to_string())?;
        location
            .store
            .head(&location.path)
            .await
            .map_err(|e| format!("part {url} reported written but not found: {e}"))?;
    }
    Ok(())
}

/// The parts that one listing of the output prefix does not show.
async fn unlisted_parts(
    output: &StoreLocation,
    finalize: &Arc<Finalize>,
) -> Result<Vec<String>, String> {
    let listed: HashSet<String> = output
        .store
        .list(Some(&output.path))
        .map_ok(|object| output.url_of(&object.location))
        .try_collect()
        .await
        .map_err(|e| format!("listing {}: {e}", output.url()))?;
    off_runtime(finalize, move |f| {
        f.parts
            .iter()
            .map(shard_output)
            .filter(|url| !listed.contains(*url))
            .map(str::to_string)
            .collect()
    })
    .await
}

/// The object the shard was told to write (not whatever the worker reported).
fn shard_output(task: &TaskRecord) -> &str {
    match &task.work {
        TaskWork::Tag(shard) => &shard.output,
        _ => &task.output,
    }
}

fn part(task: &TaskRecord) -> Part<'_> {
    let url = shard_output(task);
    Part {
        file: url.rsplit('/').next().unwrap_or(url),
        rows: task.rows_written,
        items_with_errors: task.items_failed,
        attempts: task.attempt,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use atelier_proto::{FileRowGroups, JobSpec, JobState, ShardWork, TagJobSpec};

    use super::*;
    use crate::plan::shard_output as part_url;
    use crate::records::JobRecord;

    fn finalize(output: &str, shards: usize) -> Finalize {
        let location = StoreLocation::parse(output).unwrap();
        let parts = (0..shards)
            .map(|index| {
                let work = TaskWork::Tag(ShardWork {
                    catalog: "file:///catalog".into(),
                    ranges: vec![FileRowGroups {
                        file: "file:///catalog/part-0.parquet".into(),
                        row_groups: vec![index as u32],
                        rows: None,
                    }],
                    checkpoints: vec![],
                    output: part_url(&location, index),
                    inference: Default::default(),
                    rows: 10,
                });
                let mut task = TaskRecord::new(&"job-1".into(), index as u32, work);
                task.rows_written = 10;
                task
            })
            .collect();
        let job = JobRecord {
            id: "job-1".into(),
            spec: JobSpec::Tag(TagJobSpec {
                catalog: "file:///catalog".into(),
                checkpoints: vec![],
                output: output.into(),
                target_shard_rows: None,
                max_attempts: None,
                inference: Default::default(),
                overwrite: false,
            }),
            state: JobState::Running,
            created_unix_ms: 1,
            updated_unix_ms: 1,
            started_unix_ms: Some(1),
            finished_unix_ms: None,
            error: None,
            max_attempts: 3,
            task_count: shards as u32,
            finalizing: true,
            metrics: BTreeMap::new(),
            model_version: String::new(),
            restarts: Vec::new(),
            gang_waiting_since_unix_ms: None,
        };
        Finalize { job, parts }
    }

    #[test]
    fn the_manifest_waits_for_every_part_and_names_a_missing_one() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().to_str().unwrap();
        let finalize = finalize(output, 3);
        for index in [0, 2] {
            std::fs::write(dir.path().join(format!("part-{index:05}.parquet")), b"x").unwrap();
        }
        let finalize = Arc::new(finalize);
        let error = runtime
            .block_on(write_manifest(Arc::clone(&finalize), async { true }))
            .unwrap_err();
        assert!(
            error.contains("part-00001.parquet") && error.contains("not found"),
            "{error}"
        );
        assert!(!dir.path().join("_SUCCESS").exists());

        std::fs::write(dir.path().join("part-00001.parquet"), b"x").unwrap();
        // One listing finds them all: no part needs a request of its own.
        let location = StoreLocation::parse(output).unwrap();
        let unlisted = runtime.block_on(unlisted_parts(&location, &finalize));
        assert_eq!(unlisted.unwrap(), Vec::<String>::new());
        // Cancelled while the manifest was written: no _SUCCESS.
        let refused = runtime.block_on(write_manifest(Arc::clone(&finalize), async { false }));
        assert!(refused.unwrap_err().contains("cancelled"));
        assert!(!dir.path().join("_SUCCESS").exists());
        runtime
            .block_on(write_manifest(finalize, async { true }))
            .unwrap();
        assert!(dir.path().join("_SUCCESS").exists());
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["rows"], 30);
        assert_eq!(manifest["parts"].as_array().unwrap().len(), 3);
    }
}
