//! Splits and label vocabularies, read from the label columns alone.

use std::collections::BTreeMap;

use arrow::compute::cast;
use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use atelier_catalog::{stable_hash, Catalog, CatalogError};
use atelier_models::{LabelMap, Vocab};
use atelier_proto::{Label, Task};
use futures::StreamExt;

use crate::error::Result;

/// Whether an item belongs to the validation split: a stable hash of its id,
/// so the split is the same on every run and machine and needs no list.
pub fn in_validation(item_id: &str, fraction: f64) -> bool {
    ((stable_hash(item_id) % 10_000) as f64) < fraction * 10_000.0
}

/// What a pass over the label columns found.
#[derive(Debug, Clone)]
pub struct LabelScan {
    pub train_items: usize,
    pub validation_items: usize,
    pub labels: BTreeMap<String, LabelMap>,
    /// The attributes the heads predict, in order.
    pub attributes: Vec<String>,
    pub vocab: Option<Vocab>,
}

/// The attributes a run's heads predict: `targets` when given, each one
/// required; otherwise the task's own, where a pool keeps those the
/// catalogue labels (colour, brand and category where present).
pub(crate) fn wanted_attributes(task: Task, targets: &[String]) -> (Vec<String>, bool) {
    if targets.is_empty() {
        let own = task.attributes().iter().map(|a| a.to_string()).collect();
        (own, task == Task::Pool)
    } else {
        (targets.to_vec(), false)
    }
}

/// The labels a loader reads for a model of these attributes: theirs and
/// the caption.
pub(crate) fn label_attributes<'a>(attributes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut labels: Vec<String> = attributes.into_iter().map(str::to_string).collect();
    labels.push(Label::Caption.name().to_string());
    labels
}

/// Builds label maps (and the vocabulary for captions) from the training split.
pub async fn scan_labels(
    catalog: &Catalog,
    task: Task,
    targets: &[String],
    val_fraction: f64,
    min_label_count: usize,
    min_word_count: usize,
) -> Result<LabelScan> {
    let names = &catalog.names;
    let (wanted, where_present) = wanted_attributes(task, targets);
    catalog.check_label_columns(&wanted)?;
    let mut read: Vec<String> = wanted.clone();
    read.push(Label::Caption.name().to_string());
    let mut columns = vec![names.id.as_str()];
    columns.extend(read.iter().map(|a| names.column_of(a)));
    let mut stream = catalog.stream(catalog.full_ranges(), &columns, 8192);
    let mut values: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let (mut train_items, mut validation_items) = (0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = |name: &str| -> Result<Option<StringArray>> {
            match batch.column_by_name(name) {
                None => Ok(None),
                Some(c) => Ok(cast(c, &DataType::Utf8)
                    .map_err(CatalogError::from)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()),
            }
        };
        let Some(ids) = column(&names.id)? else {
            continue;
        };
        let labels: Vec<(&str, Option<StringArray>)> = read
            .iter()
            .map(|attribute| column(names.column_of(attribute)).map(|a| (attribute.as_str(), a)))
            .collect::<Result<_>>()?;
        for row in 0..batch.num_rows() {
            if !ids.is_valid(row) {
                return Err(crate::WorkerError::BadInput(format!(
                    "{}: a row has no {:?} (null); every item needs an id \
                     (`atelier catalog inspect` counts them)",
                    catalog.location, names.id
                )));
            }
            if in_validation(ids.value(row), val_fraction) {
                validation_items += 1;
                continue;
            }
            train_items += 1;
            for (name, array) in &labels {
                if let Some(array) = array.as_ref().filter(|a| a.is_valid(row)) {
                    values
                        .entry(name)
                        .or_default()
                        .push(array.value(row).to_string());
                }
            }
        }
    }
    let mut maps = BTreeMap::new();
    let mut attributes = Vec::new();
    for attribute in &wanted {
        let seen = values
            .get(attribute.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if seen.is_empty() && where_present {
            tracing::warn!(%attribute, "no training item has this label; no head for it");
            continue;
        }
        if seen.is_empty() {
            let column = names.column_of(attribute);
            return Err(crate::WorkerError::BadInput(format!(
                "{}: no training item has a {attribute:?} label (read from column {column:?}; \
                 map another with --label-column, or choose others with --targets)",
                catalog.location
            )));
        }
        maps.insert(
            attribute.clone(),
            LabelMap::build(seen.iter().map(String::as_str), min_label_count),
        );
        attributes.push(attribute.clone());
    }
    if attributes.is_empty() && !wanted.is_empty() {
        return Err(crate::WorkerError::BadInput(format!(
            "{}: no training item has any of the labels {} (map the shop's columns with \
             --label-column, or choose them with --targets)",
            catalog.location,
            wanted.join(", ")
        )));
    }
    let captions = values
        .get(Label::Caption.name())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let vocab = if task == Task::Caption {
        if captions.is_empty() {
            return Err(crate::WorkerError::BadInput(format!(
                "{}: no training item has a caption",
                catalog.location
            )));
        }
        Some(Vocab::build(
            captions.iter().map(String::as_str),
            min_word_count,
        ))
    } else {
        None
    };
    Ok(LabelScan {
        train_items,
        validation_items,
        labels: maps,
        attributes,
        vocab,
    })
}
