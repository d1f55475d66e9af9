//! The tagging loop: a catalogue range through the loader, the models and
//! into one Parquet object.

use std::sync::Arc;
use std::time::Instant;

use atelier_catalog::{Catalog, ReadRange, StoreLocation};
use atelier_pipeline::{ImageLoader, Pixels};
use atelier_proto::{EmbeddingPrecision, FetchOptions};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::errors::ParquetError;
use tch::Device;
use tokio::runtime::Handle;

use super::predictions::Queued;
use super::{Taggers, Written};
use crate::error::{Result, WorkerError};
use crate::evaluate::inference_loader_options;

/// How a run of `Taggers::write` uses the device and the decode threads.
#[derive(Debug, Clone, Copy)]
pub struct Tagging {
    pub device: Device,
    pub beams: usize,
    pub batch_size: usize,
    pub threads: usize,
    pub fetch: FetchOptions,
    /// Write an `embedding` column, in this precision.
    pub embeddings: Option<EmbeddingPrecision>,
}

impl Taggers {
    /// Tags `ranges` of `catalog` into the one Parquet object `target`, rows in
    /// input order. The object appears only when complete (`BufWriter` puts it
    /// at close), so a retried shard replaces it whole. Stops with
    /// `WorkerError::Cancelled` between batches once `cancelled` says so.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        tagging: &Tagging,
        catalog: &Catalog,
        ranges: Vec<ReadRange>,
        target: &StoreLocation,
        handle: &Handle,
        cancelled: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(Written),
    ) -> Result<Written> {
        let schema = self.schema(catalog.id_type()?, tagging.embeddings);
        let loader_options = inference_loader_options(
            &self.models[0].0,
            tagging.batch_size,
            tagging.threads,
            tagging.device,
            self.gpu_decode,
            tagging.fetch,
        );
        let loader = ImageLoader::new(catalog, ranges, loader_options, handle.clone())?;
        let stats = loader.stats();
        let writer = BufWriter::new(Arc::clone(&target.store), target.path.clone());
        let mut writer = AsyncArrowWriter::try_new(writer, Arc::clone(&schema), None)
            .map_err(|source| parquet_error(target, source))?;
        let mut written = Written::default();
        // Reads a queued batch back and appends its rows. The wait for the
        // device counts as forward time, the rows and the Parquet as write.
        let mut write_rows = |queued: Queued, written: &mut Written| -> Result<()> {
            let wait = Instant::now();
            let predicted = queued.read_back()?;
            written.stages.forward += wait.elapsed().as_secs_f64();
            let write = Instant::now();
            written.errors += predicted.errors();
            let rows = self.rows(predicted, &schema)?;
            handle
                .block_on(writer.write(&rows))
                .map_err(|source| parquet_error(target, source))?;
            written.stages.write += write.elapsed().as_secs_f64();
            written.rows += rows.num_rows();
            pipeline_stages(written, &stats.snapshot());
            progress(*written);
            Ok(())
        };
        // One batch stays queued on the device while the previous one is read
        // back, turned into rows and written (see `predictions`).
        let mut in_flight = None;
        for batch in loader {
            if cancelled() {
                return Err(WorkerError::Cancelled);
            }
            let mut batch = batch?;
            let encoded = matches!(batch.pixels, Pixels::Encoded { .. });
            let upload = Instant::now();
            let images = (batch.ok_count() > 0)
                .then(|| crate::device::device_images(&mut batch, tagging.device));
            let seconds = upload.elapsed().as_secs_f64();
            if encoded {
                written.stages.gpu_decode += seconds;
            } else {
                written.stages.upload += seconds;
            }
            let forward = Instant::now();
            // The pixels are on the device now; only the items wait for their rows.
            let items = std::mem::take(&mut batch.items);
            let queued = self.queue(
                items,
                images.as_ref(),
                tagging.beams,
                tagging.embeddings.is_some(),
            )?;
            written.stages.forward += forward.elapsed().as_secs_f64();
            if let Some(previous) = in_flight.replace(queued) {
                write_rows(previous, &mut written)?;
            }
        }
        if let Some(last) = in_flight {
            write_rows(last, &mut written)?;
        }
        let write = Instant::now();
        handle
            .block_on(writer.close())
            .map_err(|source| parquet_error(target, source))?;
        written.stages.write += write.elapsed().as_secs_f64();
        pipeline_stages(&mut written, &stats.snapshot());
        Ok(written)
    }
}

fn pipeline_stages(written: &mut Written, stats: &atelier_pipeline::StatsSnapshot) {
    written.stages.read = stats.read_s;
    written.stages.fetch = stats.fetch_s;
    written.stages.decode = stats.decode_s;
    written.stages.transform = stats.transform_s;
}

fn parquet_error(target: &StoreLocation, source: ParquetError) -> atelier_catalog::CatalogError {
    atelier_catalog::CatalogError::Parquet {
        file: target.url(),
        source,
    }
}
