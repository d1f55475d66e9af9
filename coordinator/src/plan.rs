//! Cuts a tag job into shards from the catalogue's Parquet footers alone.

use atelier_catalog::{Catalog, CatalogError, StoreLocation};
use atelier_proto::{FileRowGroups, ShardWork, TagJobSpec};
use object_store::ObjectStoreExt;

use crate::error::{CoordinatorError, Result};

/// Automatic shards never go below this many rows: a shard costs a lease, a
/// footer read and an output object, which a few hundred images amortise.
pub const MIN_AUTO_SHARD_ROWS: u64 = 512;

/// The shards of a tag job: runs of whole row groups of one file, or slices of
/// one row group when a group is larger than the target and its image bytes
/// have an offset index (so a slice reads only its own pages).
#[derive(Debug, Clone)]
pub struct TagPlan {
    pub shards: Vec<ShardWork>,
    pub rows: u64,
    /// The target the shards were cut to.
    pub target_rows: u64,
}

/// How a tag job's shards are sized when the job does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSizing {
    /// The largest automatic shard (`--shard-rows`).
    pub max_rows: u64,
    /// Shards to aim for per registered worker; 0 always cuts `max_rows`.
    pub per_worker: u64,
}

impl ShardSizing {
    /// Rows per shard: the job's own figure when it gives one. Otherwise at most
    /// `max_rows`, and smaller when that would leave registered workers without
    /// `per_worker` shards each (a 10^6-item catalogue at 8,192 rows is 123
    /// shards, which would idle most of a thousand workers), but never below
    /// [`MIN_AUTO_SHARD_ROWS`] unless `max_rows` is.
    pub fn target_rows(&self, requested: Option<u64>, catalogue_rows: u64, workers: usize) -> u64 {
        if let Some(requested) = requested {
            return requested;
        }
        let max_rows = self.max_rows.max(1);
        if self.per_worker == 0 || workers == 0 {
            return max_rows;
        }
        let wanted_shards = (workers as u64).saturating_mul(self.per_worker);
        let even = catalogue_rows.div_ceil(wanted_shards);
        even.max(MIN_AUTO_SHARD_ROWS).min(max_rows)
    }
}

/// The object shard `index` writes; fixed, so a retried shard replaces it.
pub fn shard_output(output: &StoreLocation, index: usize) -> String {
    output.child(&atelier_catalog::part_name(index)).url()
}

/// Opens every footer (never image bytes), checks the schema and cuts shards
/// sized by `sizing` for `workers` registered workers. Fails naming the
/// catalogue when it is unreachable, not Parquet, missing a column or empty.
/// A plan is refused, naming the figures, before it holds more than
/// `max_shards` shards: every shard is a task record in memory and in the
/// state file.
pub async fn plan_tag_job(
    spec: &TagJobSpec,
    sizing: &ShardSizing,
    workers: usize,
    max_shards: usize,
) -> Result<TagPlan> {
    let catalog = Catalog::open_mapped(&spec.catalog, &spec.columns)
        .await
        .map_err(CoordinatorError::BadCatalog)?;
    let output = StoreLocation::parse(&spec.output)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("output: {e}")))?;
    let target = sizing.target_rows(spec.target_shard_rows, catalog.num_rows() as u64, workers);
    // Ten thousand shards take milliseconds to build: off the I/O threads.
    let spec = spec.clone();
    let rows = catalog.num_rows();
    let plan =
        tokio::task::spawn_blocking(move || cut(&catalog, &spec, &output, target, max_shards))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("planning: {e}")))?;
    plan.ok_or_else(|| {
        CoordinatorError::InvalidArgument(format!(
            "{rows} rows in shards of {target} would be more than {max_shards} shards, the most \
             a job may have; give a larger --shard-rows"
        ))
    })
}

