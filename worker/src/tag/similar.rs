//! Similar products from a tag output's `embedding` column: the items whose
//! embeddings have the highest cosine similarity with one item's.
//!
//! The embeddings are L2-normalised when written, so cosine similarity is a
//! dot product. The scan is exact: every vector is read once, in Parquet
//! batches, and scored with an eight-lane dot product that the compiler
//! turns into SIMD, keeping the best `k` in a heap. It needs no index to
//! build or keep fresh each night; reading the Parquet dominates its time
//! (BENCHMARKS.md, "Similar products").

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{Array, FixedSizeListArray, RecordBatch};
use arrow_schema::DataType;
use atelier_catalog::{is_hidden, CatalogError, ObjectFileReader, StoreLocation};
use futures::TryStreamExt;
use object_store::path::Path;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use tokio::runtime::Handle;

use crate::error::{Result, WorkerError};

/// The tag output's column of L2-normalised image embeddings.
pub const EMBEDDING: &str = "embedding";

/// One neighbour: its id and its cosine similarity with the query item.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub item_id: String,
    pub similarity: f32,
}

/// The `k` items of the tag output at `tags` most similar to `item`, most
/// similar first; the item itself is left out.
pub fn similar(tags: &str, item: &str, k: usize, handle: &Handle) -> Result<Vec<Neighbour>> {
    let output = TagOutput::open(tags, handle)?;
    let query = find_embedding(&output, item, handle)?;
    let mut best = TopK::new(k);
    output.scan(handle, |ids, vectors, dim| {
        for (row, vector) in vectors.chunks_exact(dim).enumerate() {
            let Some(id) = ids[row] else { continue };
            if id == item {
                continue;
            }
            best.offer(dot(&query, vector), || id.to_string());
        }
        Ok(Scan::Go)
    })?;
    Ok(best.into_sorted())
}

/// The embedding of `item`, which must have one; the scan stops there.
fn find_embedding(output: &TagOutput, item: &str, handle: &Handle) -> Result<Vec<f32>> {
    let mut found = None;
    output.scan(handle, |ids, vectors, dim| {
        if let Some(row) = ids.iter().position(|id| *id == Some(item)) {
            found = Some(vectors[row * dim..(row + 1) * dim].to_vec());
            return Ok(Scan::Stop);
        }
        Ok(Scan::Go)
    })?;
    found.ok_or_else(|| {
        WorkerError::InvalidOptions(format!(
            "item {item} is not in {} with an embedding (missing, or its image had an error)",
            output.location.url()
        ))
    })
}

/// Whether a scan goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Go,
    Stop,
}

/// The Parquet parts of a tag output: every `*.parquet` object under its
/// prefix, leaving out whatever lies under a `_` or `.` folder (staging).
struct TagOutput {
    location: StoreLocation,
    parts: Vec<(Path, u64)>,
}

impl TagOutput {
    fn open(url: &str, handle: &Handle) -> Result<Self> {
        let location = StoreLocation::parse(url)?;
        let listed: Vec<_> = handle
            .block_on(
                location
                    .store
                    .list(Some(&location.path))
                    .try_collect::<Vec<_>>(),
            )
            .map_err(|e| CatalogError::store(location.url(), e))?;
        let mut parts: Vec<(Path, u64)> = listed
            .into_iter()
            .filter(|object| {
                !is_hidden(&location.path, &object.location)
                    && object.location.as_ref().ends_with(".parquet")
            })
            .map(|object| (object.location, object.size))
            .collect();
        parts.sort();
        if parts.is_empty() {
            return Err(CatalogError::Empty {
                url: location.url(),
            }
            .into());
        }
        Ok(Self { location, parts })
    }

