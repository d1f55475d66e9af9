//! Committing a finished tag job's output: its parts, `_manifest.json` and
//! `_SUCCESS` (the layout is `atelier_catalog::TagManifest`'s).

use std::collections::HashSet;
use std::sync::Arc;

use atelier_catalog::{seal_tag_output, CatalogError, ManifestPart, StoreLocation, TagManifest};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use atelier_proto::{staged_part, TaskWork, STAGING_DIR};

use crate::error::{CoordinatorError, Result};
use crate::records::TaskRecord;
use crate::state::Finalize;

/// Commits a finished tag job's output: checks that every shard's
/// completing attempt wrote its staging object, asks `seal` whether the job
/// may still end well (it was not cancelled meanwhile; from then on it
/// cannot be), renames each of those objects to its part's final name,
/// writes the manifest and, last, `_SUCCESS`, then clears the job's staging
/// prefix. Nothing under a final name is written before the seal, so a job
/// cancelled while finalizing leaves none, and only this writer, for a job
/// that can no longer be cancelled, ever writes one.
///
/// Run again after a coordinator restart, it picks up where it stopped: a
/// part already renamed is not renamed again.
pub async fn write_manifest(
    finalize: Arc<Finalize>,
    seal: impl std::future::Future<Output = bool>,
) -> Result<()> {
    let atelier_proto::JobSpec::Tag(spec) = &finalize.job.spec else {
        return Ok(());
    };
    let output = StoreLocation::parse(&spec.output).map_err(|source| CoordinatorError::Commit {
        what: "the output".into(),
        source,
    })?;
    let commits = off_runtime(&finalize, {
        let output_url = output.url();
        move |f| commits(&output_url, f)
    })
    .await??;
    let pending = uncommitted(&output, &commits).await?;
    let finished = crate::state::Now::read().unix_ms;
    // Tens of thousands of parts take milliseconds to serialise: too long
    // for a runtime thread that also answers workers.
    let body = off_runtime(&finalize, move |f| manifest_json(f, finished)).await??;
    if !seal.await {
        return Err(CoordinatorError::Output {
            url: output.url(),
            reason: "the job was cancelled while its output was committed; nothing was".into(),
        });
    }
    rename_all(&output, pending).await?;
    seal_tag_output(&output, Bytes::from(body))
        .await
        .map_err(|source| CoordinatorError::Commit {
            what: "writing the manifest".into(),
            source,
        })?;
    let staging = output.child(&format!("{STAGING_DIR}/{}", finalize.job.id));
    if let Err(e) = delete_all(&staging).await {
        // The output is whole; what is left under `_attempts/` is never read.
        tracing::warn!(job = %finalize.job.id, error = %e, "staging objects left behind");
    }
    remove_empty_folders(&staging);
    Ok(())
}

/// On local files, the folders the staging objects left: object stores have
/// no folders, but a directory listing would show them. Folders that still
/// hold something (a late attempt's object) stay.
fn remove_empty_folders(staging: &StoreLocation) {
    let Ok(url) = url::Url::parse(&staging.url()) else {
        return;
    };
    if url.scheme() != "file" {
        return;
    }
    if let Ok(job_folder) = url.to_file_path() {
        let _ = std::fs::remove_dir(&job_folder);
        if let Some(parent) = job_folder.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A part to commit: the completing attempt's staging object and the
/// part's own name, both relative to the output prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Commit {
    staged: String,
    part: String,
}

fn commits(output_url: &str, finalize: &Finalize) -> Result<Vec<Commit>> {
    let prefix = format!("{}/", output_url.trim_end_matches('/'));
    finalize
        .parts
        .iter()
        .map(|task| {
            let part_url = shard_output(task);
            let staged_url = staged_part(part_url, &task.job_id, task.attempt);
            let relative = |url: &str| {
                url.strip_prefix(&prefix)
                    .map(str::to_string)
                    .ok_or_else(|| CoordinatorError::Output {
                        url: output_url.to_string(),
                        reason: format!("part {url} lies outside it"),
                    })
            };
            Ok(Commit {
                staged: relative(&staged_url)?,
                part: relative(part_url)?,
            })
        })
        .collect()
}

/// The commits still to do, after one listing of the output prefix: a
/// staging object that is there is renamed; a part whose staging object is
/// gone but whose final object is there was committed by an earlier run.
/// Anything the listing lacks is asked for directly before the job is
/// failed for it: a job of thousands of shards would otherwise spend a round
/// trip per part (tens of seconds on S3).
async fn uncommitted(output: &StoreLocation, commits: &[Commit]) -> Result<Vec<Commit>> {
    let listed: HashSet<String> = output
        .store
        .list(Some(&output.path))
        .map_ok(|object| output.url_of(&object.location))
        .try_collect()
        .await
        .map_err(|e| store_failure("listing", output.url(), e))?;
    let mut pending = Vec::new();
    for commit in commits {
        let staged = output.child(&commit.staged);
        if listed.contains(&staged.url()) {
            pending.push(commit.clone());
            continue;
        }
        let part = output.child(&commit.part);
        if listed.contains(&part.url()) {
            continue;
        }
        match staged.store.head(&staged.path).await {
            Ok(_) => pending.push(commit.clone()),
            Err(object_store::Error::NotFound { .. }) => match part.store.head(&part.path).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(CoordinatorError::Output {
                        url: part.url(),
                        reason: format!(
                            "reported written, but neither it nor {} exists",
                            staged.url()
                        ),
                    })
                }
                Err(e) => return Err(store_failure("reading", part.url(), e)),
            },
            // An outage is not a missing part: the commit is tried again.
            Err(e) => return Err(store_failure("reading", staged.url(), e)),
        }
    }
    Ok(pending)
}

