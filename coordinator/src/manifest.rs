//! `manifest.json` and `_SUCCESS` under a finished tag job's output prefix.

use atelier_catalog::StoreLocation;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde::Serialize;

use atelier_proto::domain::TaskWork;

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

/// Checks that every part is there, then writes the manifest and, last, `_SUCCESS`.
pub async fn write_manifest(finalize: &Finalize) -> Result<(), String> {
    let job = &finalize.job;
    let atelier_proto::domain::JobSpec::Tag(spec) = &job.spec else {
        return Ok(());
    };
    let output = StoreLocation::parse(&spec.output).map_err(|e| e.to_string())?;
    let parts: Vec<Part<'_>> = finalize.parts.iter().map(part).collect();
    for task in &finalize.parts {
        let url = shard_output(task);
        let location = StoreLocation::parse(url).map_err(|e| e.to_string())?;
        location
            .store
            .head(&location.path)
            .await
            .map_err(|e| format!("part {url} reported written but not found: {e}"))?;
    }
    let finished = crate::state::unix_ms();
    let manifest = Manifest {
        job_id: &job.id,
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
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    for (name, bytes) in [
        ("manifest.json", Bytes::from(body)),
        ("_SUCCESS", Bytes::new()),
    ] {
        let target = output.child(name);
        target
            .store
            .put(&target.path, bytes.into())
            .await
            .map_err(|e| format!("{}: {e}", target.url()))?;
    }
    Ok(())
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
