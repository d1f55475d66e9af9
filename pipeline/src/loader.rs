//! The streaming loader: Parquet → raw items → (threads) decode and transform → batches.

use std::sync::Arc;
use std::time::Instant;

use arrow::compute::cast;
use arrow_array::{Array, BinaryArray, RecordBatch, StringArray};
use arrow_schema::DataType;
use atelier_catalog::OrderedPool;
use atelier_catalog::{stable_hash, Catalog, CatalogError, Labels, ReadRange};
use atelier_catalog::{Fetched, HttpFetcher, HttpLimits, StoreCache};
use atelier_proto::{CatalogColumns, Framing, Label};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::{GetResultPayload, ObjectStoreExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::batch::{Batch, BatchItem, Pixels};
use crate::decode::{decode_for_crop, DecodeLimits};
use crate::error::{ItemError, PipelineError, Result};
use crate::jpeg_header::{jpeg_header, JpegHeader};
use crate::stats::{PipelineStats, Stage};
use crate::transform::{Augment, Normalization, Transformer};

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Side of the square model input.
    pub image_size: usize,
    pub batch_size: usize,
    /// Decode threads.
    pub threads: usize,
    /// Batches allowed between the reader and the consumer; bounds memory.
    pub prefetch: usize,
    pub augment: Augment,
    /// How each photo is fitted to the square before `augment`'s crops.
    pub framing: Framing,
    pub normalization: Normalization,
    /// Seeds augmentation; item `id` always draws from `(seed, id)`.
    pub seed: u64,
    pub limits: DecodeLimits,
    /// `image_uri` objects fetched at once.
    pub fetch_concurrency: usize,
    /// How `http(s)://` image URIs are fetched.
    pub http: HttpLimits,
    /// The label attributes read into [`BatchItem::labels`], each from its
    /// column under the catalogue's names (`CatalogColumns::column_of`).
    pub labels: Vec<String>,
    /// Columns outside the contract to carry into [`BatchItem::extra`].
    pub extra_columns: Vec<String>,
    /// Rows whose item id this rejects are left out (train/validation splits).
    pub keep: Option<ItemFilter>,
    /// Shuffle rows within a buffer of this many (compressed) items, seeded by
    /// `seed`; 0 keeps input order. Catalogues are often sorted (by id, by
    /// product family), and SGD needs batches that are not.
    pub shuffle_window: usize,
    /// Hand the pixels over as bytes for the consumer to normalise
    /// ([`Pixels::Bytes`]): for a GPU, a quarter of the bytes to copy.
    pub raw_bytes: bool,
    /// Hand whole, sequential, colour JPEGs over as read, with their crop
    /// windows, for a GPU to decode, crop, resize and flip
    /// ([`Pixels::Encoded`], [`Batch::decode_on`]); other images are decoded
    /// here. Not with random affine warps.
    pub decode_on_device: bool,
}

/// A predicate on item ids.
#[derive(Clone)]
pub struct ItemFilter(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for ItemFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ItemFilter")
    }
}

impl ItemFilter {
    pub fn new(keep: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(keep))
    }
}

impl Default for LoaderOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            image_size: 224,
            batch_size: 32,
            threads,
            prefetch: threads * 2,
            augment: Augment::CenterCrop,
            framing: Framing::CenterCrop,
            normalization: Normalization::IMAGENET,
            seed: 0,
            limits: DecodeLimits::default(),
            fetch_concurrency: 32,
            http: HttpLimits::default(),
            labels: Label::ALL.iter().map(|l| l.name().to_string()).collect(),
            extra_columns: Vec::new(),
            keep: None,
            shuffle_window: 0,
            raw_bytes: false,
            decode_on_device: false,
        }
    }
}

/// Where one item's image comes from, once read.
#[derive(Debug)]
enum Source {
    Bytes(Bytes),
    Failed(ItemError),
}

#[derive(Debug)]
struct RawItem {
    item_id: String,
    labels: Labels,
    extra: Vec<Option<String>>,
    source: Source,
}

/// Iterator of batches in input order. Needs a handle to a multi-thread tokio
/// runtime for its reads, and may be consumed from any non-async thread.
pub struct ImageLoader {
    pool: OrderedPool<Result<Batch>>,
    stats: Arc<PipelineStats>,
}

impl std::fmt::Debug for ImageLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLoader").finish_non_exhaustive()
    }
}

impl ImageLoader {
    /// Loads every row of `catalog`.
    pub fn all(catalog: &Catalog, options: LoaderOptions, handle: Handle) -> Result<Self> {
        Self::new(catalog, catalog.full_ranges(), options, handle)
    }

