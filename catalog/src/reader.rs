//! Opening catalogues from their footers and streaming selected row groups.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;

use crate::error::{CatalogError, Result};
use crate::object_reader::ObjectFileReader;
use arrow_schema::DataType;
use atelier_proto::CatalogColumns;

use crate::schema::{self, FileColumns};
use crate::store::StoreLocation;

/// Footers are small; reading a few at once hides object-store latency.
const FOOTER_CONCURRENCY: usize = 16;

/// One Parquet file of a catalogue, known from its footer alone.
#[derive(Debug, Clone)]
pub struct CatalogFile {
    pub location: StoreLocation,
    pub size: u64,
    pub metadata: ArrowReaderMetadata,
    /// The names its columns were read under.
    pub names: CatalogColumns,
    pub columns: FileColumns,
}

impl CatalogFile {
    pub fn num_rows(&self) -> usize {
        self.row_group_rows().iter().sum()
    }

    pub fn row_group_rows(&self) -> Vec<usize> {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| usize::try_from(rg.num_rows()).unwrap_or(0))
            .collect()
    }

    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    /// Whether reading part of row group `group` costs only that part's pages:
    /// its image bytes have an offset index (the footer says where), or the file
    /// holds no image bytes. Without one a reader fetches the whole column
    /// chunk, so slicing a group would read it once per slice.
    pub fn can_read_part_of(&self, group: usize) -> bool {
        let Some(group) = self.metadata.metadata().row_groups().get(group) else {
            return false;
        };
        group
            .columns()
            .iter()
            .filter(|column| column.column_path().parts() == [self.names.image.as_str()])
            .all(|column| column.offset_index_offset().is_some())
    }

    /// Opens the footer of one object and checks it against the column
    /// contract under `names`. With `indexed` it also reads the offset index
    /// (where each page lies), so that reading part of a row group fetches
    /// only its pages rather than the whole column chunk of image bytes.
    pub async fn open(
        location: StoreLocation,
        size: Option<u64>,
        names: &CatalogColumns,
        indexed: bool,
    ) -> Result<Self> {
        let size = match size {
            Some(size) => size,
            None => {
                location
                    .store
                    .head(&location.path)
                    .await
                    .map_err(|e| CatalogError::store(location.url(), e))?
                    .size
            }
        };
        let file = location.url();
        if size < 12 {
            return Err(CatalogError::NotParquet {
                file,
                reason: format!("only {size} bytes, too short for a Parquet footer"),
            });
        }
        let mut reader =
            ObjectFileReader::new(Arc::clone(&location.store), location.path.clone(), size);
        let mut options = ArrowReaderOptions::new();
        if indexed {
            options = options.with_offset_index_policy(PageIndexPolicy::Optional);
        }
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| footer_error(&file, e))?;
        let columns = schema::validate(metadata.schema(), &file, names)?;
        Ok(Self {
            location,
            size,
            metadata,
            names: names.clone(),
            columns,
        })
    }
}

/// Whether `object` is hidden below `prefix`: its name, or a folder on the
/// way to it, starts with `_` or `.` (`_SUCCESS`, a job's `_attempts/`
/// staging, `.tmp` files), as Spark and Hive readers skip them.
pub fn is_hidden(prefix: &object_store::path::Path, object: &object_store::path::Path) -> bool {
    let below: Vec<_> = match object.prefix_match(prefix) {
        Some(parts) => parts.collect(),
        None => object.parts().collect(),
    };
    below
        .iter()
        .any(|part| part.as_ref().starts_with(['_', '.']))
}

fn is_label_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..)
    ) || data_type.is_integer()
}

fn footer_error(file: &str, error: ParquetError) -> CatalogError {
    match error {
        ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(store) => CatalogError::store(file, *store),
            Err(other) => CatalogError::NotParquet {
                file: file.to_string(),
                reason: other.to_string(),
            },
        },
        other => CatalogError::NotParquet {
            file: file.to_string(),
            reason: other.to_string(),
        },
    }
}

/// The row groups of one file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRange {
    pub file: usize,
    pub row_groups: Vec<usize>,
    /// Only these rows of the listed row groups taken together (counted from
    /// the first row of the first group); every row when `None`.
    pub rows: Option<Range<usize>>,
}

impl ReadRange {
    /// Every row of `row_groups`.
    pub fn groups(file: usize, row_groups: Vec<usize>) -> Self {
        Self {
            file,
            row_groups,
            rows: None,
        }
    }
}