    /// Calls `visit` with each batch's ids (`None` for rows without an
    /// embedding) and its embeddings laid end to end as `f32`, zeros for
    /// rows without one, until it says stop.
    fn scan(
        &self,
        handle: &Handle,
        mut visit: impl FnMut(&[Option<&str>], &[f32], usize) -> Result<Scan>,
    ) -> Result<()> {
        for (path, size) in &self.parts {
            let url = self.location.url_of(path);
            let parquet_error = |source| CatalogError::Parquet {
                file: url.clone(),
                source,
            };
            let reader =
                ObjectFileReader::new(Arc::clone(&self.location.store), path.clone(), *size);
            let builder = handle
                .block_on(ParquetRecordBatchStreamBuilder::new(reader))
                .map_err(parquet_error)?;
            let schema = Arc::clone(builder.schema());
            if schema.index_of(EMBEDDING).is_err() {
                return Err(WorkerError::InvalidOptions(format!(
                    "{url} has no {EMBEDDING} column: tag with --embeddings"
                )));
            }
            let roots: Vec<usize> = ["item_id", EMBEDDING]
                .iter()
                .filter_map(|name| schema.index_of(name).ok())
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let mut batches = builder
                .with_projection(mask)
                .with_batch_size(8192)
                .build()
                .map_err(parquet_error)?;
            while let Some(batch) = handle.block_on(batches.try_next()).map_err(parquet_error)? {
                let (ids, vectors, dim) = columns(&batch, &url)?;
                let ids: Vec<Option<&str>> = (0..batch.num_rows())
                    .map(|row| (!vectors.is_null(row)).then(|| ids.value(row)))
                    .collect();
                let flat = floats(vectors)?;
                if visit(&ids, &flat, dim)? == Scan::Stop {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn columns<'a>(
    batch: &'a RecordBatch,
    url: &str,
) -> Result<(arrow_array::StringArray, &'a FixedSizeListArray, usize)> {
    let bad = |problem: String| {
        WorkerError::Catalog(CatalogError::Schema {
            file: url.to_string(),
            problem,
        })
    };
    // Ids are compared as text, whatever the catalogue's id type.
    let ids = batch
        .column_by_name("item_id")
        .ok_or_else(|| bad("item_id is missing".into()))?;
    let ids = arrow::compute::cast(ids, &DataType::Utf8)
        .map_err(|e| {
            bad(format!(
                "item_id of type {} is not text: {e}",
                ids.data_type()
            ))
        })?
        .as_string::<i32>()
        .clone();
    let vectors = batch
        .column_by_name(EMBEDDING)
        .and_then(|c| c.as_fixed_size_list_opt())
        .ok_or_else(|| bad(format!("{EMBEDDING} is missing or not a fixed-size list")))?;
    let dim = vectors.value_length() as usize;
    Ok((ids, vectors, dim))
}

/// The list's values as `f32`, whether stored as float32 or float16.
fn floats(vectors: &FixedSizeListArray) -> Result<Vec<f32>> {
    let values = vectors.values();
    match values.data_type() {
        DataType::Float32 => Ok(values.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Float16 => Ok(values
            .as_primitive::<Float16Type>()
            .values()
            .iter()
            .map(|v| v.to_f32())
            .collect()),
        other => Err(WorkerError::InvalidOptions(format!(
            "{EMBEDDING} holds {other}, not float32 or float16"
        ))),
    }
}

/// A dot product in eight independent lanes, which the compiler keeps in
/// SIMD registers (a single running sum would force one add at a time).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The `k` best offers seen, kept in a min-heap of size `k`.
struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

struct Scored(f32, String);

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// Reversed, so that the heap's top is the worst kept; ties by id, so the
/// result does not depend on the order the files are read in.
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Keeps `score` if it is among the best `k`; `id` is built only then.
    fn offer(&mut self, score: f32, id: impl FnOnce() -> String) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Scored(score, id()));
            return;
        }
        let Some(worst) = self.heap.peek() else {
            return;
        };
        if score < worst.0 {
            return;
        }
        let candidate = Scored(score, id());
        // In the reversed order, less is better.
        if candidate < *worst {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    fn into_sorted(self) -> Vec<Neighbour> {
        // Ascending in the reversed order is best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Scored(similarity, item_id)| Neighbour {
                item_id,
                similarity,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eight_lane_dot_product_equals_the_plain_one() {
        let a: Vec<f32> = (0..515).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..515).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
        assert!((dot(&a, &b) as f64 - plain).abs() < 1e-3);
    }

    #[test]
    fn top_k_keeps_the_best_best_first_with_ties_by_id() {
        let mut top = TopK::new(3);
        for (score, id) in [(0.1, "a"), (0.9, "b"), (0.5, "c"), (0.9, "a2"), (0.2, "d")] {
            top.offer(score, || id.to_string());
        }
        let ids: Vec<String> = top.into_sorted().into_iter().map(|n| n.item_id).collect();
        assert_eq!(ids, ["a2", "b", "c"]);
    }
}
