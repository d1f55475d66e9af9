//! The column contract of a catalogue.
//!
//! `item_id` (utf8, unique) and at least one of `image` (binary) or `image_uri`
//! (utf8) are required; the label columns are optional and nullable; every other
//! column is carried through untouched.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{CatalogError, Result};

pub const ITEM_ID: &str = "item_id";
pub const IMAGE: &str = "image";
pub const IMAGE_URI: &str = "image_uri";
pub const COLOR: &str = "color";
pub const BRAND: &str = "brand";
pub const CATEGORY: &str = "category";
pub const CAPTION: &str = "caption";

/// The label columns, in the order they are written.
pub const LABEL_COLUMNS: [&str; 4] = [COLOR, BRAND, CATEGORY, CAPTION];

/// What a validated file offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumns {
    pub has_image: bool,
    pub has_image_uri: bool,
    /// Label columns present, in [`LABEL_COLUMNS`] order.
    pub labels: Vec<&'static str>,
    /// Columns outside the contract, carried through as they are.
    pub extra: Vec<String>,
}

fn is_utf8(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_binary(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// Checks `schema` against the contract; `file` names the file in errors.
pub fn validate(schema: &Schema, file: &str) -> Result<CatalogColumns> {
    let problem = |problem: String| CatalogError::Schema {
        file: file.to_string(),
        problem,
    };
    let typed = |name: &str, ok: fn(&DataType) -> bool, expected: &str| -> Result<bool> {
        match schema.field_with_name(name) {
            Ok(field) if ok(field.data_type()) => Ok(true),
            Ok(field) => Err(problem(format!(
                "column {name:?} has type {}, expected {expected}",
                field.data_type()
            ))),
            Err(_) => Ok(false),
        }
    };
    if !typed(ITEM_ID, is_utf8, "utf8")? {
        return Err(problem(format!(
            "missing required column {ITEM_ID:?} (found: {})",
            column_names(schema)
        )));
    }
    let has_image = typed(IMAGE, is_binary, "binary")?;
    let has_image_uri = typed(IMAGE_URI, is_utf8, "utf8")?;
    if !has_image && !has_image_uri {
        return Err(problem(format!(
            "needs an {IMAGE:?} (binary) or {IMAGE_URI:?} (utf8) column (found: {})",
            column_names(schema)
        )));
    }
    let mut labels = Vec::new();
    for label in LABEL_COLUMNS {
        if typed(label, is_utf8, "utf8")? {
            labels.push(label);
        }
    }
    let known = [ITEM_ID, IMAGE, IMAGE_URI, COLOR, BRAND, CATEGORY, CAPTION];
    let extra = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| !known.contains(&name.as_str()))
        .collect();
    Ok(CatalogColumns {
        has_image,
        has_image_uri,
        labels,
        extra,
    })
}

fn column_names(schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.is_empty() {
        "no columns".to_string()
    } else {
        names.join(", ")
    }
}

/// The schema atelier writes: embedded image bytes and/or URIs, all labels, extras as utf8.
pub fn write_schema(image: bool, image_uri: bool, extra: &[String]) -> SchemaRef {
    let mut fields = vec![Field::new(ITEM_ID, DataType::Utf8, false)];
    if image {
        fields.push(Field::new(IMAGE, DataType::Binary, true));
    }
    if image_uri {
        fields.push(Field::new(IMAGE_URI, DataType::Utf8, true));
    }
    for label in LABEL_COLUMNS {
        fields.push(Field::new(label, DataType::Utf8, true));
    }
    for name in extra {
        fields.push(Field::new(name, DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_schema_validates_with_extras() {
        let schema = write_schema(true, false, &["gender".into()]);
        let columns = validate(&schema, "f.parquet").unwrap();
        assert!(columns.has_image && !columns.has_image_uri);
        assert_eq!(columns.labels, LABEL_COLUMNS.to_vec());
        assert_eq!(columns.extra, vec!["gender".to_string()]);
    }

    #[test]
    fn missing_item_id_names_file_and_column() {
        let schema = Schema::new(vec![Field::new(IMAGE, DataType::Binary, true)]);
        let err = validate(&schema, "part-1.parquet").unwrap_err().to_string();
        assert!(
            err.contains("part-1.parquet") && err.contains("item_id"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let schema = Schema::new(vec![
            Field::new(ITEM_ID, DataType::Utf8, false),
            Field::new(IMAGE, DataType::Int64, true),
        ]);
        let err = validate(&schema, "f").unwrap_err().to_string();
        assert!(err.contains("\"image\" has type Int64"), "{err}");
    }

    #[test]
    fn an_image_source_is_required() {
        let schema = Schema::new(vec![Field::new(ITEM_ID, DataType::Utf8, false)]);
        let err = validate(&schema, "f").unwrap_err().to_string();
        assert!(err.contains("image_uri"), "{err}");
    }
}
