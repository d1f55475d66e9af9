//! Reading a tag output back as a consumer would, and checking it.

#![allow(clippy::unwrap_used)] // a helper of tests, which fail loudly on purpose

use std::path::{Path, PathBuf};

use arrow_array::{Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A string (or `int64`, as text) column of every Parquet file directly
/// under `dir`, in file order.
pub fn read_column(dir: &Path, column: &str) -> Vec<Option<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut values = Vec::new();
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let array = batch
                .column_by_name(column)
                .unwrap_or_else(|| panic!("{} has no {column}", file.display()));
            if let Some(integers) = array.as_any().downcast_ref::<Int64Array>() {
                values.extend(
                    (0..integers.len())
                        .map(|i| integers.is_valid(i).then(|| integers.value(i).to_string())),
                );
                continue;
            }
            let strings = array.as_any().downcast_ref::<StringArray>().unwrap();
            values.extend(
                (0..strings.len())
                    .map(|i| strings.is_valid(i).then(|| strings.value(i).to_string())),
            );
        }
    }
    values
}

/// Every input item_id exactly once in the output, and nothing else.
pub fn assert_exactly_once(catalog: &Path, out: &Path) {
    let mut input: Vec<String> = read_column(catalog, "item_id")
        .into_iter()
        .flatten()
        .collect();
    let mut output: Vec<String> = read_column(out, "item_id").into_iter().flatten().collect();
    assert_eq!(output.len(), input.len(), "output rows != input rows");
    input.sort();
    output.sort();
    let duplicates = output.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "duplicated item_ids in the output");
    assert!(
        input == output,
        "the output item_ids differ from the input's"
    );
    assert!(out.join("_SUCCESS").exists(), "no _SUCCESS");
}

/// The type of `column` in the first Parquet file directly under `dir`.
pub fn column_type(dir: &Path, column: &str) -> arrow_schema::DataType {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let file = files
        .first()
        .unwrap_or_else(|| panic!("no Parquet under {}", dir.display()));
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap()).unwrap();
    builder
        .schema()
        .field_with_name(column)
        .unwrap_or_else(|_| panic!("{} has no {column}", file.display()))
        .data_type()
        .clone()
}
