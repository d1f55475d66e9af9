//! How often the tags agree with the catalogue's own labels.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

const ATTRIBUTES: [&str; 3] = ["color", "brand", "category"];

/// `column -> item_id -> value` for the string columns of every Parquet file
/// in `dir` that it has, reading nothing else (never the images).
fn read(dir: &Path, columns: &[&str]) -> anyhow::Result<HashMap<String, HashMap<String, String>>> {
    let mut values: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for file in files {
        let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file)?)?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| {
                let column = schema.column(i);
                let name = column.name();
                name == "item_id" || columns.contains(&name)
            })
            .collect();
        let mask = ProjectionMask::leaves(schema, wanted);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let ids = batch
                .column_by_name("item_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .context("item_id is not a string column")?;
            for column in columns {
                let Some(array) = batch
                    .column_by_name(column)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                else {
                    continue;
                };
                let entry = values.entry(column.to_string()).or_default();
                for row in 0..batch.num_rows() {
                    if array.is_valid(row) {
                        entry.insert(ids.value(row).to_string(), array.value(row).to_string());
                    }
                }
            }
        }
    }
    Ok(values)
}

/// Per attribute: (items whose tag equals the label, items with both).
pub fn tag_accuracy(
    catalog: &Path,
    tags: &Path,
) -> anyhow::Result<BTreeMap<String, (usize, usize)>> {
    let labels = read(catalog, &ATTRIBUTES)?;
    let predicted = read(tags, &ATTRIBUTES)?;
    let mut accuracy = BTreeMap::new();
    for attribute in ATTRIBUTES {
        let (Some(truth), Some(guess)) = (labels.get(attribute), predicted.get(attribute)) else {
            continue;
        };
        let both = guess.iter().filter_map(|(id, g)| Some((truth.get(id)?, g)));
        let (mut correct, mut total) = (0, 0);
        for (t, g) in both {
            total += 1;
            correct += usize::from(t == g);
        }
        accuracy.insert(attribute.to_string(), (correct, total));
    }
    Ok(accuracy)
}
