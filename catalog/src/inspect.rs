//! `atelier catalog inspect`: what a catalogue holds and whether it is sound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use arrow::compute::cast;
use arrow_array::{Array, BinaryArray, RecordBatch, StringArray};
use arrow_schema::DataType;
use futures::StreamExt;
use serde::Serialize;

use crate::error::{CatalogError, Result};
use crate::reader::{Catalog, ReadRange};
use crate::sniff::ImageFormat;
use atelier_proto::{CatalogColumns, Label};

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub url: String,
    pub files: Vec<FileReport>,
    pub ignored: Vec<String>,
    pub rows: usize,
    pub row_groups: usize,
    pub columns: Vec<(String, String)>,
    /// The names the catalogue was read under.
    pub names: CatalogColumns,
    /// Rows whose id an earlier row already had.
    pub duplicate_item_ids: usize,
    /// The first few ids that occur more than once, in catalogue order.
    pub duplicate_examples: Vec<String>,
    /// Rows with no id at all.
    pub null_item_ids: usize,
    pub labels: BTreeMap<String, LabelDistribution>,
    pub samples: Vec<SampleRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub url: String,
    pub bytes: u64,
    pub rows: usize,
    pub row_groups: usize,
    pub max_row_group_rows: usize,
    /// Every row group can be read in part (see `CatalogFile::can_read_part_of`),
    /// so the coordinator may cut a large group into several shards.
    pub sliceable: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelDistribution {
    pub distinct: usize,
    pub missing: usize,
    /// The most frequent values with their counts, most frequent first.
    pub top: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleRow {
    pub item_id: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
}

const TOP_VALUES: usize = 12;
const SAMPLES: usize = 5;
const DUPLICATE_EXAMPLES: usize = 5;

/// Opens the catalogue under `names`, checks every footer, and reads the id
/// and label columns once.
pub async fn inspect(url: &str, names: &CatalogColumns) -> Result<InspectReport> {
    let catalog = Catalog::open_mapped(url, names).await?;
    let files = catalog
        .files
        .iter()
        .map(|f| {
            let groups = f.row_group_rows();
            FileReport {
                url: f.location.url(),
                bytes: f.size,
                rows: groups.iter().sum(),
                row_groups: groups.len(),
                max_row_group_rows: groups.iter().copied().max().unwrap_or(0),
                sliceable: (0..groups.len()).all(|g| f.can_read_part_of(g)),
            }
        })
        .collect();
    let columns = catalog.files[0]
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();

    let mut counts: HashMap<Label, HashMap<String, usize>> = HashMap::new();
    let mut missing: HashMap<Label, usize> = HashMap::new();
    let mut ids = HashSet::with_capacity(catalog.num_rows());
    let (mut duplicates, mut duplicate_examples, mut null_ids) = (0, Vec::new(), 0);
    let mut wanted = vec![names.id.as_str()];
    wanted.extend(Label::ALL.iter().map(|&label| names.label(label)));
    let mut stream = catalog.stream(catalog.full_ranges(), &wanted, 8192);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if let Some(item_ids) = utf8_column(&batch, &names.id)? {
            null_ids += item_ids.null_count();
            for id in item_ids.iter().flatten() {
                if !ids.insert(id.to_string()) {
                    duplicates += 1;
                    if duplicate_examples.len() < DUPLICATE_EXAMPLES
                        && !duplicate_examples.iter().any(|d| d == id)
                    {
                        duplicate_examples.push(id.to_string());
                    }
                }
            }
        }
        for &label in Label::ALL {
            let Some(values) = utf8_column(&batch, names.label(label))? else {
                continue;
            };
            let counter = counts.entry(label).or_default();
            for value in values.iter() {
                match value {
                    Some(v) => *counter.entry(v.to_string()).or_default() += 1,
                    None => *missing.entry(label).or_default() += 1,
                }
            }
        }
    }
    let labels = counts
        .into_iter()
        .map(|(label, counter)| {
            let distinct = counter.len();
            let mut top: Vec<_> = counter.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(TOP_VALUES);
            let distribution = LabelDistribution {
                distinct,
                missing: missing.get(&label).copied().unwrap_or(0),
                top,
            };
            (label.to_string(), distribution)
        })
        .collect();

    Ok(InspectReport {
        url: catalog.location.url(),
        rows: catalog.num_rows(),
        row_groups: catalog.num_row_groups(),
        samples: samples(&catalog).await?,
        files,
        ignored: catalog.ignored.clone(),
        columns,
        names: names.clone(),
        duplicate_item_ids: duplicates,
        duplicate_examples,
        null_item_ids: null_ids,
        labels,
    })
}

