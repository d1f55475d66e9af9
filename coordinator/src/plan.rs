//! Cuts a tag job into shards from the catalogue's Parquet footers alone.

use atelier_catalog::{Catalog, CatalogError, StoreLocation};
use atelier_proto::domain::{FileRowGroups, ShardWork, TagJobSpec};
use object_store::ObjectStoreExt;

use crate::error::{CoordinatorError, Result};

/// The shards of a tag job, each a run of whole row groups of one file.
#[derive(Debug, Clone)]
pub struct TagPlan {
    pub shards: Vec<ShardWork>,
    pub rows: u64,
}

/// The object shard `index` writes; fixed, so a retried shard replaces it.
pub fn shard_output(output: &StoreLocation, index: usize) -> String {
    output.child(&format!("part-{index:05}.parquet")).url()
}

/// Opens every footer (never image bytes), checks the schema and cuts shards of
/// about `target_rows` rows. Fails naming the catalogue when it is unreachable,
/// not Parquet, missing a column or empty.
pub async fn plan_tag_job(spec: &TagJobSpec, target_rows: u64) -> Result<TagPlan> {
    let catalog = Catalog::open(&spec.catalog)
        .await
        .map_err(CoordinatorError::BadCatalog)?;
    let output = StoreLocation::parse(&spec.output)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("output: {e}")))?;
    Ok(cut(&catalog, spec, &output, target_rows.max(1)))
}

fn cut(catalog: &Catalog, spec: &TagJobSpec, output: &StoreLocation, target: u64) -> TagPlan {
    let mut shards = Vec::new();
    let mut rows_total = 0u64;
    for file in &catalog.files {
        let url = file.location.url();
        let mut groups = Vec::new();
        let mut rows = 0u64;
        for (index, group_rows) in file.row_group_rows().into_iter().enumerate() {
            groups.push(index as u32);
            rows += group_rows as u64;
            if rows >= target {
                shards.push(shard(spec, &url, std::mem::take(&mut groups), rows));
                rows_total += rows;
                rows = 0;
            }
        }
        if !groups.is_empty() && rows > 0 {
            shards.push(shard(spec, &url, groups, rows));
            rows_total += rows;
        }
    }
    for (index, shard) in shards.iter_mut().enumerate() {
        shard.output = shard_output(output, index);
    }
    TagPlan {
        shards,
        rows: rows_total,
    }
}

fn shard(spec: &TagJobSpec, file: &str, row_groups: Vec<u32>, rows: u64) -> ShardWork {
    ShardWork {
        catalog: spec.catalog.clone(),
        ranges: vec![FileRowGroups {
            file: file.to_string(),
            row_groups,
        }],
        checkpoints: spec.checkpoints.clone(),
        output: String::new(),
        inference: spec.inference.clone(),
        rows,
    }
}

/// Checks that each checkpoint has a manifest, so a typo fails at submit
/// rather than on every worker.
pub async fn check_checkpoints(checkpoints: &[String]) -> Result<()> {
    for url in checkpoints {
        let location = StoreLocation::parse(url)
            .map_err(|e| CoordinatorError::InvalidArgument(format!("checkpoint {url}: {e}")))?;
        let manifest = location.child("manifest.json");
        match manifest.store.head(&manifest.path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "checkpoint {url} has no manifest.json (train one with `atelier train`)"
                )))
            }
            Err(e) => {
                return Err(CoordinatorError::BadCatalog(CatalogError::store(
                    manifest.url(),
                    e,
                )))
            }
        }
    }
    Ok(())
}

/// Empties the output prefix when asked to, and otherwise insists that it is
/// empty, so that no part file of an earlier run mixes with this job's.
pub async fn prepare_output(url: &str, overwrite: bool) -> Result<()> {
    let location = StoreLocation::parse(url)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("output {url}: {e}")))?;
    atelier_catalog::synthetic::prepare_output(&location, overwrite)
        .await
        .map_err(|e| CoordinatorError::Output {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atelier_catalog::synthetic;

    #[test]
    fn shards_are_whole_row_groups_of_about_the_target_size() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("catalog").to_str().unwrap().to_string();
        let options = synthetic::GenerateOptions {
            items: 1000,
            width: 48,
            height: 64,
            threads: 2,
            writer: atelier_catalog::WriterOptions {
                rows_per_group: 100,
                groups_per_file: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = StoreLocation::parse(&url).unwrap();
        synthetic::generate(&options, out, runtime.handle(), |_| {}).unwrap();
        let spec = TagJobSpec {
            catalog: url,
            checkpoints: vec![],
            output: dir.path().join("out").to_str().unwrap().into(),
            target_shard_rows: 0,
            max_attempts: 0,
            inference: Default::default(),
            overwrite: false,
        };
        let plan = runtime.block_on(plan_tag_job(&spec, 250)).unwrap();
        assert_eq!(plan.rows, 1000);
        // 3 files of 4, 4 and 2 groups: 300 + 100, 300 + 100, 200 rows.
        let sizes: Vec<u64> = plan.shards.iter().map(|s| s.rows).collect();
        assert_eq!(sizes, vec![300, 100, 300, 100, 200]);
        assert!(plan.shards[4].output.ends_with("out/part-00004.parquet"));
        assert_eq!(plan.shards[1].ranges[0].row_groups, vec![3]);
    }
}
