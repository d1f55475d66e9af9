//! The column contract of a catalogue.
//!
//! An item id (any integer or string type; see [`is_id_type`]) and at least
//! one of an image (binary) or an image URI (utf8) are required; the label
//! columns are optional and nullable; every other column is carried through
//! untouched. [`CatalogColumns`] names these columns: atelier's own names
//! unless a shop maps its own.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use atelier_proto::{CatalogColumns, Label};

use crate::error::{CatalogError, Result};

pub const ITEM_ID: &str = CatalogColumns::ID;
pub const IMAGE: &str = CatalogColumns::IMAGE;
pub const IMAGE_URI: &str = CatalogColumns::IMAGE_URI;
pub const COLOR: &str = Label::Color.name();
pub const BRAND: &str = Label::Brand.name();
pub const CATEGORY: &str = Label::Category.name();
pub const CAPTION: &str = Label::Caption.name();

/// The label columns atelier writes, in order.
pub const LABEL_COLUMNS: [&str; 4] = [COLOR, BRAND, CATEGORY, CAPTION];

/// What a validated file offers, under the names of its [`CatalogColumns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileColumns {
    /// The type of its id column, which tag outputs keep.
    pub id_type: DataType,
    pub has_image: bool,
    pub has_image_uri: bool,
    /// Labels present, in [`Label::ALL`] order.
    pub labels: Vec<Label>,
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

/// Whether a column of this type can hold item ids: strings, or integers
/// (a warehouse's `int64` keys), which read back exactly as decimal text.
pub fn is_id_type(data_type: &DataType) -> bool {
    is_utf8(data_type) || data_type.is_integer()
}

/// Checks `schema` against the contract under `columns`' names; `file`
/// names the file in errors.
pub fn validate(schema: &Schema, file: &str, columns: &CatalogColumns) -> Result<FileColumns> {
    let problem = |problem: String| CatalogError::Schema {
        file: file.to_string(),
        problem,
    };
    let typed =
        |name: &str, ok: fn(&DataType) -> bool, expected: &str| -> Result<Option<DataType>> {
            match schema.field_with_name(name) {
                Ok(field) if ok(field.data_type()) => Ok(Some(field.data_type().clone())),
                Ok(field) => Err(problem(format!(
                    "column {name:?} has type {}, expected {expected}",
                    field.data_type()
                ))),
                Err(_) => Ok(None),
            }
        };
    let Some(id_type) = typed(&columns.id, is_id_type, "an integer or string type")? else {
        return Err(problem(format!(
            "missing the item id column {:?}{} (found: {})",
            columns.id,
            if columns.id == ITEM_ID {
                "; name the shop's own with --id-column"
            } else {
                ""
            },
            column_names(schema)
        )));
    };
    let has_image = typed(&columns.image, is_binary, "binary")?.is_some();
    let has_image_uri = typed(&columns.image_uri, is_utf8, "utf8")?.is_some();
    if !has_image && !has_image_uri {
        return Err(problem(format!(
            "needs an image column {:?} (binary) or an image URI column {:?} (utf8); \
             name the shop's own with --image-column or --image-uri-column (found: {})",
            columns.image,
            columns.image_uri,
            column_names(schema)
        )));
    }
    let mut labels = Vec::new();
    for &label in Label::ALL {
        if typed(columns.label(label), is_utf8, "utf8")?.is_some() {
            labels.push(label);
        }
    }
    let known: Vec<&str> = columns.named().into_iter().map(|(_, c)| c).collect();
    let extra = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| !known.contains(&name.as_str()))
        .collect();
    Ok(FileColumns {
        id_type,
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
        let columns = validate(&schema, "f.parquet", &CatalogColumns::default()).unwrap();
        assert!(columns.has_image && !columns.has_image_uri);
        assert_eq!(columns.labels, Label::ALL.to_vec());
        assert_eq!(columns.id_type, DataType::Utf8);
        assert_eq!(columns.extra, vec!["gender".to_string()]);
    }

    #[test]
    fn missing_item_id_names_file_and_column() {
        let schema = Schema::new(vec![Field::new(IMAGE, DataType::Binary, true)]);
        let err = validate(&schema, "part-1.parquet", &CatalogColumns::default())
            .unwrap_err()
            .to_string();
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
        let err = validate(&schema, "f", &CatalogColumns::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"image\" has type Int64"), "{err}");
    }

    #[test]
    fn an_image_source_is_required() {
        let schema = Schema::new(vec![Field::new(ITEM_ID, DataType::Utf8, false)]);
        let err = validate(&schema, "f", &CatalogColumns::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("image_uri"), "{err}");
    }

    #[test]
    fn a_shops_own_names_and_integer_ids_are_read_through_the_mapping() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("link", DataType::Utf8, true),
            Field::new("baseColour", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ]);
        let columns = CatalogColumns {
            id: "id".into(),
            image_uri: "link".into(),
            labels: vec!["color=baseColour".parse().unwrap()],
            ..CatalogColumns::default()
        };
        let found = validate(&schema, "shop.parquet", &columns).unwrap();
        assert_eq!(found.id_type, DataType::Int64);
        assert!(found.has_image_uri && !found.has_image);
        assert_eq!(found.labels, vec![Label::Color]);
        assert_eq!(found.extra, vec!["price".to_string()]);
        // Without the mapping the same file is refused, with a hint.
        let err = validate(&schema, "shop.parquet", &CatalogColumns::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shop.parquet") && err.contains("--id-column"),
            "{err}"
        );
    }

    #[test]
    fn a_mapped_column_of_an_unusable_type_is_named_with_its_type() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Float64, false),
            Field::new(IMAGE, DataType::Binary, true),
        ]);
        let columns = CatalogColumns {
            id: "id".into(),
            ..CatalogColumns::default()
        };
        let err = validate(&schema, "shop.parquet", &columns)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shop.parquet") && err.contains("\"id\" has type Float64"),
            "{err}"
        );
    }
}