async fn samples(catalog: &Catalog) -> Result<Vec<SampleRow>> {
    let names = &catalog.names;
    let mut wanted = vec![names.id.as_str(), &names.image, &names.image_uri];
    wanted.extend(Label::ALL.iter().map(|&label| names.label(label)));
    let first = ReadRange::groups(0, vec![0]);
    let mut stream = catalog.stream(vec![first], &wanted, SAMPLES);
    let Some(batch) = stream.next().await.transpose()? else {
        return Ok(Vec::new());
    };
    let ids = utf8_column(&batch, &names.id)?
        .ok_or_else(|| CatalogError::Internal(format!("no {:?} column read", names.id)))?;
    let images = match batch.column_by_name(&names.image) {
        Some(column) => Some(cast(column, &DataType::Binary)?),
        None => None,
    };
    let images = images
        .as_ref()
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>());
    let uris = utf8_column(&batch, &names.image_uri)?;
    let mut rows = Vec::new();
    for row in 0..batch.num_rows().min(SAMPLES) {
        let mut labels = BTreeMap::new();
        for &label in Label::ALL {
            if let Some(values) = utf8_column(&batch, names.label(label))? {
                if values.is_valid(row) {
                    labels.insert(label.to_string(), values.value(row).to_string());
                }
            }
        }
        let image = match (images.filter(|i| i.is_valid(row)), &uris) {
            (Some(images), _) => describe_image(images.value(row)),
            (None, Some(uris)) if uris.is_valid(row) => uris.value(row).to_string(),
            _ => "no image".to_string(),
        };
        rows.push(SampleRow {
            item_id: if ids.is_valid(row) {
                ids.value(row).to_string()
            } else {
                "(no id)".to_string()
            },
            labels,
            image,
        });
    }
    Ok(rows)
}

/// "jpeg 384x512, 31204 bytes", or what is wrong with the bytes.
pub fn describe_image(bytes: &[u8]) -> String {
    match ImageFormat::detect(bytes) {
        None => format!("unrecognised image, {} bytes", bytes.len()),
        Some(format) => match format.dimensions(bytes) {
            Ok((w, h)) => format!("{} {w}x{h}, {} bytes", format.name(), bytes.len()),
            Err(e) => format!(
                "{} with a bad header ({e}), {} bytes",
                format.name(),
                bytes.len()
            ),
        },
    }
}

fn utf8_column(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let column = cast(column, &DataType::Utf8)?;
    Ok(column.as_any().downcast_ref::<StringArray>().cloned())
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "catalogue {}", self.url)?;
        writeln!(
            f,
            "  {} rows in {} files, {} row groups",
            self.rows,
            self.files.len(),
            self.row_groups
        )?;
        writeln!(f, "\nfiles")?;
        for file in &self.files {
            writeln!(
                f,
                "  {:<60} {:>9} rows {:>4} row groups (max {:>5} rows) {:>8.1} MB",
                file.url,
                file.rows,
                file.row_groups,
                file.max_row_group_rows,
                file.bytes as f64 / 1e6
            )?;
        }
        for ignored in &self.ignored {
            writeln!(f, "  {ignored:<60} ignored: not *.parquet")?;
        }
        let whole = self.files.iter().filter(|file| !file.sliceable).count();
        if whole > 0 {
            writeln!(
                f,
                "  {whole} of {} files have no offset index for their images: their row groups \
                 are never split into smaller shards",
                self.files.len()
            )?;
        }
        writeln!(f, "\nschema: ok")?;
        for (name, data_type) in &self.columns {
            writeln!(f, "  {name:<20} {data_type}")?;
        }
        let id = &self.names.id;
        if self.duplicate_item_ids > 0 {
            writeln!(
                f,
                "  WARNING: {} rows repeat an earlier row's {id} (for example {}); \
                 each row is tagged, so its id appears as often in the output",
                self.duplicate_item_ids,
                self.duplicate_examples.join(", ")
            )?;
        } else {
            writeln!(f, "  {id}: unique")?;
        }
        if self.null_item_ids > 0 {
            writeln!(
                f,
                "  WARNING: {} rows have no {id}; tagging refuses them",
                self.null_item_ids
            )?;
        }
        for (label, distribution) in &self.labels {
            let column = label
                .parse::<Label>()
                .map(|l| self.names.label(l).to_string())
                .unwrap_or_default();
            let from = if column.is_empty() || &column == label {
                String::new()
            } else {
                format!(" (column {column})")
            };
            writeln!(
                f,
                "\n{label}{from}: {} distinct, {} missing",
                distribution.distinct, distribution.missing
            )?;
            for (value, count) in &distribution.top {
                let share = 100.0 * *count as f64 / self.rows.max(1) as f64;
                writeln!(f, "  {value:<40} {count:>9} {share:>5.1}%")?;
            }
        }
        writeln!(f, "\nsample rows")?;
        for row in &self.samples {
            let labels: Vec<String> = row
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            writeln!(
                f,
                "  {}  [{}]  {}",
                row.item_id,
                row.image,
                labels.join(" ")
            )?;
        }
        Ok(())
    }
}
