//! Importing a folder of product photos and a label CSV.
//!
//! The defaults read the layout of the public "Fashion Product Images" dataset:
//! `styles.csv` with `id, ..., articleType, baseColour, ..., productDisplayName`
//! and `images/<id>.jpg`. Brand is the first word of the display name and the
//! caption is the display name in lower case. Every CSV column that is not a
//! label is carried through as an extra column.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use tokio::runtime::Handle;

use crate::error::{CatalogError, Result};
use crate::item::{CatalogItem, Labels};
use crate::output::prepare_output;
use crate::store::StoreLocation;
use crate::writer::{CatalogWriter, WriterOptions};

/// How CSV columns map onto catalogue columns.
#[derive(Debug, Clone)]
pub struct ColumnMapping {
    pub id: String,
    /// File name of an item's image inside the images folder; `{id}` is replaced.
    pub image_template: String,
    pub color: Option<String>,
    pub category: Option<String>,
    /// A column holding the brand; when absent, the first word of `name` is used.
    pub brand: Option<String>,
    /// The product's display name: source of the caption (lower-cased) and, by default, the brand.
    pub name: Option<String>,
    /// Cell values that mean "no label".
    pub missing: Vec<String>,
}

impl Default for ColumnMapping {
    fn default() -> Self {
        Self {
            id: "id".into(),
            image_template: "{id}.jpg".into(),
            color: Some("baseColour".into()),
            category: Some("articleType".into()),
            brand: None,
            name: Some("productDisplayName".into()),
            missing: vec![String::new(), "NA".into()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub images: PathBuf,
    pub labels: PathBuf,
    pub mapping: ColumnMapping,
    /// Store `image_uri` links to the files instead of embedding their bytes.
    pub link_images: bool,
    pub overwrite: bool,
    pub writer: WriterOptions,
}

/// A CSV row that could not be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line in the CSV file.
    pub line: u64,
    pub item_id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub rows_read: usize,
    pub imported: usize,
    pub bad_rows: Vec<BadRow>,
    pub files: usize,
    pub seconds: f64,
}

/// Rows go to the writer in groups of this size to keep memory flat.
const WRITE_CHUNK: usize = 1024;

/// Imports the CSV and images into `out`. Blocking; `handle` runs the writes.
pub fn import(
    options: &ImportOptions,
    out: StoreLocation,
    handle: &Handle,
) -> Result<ImportSummary> {
    let started = Instant::now();
    let csv_path = options.labels.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(&options.labels)
        .map_err(|e| CatalogError::Csv {
            path: csv_path.clone(),
            reason: e.to_string(),
        })?;
    let headers = reader
        .headers()
        .map_err(|e| CatalogError::Csv {
            path: csv_path.clone(),
            reason: e.to_string(),
        })?
        .clone();
    let index_of = |name: &str| headers.iter().position(|h| h == name);
    let mapping = &options.mapping;
    let column = |name: &Option<String>| -> Result<Option<usize>> {
        match name {
            None => Ok(None),
            Some(name) => index_of(name).map(Some).ok_or_else(|| CatalogError::Csv {
                path: csv_path.clone(),
                reason: format!(
                    "no column {name:?} (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    };
    let id_col = column(&Some(mapping.id.clone()))?.unwrap_or_default();
    let color_col = column(&mapping.color)?;
    let category_col = column(&mapping.category)?;
    let brand_col = column(&mapping.brand)?;
    let name_col = column(&mapping.name)?;
    let label_cols = [Some(id_col), color_col, category_col, brand_col];
    let extra_cols: Vec<usize> = (0..headers.len())
        .filter(|i| !label_cols.contains(&Some(*i)))
        .collect();

    handle.block_on(prepare_output(&out, options.overwrite))?;
    let writer_options = WriterOptions {
        image: !options.link_images,
        image_uri: options.link_images,
        extra_columns: extra_cols.iter().map(|&i| headers[i].to_string()).collect(),
        ..options.writer.clone()
    };
    let mut writer = CatalogWriter::new(out, writer_options)?;

    let mut summary = ImportSummary {
        rows_read: 0,
        imported: 0,
        bad_rows: Vec::new(),
        files: 0,
        seconds: 0.0,
    };
    let mut seen = HashSet::new();
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                summary.rows_read += 1;
                summary.bad_rows.push(BadRow {
                    line,
                    item_id: None,
                    reason: format!("unreadable CSV line: {e}"),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        summary.rows_read += 1;
        let line = record.position().map_or(line, csv::Position::line);
        let value = |col: Option<usize>| -> Option<String> {
            let cell = record.get(col?)?.trim();
            (!mapping.missing.iter().any(|m| m == cell)).then(|| cell.to_string())
        };
        let Some(item_id) = value(Some(id_col)) else {
            summary.bad_rows.push(BadRow {
                line,
                item_id: None,
                reason: format!("empty {:?}", mapping.id),
            });
            continue;
        };
        if !seen.insert(item_id.clone()) {
            summary.bad_rows.push(BadRow {
                line,
                item_id: Some(item_id),
                reason: "duplicate item id".into(),
            });
            continue;
        }
        let file = options
            .images
            .join(mapping.image_template.replace("{id}", &item_id));
        let (image, image_uri) = if options.link_images {
            match std::fs::metadata(&file) {
                Ok(meta) if meta.is_file() => (None, Some(file_url(&file))),
                _ => {
                    summary.bad_rows.push(missing_image(line, &item_id, &file));
                    continue;
                }
            }
        } else {
            match std::fs::read(&file) {
                Ok(bytes) => (Some(bytes), None),
                Err(_) => {
                    summary.bad_rows.push(missing_image(line, &item_id, &file));
                    continue;
                }
            }
        };
        let name = value(name_col);
        let brand = value(brand_col).or_else(|| {
            name.as_deref()
                .and_then(|n| n.split_whitespace().next())
                .map(str::to_string)
        });
        chunk.push(CatalogItem {
            labels: Labels::from_pairs([
                (crate::schema::COLOR, value(color_col)),
                (crate::schema::BRAND, brand),
                (crate::schema::CATEGORY, value(category_col)),
                (crate::schema::CAPTION, name.map(|n| n.to_lowercase())),
            ]),
            extra: extra_cols.iter().map(|&i| value(Some(i))).collect(),
            item_id,
            image,
            image_uri,
        });
        if chunk.len() == WRITE_CHUNK {
            summary.imported += chunk.len();
            handle.block_on(writer.write(std::mem::take(&mut chunk)))?;
        }
    }
    summary.imported += chunk.len();
    handle.block_on(writer.write(chunk))?;
    summary.files = handle.block_on(writer.finish())?.len();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn missing_image(line: u64, item_id: &str, file: &std::path::Path) -> BadRow {
    BadRow {
        line,
        item_id: Some(item_id.to_string()),
        reason: format!("missing image {}", file.display()),
    }
}

fn file_url(path: &std::path::Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    url::Url::from_file_path(&absolute)
        .map(|u| u.to_string())
        .unwrap_or_else(|()| format!("file://{}", absolute.display()))
}