    /// Loads the row groups in `ranges`, in order.
    pub fn new(
        catalog: &Catalog,
        ranges: Vec<ReadRange>,
        options: LoaderOptions,
        handle: Handle,
    ) -> Result<Self> {
        validate(&options, &handle)?;
        let names = catalog.names.clone();
        let mut columns: Vec<&str> = vec![&names.id, &names.image, &names.image_uri];
        columns.extend(options.labels.iter().map(|a| names.column_of(a)));
        columns.extend(options.extra_columns.iter().map(String::as_str));
        let read_rows = options.batch_size.clamp(64, 1024);
        let stream = catalog.stream(ranges, &columns, read_rows);
        let stats = Arc::new(PipelineStats::default());
        let reader = RawBatches {
            stream,
            catalog: catalog.location.url(),
            names,
            handle,
            pending: Vec::new(),
            done: false,
            shuffle: ChaCha8Rng::seed_from_u64(options.seed ^ 0x5348_5546_464c_4521),
            options: options.clone(),
            stores: Arc::new(StoreCache::default()),
            stats: Arc::clone(&stats),
        };
        let worker_stats = Arc::clone(&stats);
        let pool = OrderedPool::new(
            "decode",
            reader,
            options.threads,
            options.prefetch,
            move |raw: Result<Vec<RawItem>>| {
                raw.map(|items| process(items, &options, &worker_stats))
            },
        );
        Ok(Self { pool, stats })
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.stats)
    }

    /// The most batches that were ever in flight at once; at most `prefetch`.
    pub fn high_water(&self) -> usize {
        self.pool.high_water()
    }
}

impl Iterator for ImageLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.pool.next().map(|result| {
            result
                .map_err(|panic| PipelineError::Worker(panic.0))
                .and_then(|r| r)
        })
    }
}

fn validate(options: &LoaderOptions, handle: &Handle) -> Result<()> {
    let invalid = |m: &str| Err(PipelineError::InvalidOptions(m.to_string()));
    if options.image_size == 0 || options.image_size > 4096 {
        return invalid("image size must be between 1 and 4096");
    }
    if options.batch_size == 0 {
        return invalid("batch size must be positive");
    }
    if options.threads == 0 || options.prefetch == 0 {
        return invalid("threads and prefetch must be positive");
    }
    if options.decode_on_device
        && matches!(
            options.augment,
            Augment::RandomResizedCrop {
                affine: Some(_),
                ..
            }
        )
    {
        return invalid("random affine warps run on the CPU; leave out decoding on the device");
    }
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return invalid("the loader needs a multi-thread tokio runtime for its reads");
    }
    Ok(())
}

/// Decodes and transforms one batch; runs on a pool thread.
fn process(items: Vec<RawItem>, options: &LoaderOptions, stats: &PipelineStats) -> Batch {
    let size = options.image_size;
    let plane = 3 * size * size;
    let mut transformer = Transformer::new(size, options.augment, options.normalization)
        .with_framing(options.framing);
    let mut pixels = Pixels::zeroed(options, items.len(), plane);
    let mut ok = 0;
    let mut out = Vec::with_capacity(items.len());
    for raw in items {
        let started = Instant::now();
        let device_header = match &raw.source {
            Source::Bytes(bytes) if options.decode_on_device => for_device(bytes),
            _ => None,
        };
        let slot = match (raw.source, device_header) {
            (Source::Failed(error), _) => Err(error),
            (Source::Bytes(bytes), Some(header)) => {
                let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ stable_hash(&raw.item_id));
                let slot = pixels
                    .push_encoded(bytes, header, &options.limits, |w, h| {
                        transformer.crop(w, h, &mut rng)
                    })
                    .map(|()| ok);
                stats.add_time(Stage::Decode, started.elapsed());
                slot
            }
            (Source::Bytes(bytes), None) => {
                let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ stable_hash(&raw.item_id));
                let decoded =
                    decode_for_crop(&bytes, size as u32, &options.limits, size, |w, h| {
                        transformer.crop(w, h, &mut rng)
                    });
                stats.add_time(Stage::Decode, started.elapsed());
                decoded.and_then(|(image, crop)| {
                    let started = Instant::now();
                    let written = pixels.write(&mut transformer, &image, crop, ok, plane);
                    let result = written.map(|()| ok).map_err(|reason| ItemError::Corrupt {
                        format: "image",
                        reason,
                    });
                    stats.add_time(Stage::Transform, started.elapsed());
                    result
                })
            }
        };
        if slot.is_ok() {
            ok += 1;
        }
        out.push(BatchItem {
            item_id: raw.item_id,
            labels: raw.labels,
            extra: raw.extra,
            slot,
        });
    }
    stats.add_outcomes(ok as u64, (out.len() - ok) as u64);
    pixels.truncate(ok, plane);
    Batch {
        items: out,
        pixels,
        size,
    }
}

/// The header of a JPEG a GPU decoder should take.
fn for_device(bytes: &[u8]) -> Option<JpegHeader> {
    jpeg_header(bytes).filter(JpegHeader::suits_device)
}

