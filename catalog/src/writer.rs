//! Writing catalogues: bounded row groups, bounded files, one object per file.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{CatalogError, Result};
use crate::item::CatalogItem;
use crate::schema::{self, LABEL_COLUMNS};
use crate::store::StoreLocation;

/// Row groups of a couple of thousand rows let later stages plan work from
/// footers alone and keep one row group of decoded images small in memory.
pub const DEFAULT_ROWS_PER_GROUP: usize = 2048;
pub const DEFAULT_GROUPS_PER_FILE: usize = 8;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub rows_per_group: usize,
    pub groups_per_file: usize,
    /// Write the `image` column (embedded bytes).
    pub image: bool,
    /// Write the `image_uri` column.
    pub image_uri: bool,
    /// Extra utf8 columns, in the order of [`CatalogItem::extra`].
    pub extra_columns: Vec<String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            rows_per_group: DEFAULT_ROWS_PER_GROUP,
            groups_per_file: DEFAULT_GROUPS_PER_FILE,
            image: true,
            image_uri: false,
            extra_columns: Vec::new(),
        }
    }
}

/// A file the writer finished.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub url: String,
    pub rows: usize,
    pub row_groups: usize,
}

/// Streams items into `part-NNNNN.parquet` files under a prefix.
pub struct CatalogWriter {
    prefix: StoreLocation,
    options: WriterOptions,
    schema: SchemaRef,
    properties: WriterProperties,
    pending: Vec<CatalogItem>,
    current: Option<OpenFile>,
    written: Vec<WrittenFile>,
}

impl std::fmt::Debug for CatalogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogWriter")
            .field("prefix", &self.prefix)
            .field("written", &self.written.len())
            .finish_non_exhaustive()
    }
}

struct OpenFile {
    location: StoreLocation,
    writer: AsyncArrowWriter<BufWriter>,
    rows: usize,
}

impl CatalogWriter {
    pub fn new(prefix: StoreLocation, options: WriterOptions) -> Result<Self> {
        if options.rows_per_group == 0 || options.groups_per_file == 0 {
            return Err(CatalogError::InvalidArgument(
                "rows per group and groups per file must be positive".into(),
            ));
        }
        if !options.image && !options.image_uri {
            return Err(CatalogError::InvalidArgument(
                "a catalogue needs an image or image_uri column".into(),
            ));
        }
        let schema = schema::write_schema(options.image, options.image_uri, &options.extra_columns);
        let image = ColumnPath::from(schema::IMAGE);
        // Image bytes are already compressed: dictionaries, statistics and a
        // second compression pass over them only cost time.
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(options.rows_per_group))
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_column_compression(image.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(image.clone(), false)
            .set_column_statistics_enabled(image, EnabledStatistics::None)
            .build();
        Ok(Self {
            prefix,
            options,
            schema,
            properties,
            pending: Vec::new(),
            current: None,
            written: Vec::new(),
        })
    }

    /// Buffers `items`, writing every complete row group.
    pub async fn write(&mut self, items: impl IntoIterator<Item = CatalogItem>) -> Result<()> {
        self.pending.extend(items);
        while self.pending.len() >= self.options.rows_per_group {
            let group: Vec<_> = self.pending.drain(..self.options.rows_per_group).collect();
            self.write_group(group).await?;
        }
        Ok(())
    }

    /// Writes what is buffered and closes the last file.
    pub async fn finish(mut self) -> Result<Vec<WrittenFile>> {
        if !self.pending.is_empty() {
            let group = std::mem::take(&mut self.pending);
            self.write_group(group).await?;
        }
        self.close_current().await?;
        Ok(self.written)
    }

    async fn write_group(&mut self, group: Vec<CatalogItem>) -> Result<()> {
        let batch = self.to_batch(group)?;
        if self.current.is_none() {
            let name = format!("part-{:05}.parquet", self.written.len());
            let location = self.prefix.child(&name);
            let object = BufWriter::new(Arc::clone(&location.store), location.path.clone());
            let writer = AsyncArrowWriter::try_new(
                object,
                Arc::clone(&self.schema),
                Some(self.properties.clone()),
            )
            .map_err(|source| parquet_error(&location, source))?;
            self.current = Some(OpenFile {
                location,
                writer,
                rows: 0,
            });
        }
        let rows_per_file = self.options.rows_per_group * self.options.groups_per_file;
        let full = {
            let Some(file) = self.current.as_mut() else {
                return Err(CatalogError::Internal("no open file".into()));
            };
            file.writer
                .write(&batch)
                .await
                .map_err(|source| parquet_error(&file.location, source))?;
            // Each group ends its own row group, so file boundaries stay aligned.
            file.writer
                .flush()
                .await
                .map_err(|source| parquet_error(&file.location, source))?;
            file.rows += batch.num_rows();
            file.rows >= rows_per_file
        };
        if full {
            self.close_current().await?;
        }
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        let Some(file) = self.current.take() else {
            return Ok(());
        };
        let metadata = file
            .writer
            .close()
            .await
            .map_err(|source| parquet_error(&file.location, source))?;
        tracing::debug!(file = %file.location, rows = file.rows, "catalogue file written");
        self.written.push(WrittenFile {
            url: file.location.url(),
            rows: file.rows,
            row_groups: metadata.num_row_groups(),
        });
        Ok(())
    }

    fn to_batch(&self, items: Vec<CatalogItem>) -> Result<RecordBatch> {
        let n = items.len();
        let mut ids = StringBuilder::with_capacity(n, n * 16);
        let image_bytes = if self.options.image {
            items
                .iter()
                .map(|i| i.image.as_ref().map_or(0, Vec::len))
                .sum()
        } else {
            0
        };
        let mut images = BinaryBuilder::with_capacity(n, image_bytes);
        let mut uris = StringBuilder::new();
        let mut labels: Vec<StringBuilder> =
            LABEL_COLUMNS.iter().map(|_| StringBuilder::new()).collect();
        let mut extras: Vec<StringBuilder> = self
            .options
            .extra_columns
            .iter()
            .map(|_| StringBuilder::new())
            .collect();
        for item in items {
            if item.extra.len() > extras.len() {
                return Err(CatalogError::InvalidArgument(format!(
                    "item {} has {} extra values, the writer has {} extra columns",
                    item.item_id,
                    item.extra.len(),
                    extras.len()
                )));
            }
            ids.append_value(&item.item_id);
            images.append_option(item.image);
            uris.append_option(item.image_uri);
            for (builder, column) in labels.iter_mut().zip(LABEL_COLUMNS) {
                builder.append_option(item.labels.get(column));
            }
            let mut values = item.extra.into_iter();
            for builder in &mut extras {
                builder.append_option(values.next().flatten());
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(ids.finish())];
        if self.options.image {
            columns.push(Arc::new(images.finish()));
        }
        if self.options.image_uri {
            columns.push(Arc::new(uris.finish()));
        }
        columns.extend(labels.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(extras.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

fn parquet_error(location: &StoreLocation, source: parquet::errors::ParquetError) -> CatalogError {
    CatalogError::Parquet {
        file: location.url(),
        source,
    }
}
