//! Which items each rank of a data-parallel run trains on. Every epoch has
//! one seeded order of the training items (shuffled row groups, rows in
//! order, as the loader reads them); global batch k is the k-th run of
//! `world * batch` items in it and rank r takes the r-th slice of each. So no
//! item is seen twice in an epoch, every rank runs the same number of steps,
//! and the union of the ranks' k-th batches is exactly the k-th batch of one
//! process training with batch `world * batch` (what the equivalence tests
//! compare). The last partial global batch is dropped.

use std::collections::HashSet;

use arrow::compute::cast;
use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use atelier_catalog::{stable_hash, Catalog, CatalogError, ReadRange};
use futures::StreamExt;

use crate::dataset::in_validation;
use crate::error::{Result, WorkerError};

/// Training item ids per row group, in catalogue order (the order of
/// [`single_row_groups`]).
#[derive(Debug, Clone)]
pub struct TrainingIds {
    by_group: Vec<Vec<String>>,
}

/// Every row group of the catalogue as its own range, in catalogue order.
pub fn single_row_groups(catalog: &Catalog) -> Vec<ReadRange> {
    catalog
        .full_ranges()
        .into_iter()
        .flat_map(|r| {
            r.row_groups
                .into_iter()
                .map(move |g| ReadRange::groups(r.file, vec![g]))
        })
        .collect()
}

impl TrainingIds {
    /// Reads the item id column once.
    pub async fn scan(catalog: &Catalog, val_fraction: f64) -> Result<Self> {
        let mut ids = Vec::with_capacity(catalog.num_rows());
        let id = catalog.names.id.as_str();
        let mut stream = catalog.stream(catalog.full_ranges(), &[id], 8192);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let column = batch.column_by_name(id).ok_or_else(|| {
                WorkerError::BadInput(format!("{}: no {id:?} column", catalog.location))
            })?;
            let column = cast(column, &DataType::Utf8).map_err(CatalogError::from)?;
            let Some(strings) = column.as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            for row in 0..strings.len() {
                ids.push(
                    strings
                        .is_valid(row)
                        .then(|| strings.value(row).to_string()),
                );
            }
        }
        let mut by_group = Vec::new();
        let mut rows = ids.into_iter();
        for file in &catalog.files {
            for count in file.row_group_rows() {
                let group: Vec<String> = rows
                    .by_ref()
                    .take(count)
                    .flatten()
                    .filter(|id| !in_validation(id, val_fraction))
                    .collect();
                by_group.push(group);
            }
        }
        Ok(Self { by_group })
    }

    pub fn len(&self) -> usize {
        self.by_group.iter().map(Vec::len).sum()
    }

    /// The epoch's item order, given the epoch's order of row groups (indices
    /// into [`single_row_groups`]).
    pub fn in_group_order<'a>(&'a self, groups: &'a [usize]) -> impl Iterator<Item = &'a str> + 'a {
        groups
            .iter()
            .filter_map(|&g| self.by_group.get(g))
            .flatten()
            .map(String::as_str)
    }
}

/// What one rank trains on in one epoch.
#[derive(Debug, Clone)]
pub struct RankShare {
    pub items: HashSet<String>,
    /// Optimizer steps in the epoch, the same on every rank.
    pub steps: usize,
}

pub fn rank_share<'a>(
    order: impl Iterator<Item = &'a str>,
    total: usize,
    rank: usize,
    world: usize,
    batch: usize,
) -> RankShare {
    let global = world * batch;
    let steps = total / global.max(1);
    let items = order
        .take(steps * global)
        .enumerate()
        .filter(|(position, _)| (position % global) / batch == rank)
        .map(|(_, id)| id.to_string())
        .collect();
    RankShare { items, steps }
}

/// Validation is split by a hash of the id (counts need not match: no
/// collective runs per validation batch, only one for the totals).
pub fn validates_on(item_id: &str, rank: usize, world: usize) -> bool {
    world <= 1 || (stable_hash(item_id) / 10_000) % world as u64 == rank as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_each_global_batch_and_together_cover_it() {
        let ids: Vec<String> = (0..23).map(|i| format!("i{i}")).collect();
        let order = || ids.iter().map(String::as_str);
        let (world, batch) = (3, 2);
        let shares: Vec<RankShare> = (0..world)
            .map(|r| rank_share(order(), ids.len(), r, world, batch))
            .collect();
        // 23 items, global batch 6: 3 steps, the last 5 items dropped.
        assert!(shares.iter().all(|s| s.steps == 3 && s.items.len() == 6));
        let mut union: Vec<&String> = shares.iter().flat_map(|s| &s.items).collect();
        union.sort();
        union.dedup();
        assert_eq!(union.len(), 18);
        // Rank 1 holds positions 2, 3 of each global batch.
        for id in ["i2", "i3", "i8", "i9", "i14", "i15"] {
            assert!(shares[1].items.contains(id), "{id}");
        }
    }

    #[test]
    fn validation_hash_split_is_a_partition() {
        for id in ["a", "b", "item-77", "zz"] {
            let owners = (0..4).filter(|&r| validates_on(id, r, 4)).count();
            assert_eq!(owners, 1, "{id}");
        }
        assert!(validates_on("x", 0, 1));
    }
}