/// Reads record batches and regroups their rows into batches of raw items,
/// fetching `image_uri` objects on the way. Runs on the pool's feeder thread.
struct RawBatches {
    stream: BoxStream<'static, atelier_catalog::Result<RecordBatch>>,
    /// The catalogue's URL, for errors.
    catalog: String,
    names: CatalogColumns,
    handle: Handle,
    pending: Vec<RawItem>,
    done: bool,
    shuffle: ChaCha8Rng,
    options: LoaderOptions,
    stores: Arc<StoreCache>,
    stats: Arc<PipelineStats>,
}

impl Iterator for RawBatches {
    type Item = Result<Vec<RawItem>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch_size = self.options.batch_size;
        let buffered = batch_size.max(self.options.shuffle_window);
        while !self.done && self.pending.len() < buffered {
            let started = Instant::now();
            let next = self.handle.block_on(self.stream.next());
            self.stats.add_time(Stage::Read, started.elapsed());
            match next {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(record_batch)) => match self.rows(&record_batch) {
                    Ok(items) => {
                        self.stats.add_rows(items.len() as u64);
                        self.pending.extend(items);
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        let take = batch_size.min(self.pending.len());
        if self.options.shuffle_window > 0 {
            // A partial Fisher-Yates pass: the first `take` slots get a uniform sample.
            for i in 0..take {
                let j = self.shuffle.random_range(i..self.pending.len());
                self.pending.swap(i, j);
            }
        }
        Some(Ok(self.pending.drain(..take).collect()))
    }
}

impl RawBatches {
    fn rows(&self, batch: &RecordBatch) -> Result<Vec<RawItem>> {
        let names = &self.names;
        // Integer ids become their decimal text here and get their own type
        // back when written (see `atelier_worker::tag`).
        let ids = utf8(batch, &names.id)?.ok_or_else(|| {
            CatalogError::Internal(format!("record batch without its id column {:?}", names.id))
        })?;
        if ids.null_count() > 0 {
            return Err(CatalogError::Schema {
                file: self.catalog.clone(),
                problem: format!(
                    "{} rows have no {:?} (null); every item needs an id to be tagged \
                     (`atelier catalog inspect` counts them)",
                    ids.null_count(),
                    names.id
                ),
            }
            .into());
        }
        let images = binary(batch, &names.image)?;
        let uris = utf8(batch, &names.image_uri)?;
        let labels: Vec<Option<StringArray>> = self
            .options
            .labels
            .iter()
            .map(|attribute| utf8(batch, names.column_of(attribute)))
            .collect::<Result<_>>()?;
        let extras: Vec<Option<StringArray>> = self
            .options
            .extra_columns
            .iter()
            .map(|c| utf8(batch, c))
            .collect::<Result<_>>()?;
        let value = |array: &Option<StringArray>, row: usize| -> Option<String> {
            array
                .as_ref()
                .filter(|a| a.is_valid(row))
                .map(|a| a.value(row).to_string())
        };

        let mut items = Vec::with_capacity(batch.num_rows());
        let mut fetches = Vec::new();
        for row in 0..batch.num_rows() {
            let item_id = ids.value(row).to_string();
            if let Some(keep) = &self.options.keep {
                if !(keep.0)(&item_id) {
                    continue;
                }
            }
            let source = match (&images, &uris) {
                (Some(images), _) if images.is_valid(row) => {
                    let image = images.value(row);
                    match self.options.limits.check_bytes(image.len() as u64) {
                        Ok(()) => Source::Bytes(Bytes::copy_from_slice(image)),
                        Err(e) => Source::Failed(e),
                    }
                }
                (_, Some(uris)) if uris.is_valid(row) => {
                    fetches.push((items.len(), uris.value(row).to_string()));
                    Source::Failed(ItemError::NoImage)
                }
                _ => Source::Failed(ItemError::NoImage),
            };
            items.push(RawItem {
                item_id,
                labels: Labels::from_pairs(
                    self.options
                        .labels
                        .iter()
                        .zip(&labels)
                        .map(|(attribute, array)| (attribute.as_str(), value(array, row))),
                ),
                extra: extras.iter().map(|e| value(e, row)).collect(),
                source,
            });
        }
        if !fetches.is_empty() {
            let started = Instant::now();
            let fetched = self.handle.block_on(fetch_all(
                fetches,
                Arc::clone(&self.stores),
                self.options.fetch_concurrency,
                self.options.http,
                self.options.limits.max_bytes,
            ))?;
            self.stats.add_time(Stage::Fetch, started.elapsed());
            for (index, source) in fetched {
                items[index].source = source;
            }
        }
        Ok(items)
    }
}

async fn fetch_all(
    uris: Vec<(usize, String)>,
    stores: Arc<StoreCache>,
    concurrency: usize,
    http: HttpLimits,
    max_bytes: u64,
) -> Result<Vec<(usize, Source)>> {
    stream::iter(uris)
        .map(|(index, uri)| {
            let stores = Arc::clone(&stores);
            async move { Ok((index, fetch(&stores, http, uri, max_bytes).await?)) }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// One `image_uri` object, read at most `max_bytes` into memory. What the
/// object itself explains (missing, forbidden, unaddressable, too large) is
/// the item's error. A store fault that outlasted the store's own retries
/// (down, throttling, a connection cut mid-body) fails the batch, so that
/// the task fails retryably and runs again, rather than leaving a permanent
/// per-item error in a job that succeeds.
async fn fetch(
    stores: &StoreCache,
    http: HttpLimits,
    uri: String,
    max_bytes: u64,
) -> Result<Source> {
    if uri.starts_with("https://") || uri.starts_with("http://") {
        let fetcher = HttpFetcher::shared(http)?;
        return Ok(match fetcher.fetch(&uri, max_bytes).await? {
            Fetched::Bytes(bytes) => Source::Bytes(bytes),
            Fetched::Refused(reason) => fetch_failed(uri, reason),
            Fetched::TooLarge { bytes, limit } => {
                Source::Failed(ItemError::TooManyBytes { bytes, limit })
            }
        });
    }
    let location = match stores.resolve(&uri) {
        Ok(location) => location,
        Err(e) => return Ok(fetch_failed(uri, e.to_string())),
    };
    let result = match location.store.get(&location.path).await {
        Ok(result) => result,
        Err(e) => return item_or_batch_error(uri, e),
    };
    let too_many = |bytes: u64| {
        Source::Failed(ItemError::TooManyBytes {
            bytes,
            limit: max_bytes,
        })
    };
    if result.meta.size > max_bytes {
        return Ok(too_many(result.meta.size));
    }
    if matches!(result.payload, GetResultPayload::File(..)) {
        // A local file's size is known and within the limit: one read.
        return match result.bytes().await {
            Ok(bytes) => Ok(Source::Bytes(bytes)),
            Err(e) => item_or_batch_error(uri, e),
        };
    }
    // A remote body is counted as it arrives: a server may send more than
    // it announced.
    let mut body = Vec::with_capacity(result.meta.size as usize);
    let mut chunks = result.into_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return item_or_batch_error(uri, e),
        };
        let bytes = (body.len() + chunk.len()) as u64;
        if bytes > max_bytes {
            return Ok(too_many(bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Source::Bytes(body.into()))
}

fn fetch_failed(uri: String, reason: String) -> Source {
    Source::Failed(ItemError::Fetch { uri, reason })
}

/// A store error on one object: the item's own fault, or a store fault that
/// must fail the batch (see [`fetch`]).
fn item_or_batch_error(uri: String, error: object_store::Error) -> Result<Source> {
    let error = CatalogError::store(uri.clone(), error);
    if error.is_retryable() {
        return Err(error.into());
    }
    let reason = match error {
        CatalogError::NotFound { .. } => "not found".to_string(),
        CatalogError::Store { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    Ok(fetch_failed(uri, reason))
}

fn utf8(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let column = cast(column, &DataType::Utf8).map_err(CatalogError::from)?;
    Ok(column.as_any().downcast_ref::<StringArray>().cloned())
}

fn binary(batch: &RecordBatch, name: &str) -> Result<Option<BinaryArray>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let column = cast(column, &DataType::Binary).map_err(CatalogError::from)?;
    Ok(column.as_any().downcast_ref::<BinaryArray>().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_error(kind: &str) -> object_store::Error {
        let source: Box<dyn std::error::Error + Send + Sync> = kind.to_string().into();
        match kind {
            "not found" => object_store::Error::NotFound {
                path: "img/a.jpg".into(),
                source,
            },
            "forbidden" => object_store::Error::PermissionDenied {
                path: "img/a.jpg".into(),
                source,
            },
            _ => object_store::Error::Generic {
                store: "S3",
                source,
            },
        }
    }

    #[test]
    fn a_missing_or_forbidden_object_is_the_items_error_and_a_store_fault_fails_the_batch() {
        let uri = "s3://shop/img/a.jpg".to_string();
        for kind in ["not found", "forbidden"] {
            match item_or_batch_error(uri.clone(), store_error(kind)) {
                Ok(Source::Failed(ItemError::Fetch { uri: at, reason })) => {
                    assert_eq!(at, uri);
                    assert!(reason.contains(kind), "{reason}");
                }
                other => panic!("{kind}: {other:?}"),
            }
        }
        // A store that is down or throttling, after its own retries.
        let error = item_or_batch_error(uri.clone(), store_error("503 Slow Down")).unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains(&uri), "{error}");
    }
}