/// A catalogue: every `*.parquet` object under a prefix, or one object.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub location: StoreLocation,
    /// The names its columns are read under.
    pub names: CatalogColumns,
    pub files: Vec<CatalogFile>,
    /// Objects under the prefix that are not `*.parquet` and were left out.
    pub ignored: Vec<String>,
}

impl Catalog {
    /// Lists the prefix and reads every footer, under atelier's own column
    /// names (a catalogue atelier wrote); never reads image bytes.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_mapped(url, &CatalogColumns::default()).await
    }

    /// As [`Catalog::open`], reading the columns `names` names: a shop's
    /// own catalogue.
    pub async fn open_mapped(url: &str, names: &CatalogColumns) -> Result<Self> {
        Self::open_listed(StoreLocation::parse(url)?, names, false).await
    }

    /// As [`Catalog::open_mapped`], with each file's offset index too (see
    /// [`CatalogFile::open`]): for readers of parts of row groups.
    pub async fn open_indexed(url: &str, names: &CatalogColumns) -> Result<Self> {
        Self::open_listed(StoreLocation::parse(url)?, names, true).await
    }

    pub async fn open_location(location: StoreLocation) -> Result<Self> {
        Self::open_listed(location, &CatalogColumns::default(), false).await
    }

    async fn open_listed(
        location: StoreLocation,
        names: &CatalogColumns,
        indexed: bool,
    ) -> Result<Self> {
        let listed: Vec<_> = match location
            .store
            .list(Some(&location.path))
            .try_collect::<Vec<_>>()
            .await
        {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(CatalogError::store(location.url(), e)),
        };
        let mut parquet = Vec::new();
        let mut ignored = Vec::new();
        for object in listed {
            if is_hidden(&location.path, &object.location) {
                continue;
            }
            let name = object.location.filename().unwrap_or_default();
            if name.ends_with(".parquet") {
                parquet.push((object.location, object.size));
            } else {
                ignored.push(location.url_of(&object.location));
            }
        }
        parquet.sort();
        ignored.sort();

        if parquet.is_empty() {
            // The URL may name a single file rather than a prefix.
            return match location.store.head(&location.path).await {
                Ok(meta) => {
                    let file = CatalogFile::open(location.clone(), Some(meta.size), names, indexed)
                        .await?;
                    Ok(Self {
                        location,
                        names: names.clone(),
                        files: vec![file],
                        ignored,
                    })
                }
                Err(object_store::Error::NotFound { .. }) if ignored.is_empty() => {
                    Err(CatalogError::NotFound {
                        url: location.url(),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => Err(CatalogError::Empty {
                    url: format!("{} (found only: {})", location.url(), ignored.join(", ")),
                }),
                Err(e) => Err(CatalogError::store(location.url(), e)),
            };
        }

        let files: Vec<CatalogFile> = stream::iter(parquet)
            .map(|(path, size)| {
                CatalogFile::open(location.with_path(path), Some(size), names, indexed)
            })
            .buffered(FOOTER_CONCURRENCY)
            .try_collect()
            .await?;
        let catalog = Self {
            location,
            names: names.clone(),
            files,
            ignored,
        };
        catalog.id_type()?;
        if catalog.num_rows() == 0 {
            return Err(CatalogError::Empty {
                url: catalog.location.url(),
            });
        }
        Ok(catalog)
    }

    pub fn num_rows(&self) -> usize {
        self.files.iter().map(CatalogFile::num_rows).sum()
    }

    /// Refuses, naming the file, a label column that is missing from a file or
    /// cannot be read as text; before any image is read.
    pub fn check_label_columns(&self, attributes: &[String]) -> Result<()> {
        for attribute in attributes {
            let column = self.names.column_of(attribute);
            for file in &self.files {
                let schema = file.schema();
                let problem = match schema.field_with_name(column) {
                    Err(_) if attribute.parse::<atelier_proto::Label>().is_ok() => continue,
                    Err(_) => format!(
                        "no label column {column:?} (found: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Ok(field) if is_label_type(field.data_type()) => continue,
                    Ok(field) => format!(
                        "label column {column:?} has type {}, expected text or integers",
                        field.data_type()
                    ),
                };
                return Err(CatalogError::Schema {
                    file: file.location.url(),
                    problem,
                });
            }
        }
        Ok(())
    }

    /// The type of the id column, the same in every file (tag outputs keep
    /// it, and one output must have one schema); files that disagree are
    /// refused, naming both.
    pub fn id_type(&self) -> Result<DataType> {
        let Some(first) = self.files.first() else {
            return Err(CatalogError::Empty {
                url: self.location.url(),
            });
        };
        let id_type = &first.columns.id_type;
        if let Some(other) = self.files.iter().find(|f| &f.columns.id_type != id_type) {
            return Err(CatalogError::Schema {
                file: other.location.url(),
                problem: format!(
                    "its id column {:?} has type {}, but {} has {id_type}; \
                     one catalogue's ids have one type",
                    self.names.id,
                    other.columns.id_type,
                    first.location.url()
                ),
            });
        }
        Ok(id_type.clone())
    }

    pub fn num_row_groups(&self) -> usize {
        self.files
            .iter()
            .map(|f| f.metadata.metadata().num_row_groups())
            .sum()
    }

    /// Every row group of every file, in order.
    pub fn full_ranges(&self) -> Vec<ReadRange> {
        self.files
            .iter()
            .enumerate()
            .map(|(file, f)| {
                ReadRange::groups(file, (0..f.metadata.metadata().num_row_groups()).collect())
            })
            .collect()
    }

    /// Streams `ranges` in order, reading only `columns` that each file has.
    pub fn stream(
        &self,
        ranges: Vec<ReadRange>,
        columns: &[&str],
        batch_rows: usize,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        let files = self.files.clone();
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        stream::iter(ranges)
            .then(move |range| {
                let file = files.get(range.file).cloned();
                let columns = columns.clone();
                async move {
                    let file = file.ok_or_else(|| {
                        CatalogError::InvalidArgument(format!(
                            "no file {} in catalogue",
                            range.file
                        ))
                    })?;
                    open_range(file, range, &columns, batch_rows)
                }
            })
            .try_flatten()
            .boxed()
    }
}

fn open_range(
    file: CatalogFile,
    range: ReadRange,
    columns: &[String],
    batch_rows: usize,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let url = file.location.url();
    let reader = ObjectFileReader::new(
        Arc::clone(&file.location.store),
        file.location.path.clone(),
        file.size,
    );
    let arrow_schema = Arc::clone(file.schema());
    let roots: Vec<usize> = columns
        .iter()
        .filter_map(|c| arrow_schema.index_of(c).ok())
        .collect();
    let mask = ProjectionMask::roots(
        file.metadata.metadata().file_metadata().schema_descr(),
        roots,
    );
    let mut builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.metadata.clone())
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1));
    if let Some(selection) = slice_selection(&file, &range, &url)? {
        builder = builder.with_row_selection(selection);
    }
    let stream = builder
        .with_row_groups(range.row_groups)
        .build()
        .map_err(|source| CatalogError::Parquet {
            file: url.clone(),
            source,
        })?;
    Ok(stream
        .map_err(move |source| CatalogError::Parquet {
            file: url.clone(),
            source,
        })
        .boxed())
}