fn store_failure(doing: &str, url: String, error: object_store::Error) -> CoordinatorError {
    CoordinatorError::Commit {
        what: doing.to_string(),
        source: CatalogError::store(url, error),
    }
}

/// Renames each staging object to its part's name, a few at a time.
async fn rename_all(output: &StoreLocation, commits: Vec<Commit>) -> Result<()> {
    futures::stream::iter(commits)
        .map(|commit| async move {
            let (staged, part) = (output.child(&commit.staged), output.child(&commit.part));
            output
                .store
                .rename(&staged.path, &part.path)
                .await
                .map_err(|e| {
                    store_failure(&format!("renaming it to {}", part.url()), staged.url(), e)
                })
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

async fn delete_all(prefix: &StoreLocation) -> Result<()> {
    let objects: Vec<object_store::path::Path> = prefix
        .store
        .list(Some(&prefix.path))
        .map_ok(|object| object.location)
        .try_collect()
        .await
        .map_err(|e| store_failure("listing", prefix.url(), e))?;
    for path in objects {
        prefix
            .store
            .delete(&path)
            .await
            .map_err(|e| store_failure("deleting", prefix.url_of(&path), e))?;
    }
    Ok(())
}

async fn off_runtime<T: Send + 'static>(
    finalize: &Arc<Finalize>,
    work: impl FnOnce(&Finalize) -> T + Send + 'static,
) -> Result<T> {
    let finalize = Arc::clone(finalize);
    tokio::task::spawn_blocking(move || work(&finalize))
        .await
        .map_err(|e| CoordinatorError::Internal(format!("building the manifest: {e}")))
}

fn manifest_json(finalize: &Finalize, finished: i64) -> Result<Vec<u8>> {
    let job = &finalize.job;
    let atelier_proto::JobSpec::Tag(spec) = &job.spec else {
        return Err(CoordinatorError::Internal(format!(
            "job {} is not a tag job",
            job.id
        )));
    };
    let parts: Vec<ManifestPart> = finalize.parts.iter().map(part).collect();
    let manifest = TagManifest {
        job_id: Some(job.id.to_string()),
        catalog: spec.catalog.clone(),
        columns: spec.columns.clone(),
        checkpoints: spec.checkpoints.clone(),
        model_version: job.model_version.clone(),
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
    Ok(manifest.to_json())
}

/// The object the shard was told to write (not whatever the worker reported).
fn shard_output(task: &TaskRecord) -> &str {
    match &task.work {
        TaskWork::Tag(shard) => &shard.output,
        _ => &task.output,
    }
}

fn part(task: &TaskRecord) -> ManifestPart {
    let url = shard_output(task);
    ManifestPart {
        file: url.rsplit('/').next().unwrap_or(url).to_string(),
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
                    columns: Default::default(),
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
                columns: Default::default(),
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

    /// Where attempt 0 of part `index` stages its output under `dir`.
    fn staged(dir: &std::path::Path, index: usize) -> std::path::PathBuf {
        dir.join(format!("_attempts/job-1/part-{index:05}.attempt-0.parquet"))
    }

    #[test]
    fn the_output_is_committed_only_when_every_part_is_staged_and_the_job_sealed() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().to_str().unwrap();
        let finalize = Arc::new(finalize(output, 3));
        std::fs::create_dir_all(dir.path().join("_attempts/job-1")).unwrap();
        for index in [0, 2] {
            std::fs::write(staged(dir.path(), index), format!("part {index}")).unwrap();
        }
        let error = runtime
            .block_on(write_manifest(Arc::clone(&finalize), async { true }))
            .unwrap_err();
        assert!(!error.is_store_outage(), "{error}");
        let error = error.to_string();
        assert!(
            error.contains("part-00001.parquet") && error.contains("neither it nor"),
            "{error}"
        );
        assert!(!dir.path().join("_SUCCESS").exists());
        assert!(!dir.path().join("part-00000.parquet").exists());

        std::fs::write(staged(dir.path(), 1), "part 1").unwrap();
        // A late write of another attempt, or of another job, is never committed.
        std::fs::write(
            dir.path()
                .join("_attempts/job-1/part-00001.attempt-7.parquet"),
            "stale",
        )
        .unwrap();
        // Cancelled before the seal: no part gets its final name.
        let refused = runtime.block_on(write_manifest(Arc::clone(&finalize), async { false }));
        assert!(refused.unwrap_err().to_string().contains("cancelled"));
        assert!(!dir.path().join("_SUCCESS").exists());
        assert!(!dir.path().join("part-00000.parquet").exists());
        runtime
            .block_on(write_manifest(Arc::clone(&finalize), async { true }))
            .unwrap();
        assert!(dir.path().join("_SUCCESS").exists());
        for index in 0..3 {
            let part = std::fs::read_to_string(dir.path().join(format!("part-{index:05}.parquet")));
            assert_eq!(part.unwrap(), format!("part {index}"));
        }
        assert!(
            !dir.path().join("_attempts").exists(),
            "staging objects and their folders are cleared"
        );
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(atelier_catalog::TAG_MANIFEST)).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["rows"], 30);
        assert_eq!(manifest["parts"].as_array().unwrap().len(), 3);
        // Run again, as after a coordinator restart: the committed parts stand.
        runtime
            .block_on(write_manifest(finalize, async { true }))
            .unwrap();
        assert!(dir.path().join("part-00002.parquet").exists());
    }
}