/// The plan, or `None` once it would pass `max_shards`.
fn cut(
    catalog: &Catalog,
    spec: &TagJobSpec,
    output: &StoreLocation,
    target: u64,
    max_shards: usize,
) -> Option<TagPlan> {
    let mut shards = Vec::new();
    for file in &catalog.files {
        if shards.len() > max_shards {
            return None;
        }
        let url = file.location.url();
        let mut groups = Vec::new();
        let mut rows = 0u64;
        for (index, group_rows) in file.row_group_rows().into_iter().enumerate() {
            let group_rows = group_rows as u64;
            // Rounded, so a group only a little over the target stays whole.
            let slices = if file.can_read_part_of(index) {
                ((group_rows + target / 2) / target).max(1)
            } else {
                1
            };
            let index = index as u32;
            if slices > 1 {
                if rows > 0 {
                    shards.push(shard(spec, &url, std::mem::take(&mut groups), None, rows));
                }
                groups.clear();
                rows = 0;
                if shards.len() as u64 + slices > max_shards as u64 {
                    return None;
                }
                for slice in 0..slices {
                    let start = group_rows * slice / slices;
                    let end = group_rows * (slice + 1) / slices;
                    shards.push(shard(
                        spec,
                        &url,
                        vec![index],
                        Some(start..end),
                        end - start,
                    ));
                }
                continue;
            }
            groups.push(index);
            rows += group_rows;
            if rows >= target {
                shards.push(shard(spec, &url, std::mem::take(&mut groups), None, rows));
                rows = 0;
            }
        }
        if !groups.is_empty() && rows > 0 {
            shards.push(shard(spec, &url, groups, None, rows));
        }
    }
    if shards.len() > max_shards {
        return None;
    }
    for (index, shard) in shards.iter_mut().enumerate() {
        shard.output = shard_output(output, index);
    }
    Some(TagPlan {
        rows: shards.iter().map(|s| s.rows).sum(),
        shards,
        target_rows: target,
    })
}