/// The row selection of `range.rows` within its row groups; `None` for all rows.
fn slice_selection(
    file: &CatalogFile,
    range: &ReadRange,
    url: &str,
) -> Result<Option<RowSelection>> {
    let Some(rows) = &range.rows else {
        return Ok(None);
    };
    let groups = file.metadata.metadata().row_groups();
    let mut available = 0usize;
    for &g in &range.row_groups {
        let group = groups.get(g).ok_or_else(|| {
            CatalogError::InvalidArgument(format!(
                "{url} has {} row groups, no row group {g}",
                groups.len()
            ))
        })?;
        available += usize::try_from(group.num_rows()).unwrap_or(0);
    }
    if rows.start > rows.end || rows.end > available {
        return Err(CatalogError::InvalidArgument(format!(
            "rows {}..{} of {url} are outside its row groups {:?} ({available} rows)",
            rows.start, rows.end, range.row_groups
        )));
    }
    Ok(Some(RowSelection::from(vec![
        RowSelector::skip(rows.start),
        RowSelector::select(rows.end - rows.start),
        RowSelector::skip(available - rows.end),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;

    #[test]
    fn objects_under_underscore_or_dot_folders_are_hidden() {
        let prefix = Path::from("tags/nightly");
        let hidden = |object: &str| is_hidden(&prefix, &Path::from(object));
        assert!(!hidden("tags/nightly/part-00000.parquet"));
        assert!(hidden("tags/nightly/_SUCCESS"));
        assert!(hidden(
            "tags/nightly/_attempts/job-1/part-00000.attempt-2.parquet"
        ));
        assert!(hidden("tags/nightly/.spark/part-1.parquet"));
        // The prefix's own folders do not count.
        assert!(!is_hidden(
            &Path::from("_data/shop"),
            &Path::from("_data/shop/part-00000.parquet")
        ));
    }
}