fn shard(
    spec: &TagJobSpec,
    file: &str,
    row_groups: Vec<u32>,
    slice: Option<std::ops::Range<u64>>,
    rows: u64,
) -> ShardWork {
    ShardWork {
        catalog: spec.catalog.clone(),
        columns: spec.columns.clone(),
        ranges: vec![FileRowGroups {
            file: file.to_string(),
            row_groups,
            rows: slice,
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
    atelier_catalog::prepare_output(&location, overwrite)
        .await
        .map_err(|e| CoordinatorError::Output {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atelier_catalog::{generate, GenerateOptions};

    /// The coordinator's defaults.
    const DEFAULT_SIZING: ShardSizing = ShardSizing {
        max_rows: 8192,
        per_worker: 4,
    };

    /// A synthetic catalogue of `items` in groups of `rows_per_group`, and a
    /// tag job of it asking for `target_shard_rows`.
    fn catalogue_job(
        runtime: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        items: usize,
        rows_per_group: usize,
        groups_per_file: usize,
        target_shard_rows: Option<u64>,
    ) -> TagJobSpec {
        let url = dir.join("catalog").to_str().unwrap().to_string();
        let options = GenerateOptions {
            items,
            width: 48,
            height: 64,
            threads: 2,
            writer: atelier_catalog::WriterOptions {
                rows_per_group,
                groups_per_file,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = StoreLocation::parse(&url).unwrap();
        generate(&options, out, runtime.handle(), |_| {}).unwrap();
        TagJobSpec {
            catalog: url,
            columns: Default::default(),
            checkpoints: vec![],
            output: dir.join("out").to_str().unwrap().into(),
            target_shard_rows,
            max_attempts: None,
            inference: Default::default(),
            overwrite: false,
        }
    }

    const MAX_SHARDS: usize = 1_000;

    #[test]
    fn a_plan_with_more_shards_than_a_job_may_have_is_refused_naming_the_figures() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // 1,000 rows at 2 rows a shard would be 500 tasks; a job may have 100.
        let spec = catalogue_job(&runtime, dir.path(), 1000, 100, 4, Some(2));
        let error = runtime
            .block_on(plan_tag_job(&spec, &DEFAULT_SIZING, 1, 100))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("more than 100 shards") && error.contains("--shard-rows"),
            "{error}"
        );
        let plan = runtime
            .block_on(plan_tag_job(&spec, &DEFAULT_SIZING, 1, 500))
            .unwrap();
        assert_eq!(plan.shards.len(), 500);
    }

    #[test]
    fn shards_are_whole_row_groups_of_about_the_target_size() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = catalogue_job(&runtime, dir.path(), 1000, 100, 4, None);
        let fixed = ShardSizing {
            max_rows: 250,
            per_worker: 0,
        };
        let plan = runtime
            .block_on(plan_tag_job(&spec, &fixed, 7, MAX_SHARDS))
            .unwrap();
        assert_eq!(plan.rows, 1000);
        // 3 files of 4, 4 and 2 groups: 300 + 100, 300 + 100, 200 rows.
        let sizes: Vec<u64> = plan.shards.iter().map(|s| s.rows).collect();
        assert_eq!(sizes, vec![300, 100, 300, 100, 200]);
        assert!(plan.shards[4].output.ends_with("out/part-00004.parquet"));
        assert_eq!(plan.shards[1].ranges[0].row_groups, vec![3]);
        assert!(plan.shards.iter().all(|s| s.ranges[0].rows.is_none()));
    }

    #[test]
    fn groups_larger_than_the_target_are_cut_into_even_slices() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // One file: groups of 1,000, 1,000 and 100 rows.
        let spec = catalogue_job(&runtime, dir.path(), 2100, 1000, 3, Some(300));
        let sizing = DEFAULT_SIZING;
        let plan = runtime
            .block_on(plan_tag_job(&spec, &sizing, 1, MAX_SHARDS))
            .unwrap();
        assert_eq!((plan.rows, plan.target_rows), (2100, 300));
        let cuts: Vec<(Vec<u32>, Option<std::ops::Range<u64>>, u64)> = plan
            .shards
            .iter()
            .map(|s| {
                (
                    s.ranges[0].row_groups.clone(),
                    s.ranges[0].rows.clone(),
                    s.rows,
                )
            })
            .collect();
        // 1,000 / 300 rounds to 3 slices; the 100-row group stays whole.
        assert_eq!(
            cuts,
            vec![
                (vec![0], Some(0..333), 333),
                (vec![0], Some(333..666), 333),
                (vec![0], Some(666..1000), 334),
                (vec![1], Some(0..333), 333),
                (vec![1], Some(333..666), 333),
                (vec![1], Some(666..1000), 334),
                (vec![2], None, 100),
            ]
        );
        // A group only a little over the target stays whole.
        let spec = TagJobSpec {
            target_shard_rows: Some(900),
            ..spec
        };
        let plan = runtime
            .block_on(plan_tag_job(&spec, &sizing, 1, MAX_SHARDS))
            .unwrap();
        let sizes: Vec<u64> = plan.shards.iter().map(|s| s.rows).collect();
        assert_eq!(sizes, vec![1000, 1000, 100]);
    }

    /// Rewrites every Parquet file under `dir` the way writers that skip the
    /// page index do (pyarrow's default), keeping its row groups.
    fn drop_offset_indexes(dir: &std::path::Path, rows_per_group: usize) {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::{EnabledStatistics, WriterProperties};
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
            let properties = WriterProperties::builder()
                .set_max_row_group_row_count(Some(rows_per_group))
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true)
                .build();
            let file = std::fs::File::create(&path).unwrap();
            let mut writer =
                ArrowWriter::try_new(file, batches[0].schema(), Some(properties)).unwrap();
            for batch in &batches {
                writer.write(batch).unwrap();
            }
            writer.close().unwrap();
        }
    }

    #[test]
    fn groups_without_an_offset_index_stay_whole() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = catalogue_job(&runtime, dir.path(), 2100, 1000, 3, Some(300));
        drop_offset_indexes(&dir.path().join("catalog"), 1000);
        let sizing = DEFAULT_SIZING;
        let plan = runtime
            .block_on(plan_tag_job(&spec, &sizing, 1, MAX_SHARDS))
            .unwrap();
        // Slicing would read each 1,000-row chunk of images three times.
        let sizes: Vec<u64> = plan.shards.iter().map(|s| s.rows).collect();
        assert_eq!(sizes, vec![1000, 1000, 100]);
        assert!(plan.shards.iter().all(|s| s.ranges[0].rows.is_none()));
    }

    #[test]
    fn automatic_shards_give_every_registered_worker_several() {
        let sizing = DEFAULT_SIZING;
        // A job's own size always wins.
        assert_eq!(sizing.target_rows(Some(100), 1_000_000, 1000), 100);
        // No worker registered yet, or sizing off: the largest shard.
        assert_eq!(sizing.target_rows(None, 1_000_000, 0), 8192);
        let off = ShardSizing {
            per_worker: 0,
            ..sizing
        };
        assert_eq!(off.target_rows(None, 1_000_000, 1000), 8192);
        // 10^6 items: 30 workers get 4 shards each of 8,334 > 8,192 rows.
        assert_eq!(sizing.target_rows(None, 1_000_000, 30), 8192);
        assert_eq!(sizing.target_rows(None, 1_000_000, 100), 2500);
        // A thousand workers would want 250-row shards; 512 is the floor.
        assert_eq!(
            sizing.target_rows(None, 1_000_000, 1000),
            MIN_AUTO_SHARD_ROWS
        );
        // Unless the largest shard is set below the floor.
        let small = ShardSizing {
            max_rows: 100,
            ..sizing
        };
        assert_eq!(small.target_rows(None, 1_000_000, 1000), 100);
    }
}
