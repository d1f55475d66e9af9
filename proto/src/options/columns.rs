//! Which columns of a catalogue atelier reads: a shop's own names for the
//! item id, the image (bytes or URL) and each label, so that a warehouse
//! export is read as it is rather than converted first. `train`, `test`,
//! `tag`, `submit *` and `catalog inspect` take these flags; job specs, the
//! wire, checkpoints and tag manifests carry the mapping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::names::Label;

/// The catalogue's column names; every field defaults to atelier's own name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Catalogue columns"))]
#[serde(default)]
pub struct CatalogColumns {
    /// The column of item ids: any integer or string type. Tag outputs carry
    /// the ids in this type, in their `item_id` column.
    #[cfg_attr(feature = "cli", arg(long = "id-column", value_name = "COLUMN", default_value = CatalogColumns::ID))]
    pub id: String,
    /// The column of encoded image bytes (binary).
    #[cfg_attr(feature = "cli", arg(long = "image-column", value_name = "COLUMN", default_value = CatalogColumns::IMAGE))]
    pub image: String,
    /// The column of image URLs (utf8): s3://, gs://, az://, file://, https:// or http://.
    #[cfg_attr(feature = "cli", arg(long = "image-uri-column", value_name = "COLUMN", default_value = CatalogColumns::IMAGE_URI))]
    pub image_uri: String,
    /// A label read from a column of another name, as LABEL=COLUMN (for
    /// example color=baseColour); repeat for each label. Labels: color,
    /// brand, category, caption.
    #[cfg_attr(
        feature = "cli",
        arg(long = "label-column", value_name = "LABEL=COLUMN")
    )]
    pub labels: Vec<LabelColumn>,
}

impl CatalogColumns {
    pub const ID: &'static str = "item_id";
    pub const IMAGE: &'static str = "image";
    pub const IMAGE_URI: &'static str = "image_uri";

    /// The column `label` is read from.
    pub fn label(&self, label: Label) -> &str {
        self.labels
            .iter()
            .find(|mapped| mapped.label == label)
            .map_or(label.name(), |mapped| mapped.column.as_str())
    }

    /// The column a model attribute is read from: one of atelier's labels
    /// as mapped, any other attribute (a `--targets` column) under its own name.
    pub fn column_of<'a>(&'a self, attribute: &'a str) -> &'a str {
        match attribute.parse::<Label>() {
            Ok(label) => self.label(label),
            Err(_) => attribute,
        }
    }

    /// Every column the mapping names, each with what it holds, in the order
    /// id, image, image URI, then the labels in [`Label::ALL`] order.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut named = vec![
            ("the item id", self.id.as_str()),
            ("the image", self.image.as_str()),
            ("the image URI", self.image_uri.as_str()),
        ];
        named.extend(
            Label::ALL
                .iter()
                .map(|&label| (label.name(), self.label(label))),
        );
        named
    }

    /// Refuses an empty name, a label mapped twice, and one column serving
    /// two purposes.
    pub fn check(&self) -> Result<(), String> {
        for (what, column) in self.named() {
            if column.trim().is_empty() {
                return Err(format!("the column of {what} has an empty name"));
            }
        }
        for (i, mapped) in self.labels.iter().enumerate() {
            if self.labels[..i].iter().any(|m| m.label == mapped.label) {
                return Err(format!(
                    "--label-column maps {} twice; give each label once",
                    mapped.label
                ));
            }
        }
        let named = self.named();
        for (i, (what, column)) in named.iter().enumerate() {
            if let Some((other, _)) = named[..i].iter().find(|(_, c)| c == column) {
                return Err(format!(
                    "column {column:?} is named for both {other} and {what}"
                ));
            }
        }
        Ok(())
    }
}

impl Default for CatalogColumns {
    fn default() -> Self {
        Self {
            id: Self::ID.to_string(),
            image: Self::IMAGE.to_string(),
            image_uri: Self::IMAGE_URI.to_string(),
            labels: Vec::new(),
        }
    }
}

/// One label read from a column of the shop's own name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelColumn {
    pub label: Label,
    pub column: String,
}

impl FromStr for LabelColumn {
    type Err = String;

    fn from_str(given: &str) -> Result<Self, String> {
        let (label, column) = given.split_once('=').ok_or_else(|| {
            format!("{given:?} is not LABEL=COLUMN (for example color=baseColour)")
        })?;
        let label = label.trim().parse::<Label>().map_err(|e| e.to_string())?;
        let column = column.trim();
        if column.is_empty() {
            return Err(format!("{given:?} names no column"));
        }
        Ok(Self {
            label,
            column: column.to_string(),
        })
    }
}

impl fmt::Display for LabelColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.label, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_column_parses_and_prints_back() {
        let mapped: LabelColumn = "color=baseColour".parse().unwrap();
        assert_eq!(mapped.label, Label::Color);
        assert_eq!(mapped.column, "baseColour");
        assert_eq!(mapped.to_string(), "color=baseColour");
        let error = "colour=baseColour".parse::<LabelColumn>().unwrap_err();
        assert!(error.contains("\"colour\" is not a label"), "{error}");
        assert!("color".parse::<LabelColumn>().is_err());
        assert!("color=".parse::<LabelColumn>().is_err());
    }

    #[test]
    fn unmapped_labels_keep_their_own_names() {
        let columns = CatalogColumns {
            labels: vec!["category=articleType".parse().unwrap()],
            ..CatalogColumns::default()
        };
        assert_eq!(columns.label(Label::Category), "articleType");
        assert_eq!(columns.label(Label::Color), "color");
        columns.check().unwrap();
    }

    #[test]
    fn a_column_named_for_two_purposes_or_a_label_mapped_twice_is_refused() {
        let twice = CatalogColumns {
            id: "sku".into(),
            image_uri: "sku".into(),
            ..CatalogColumns::default()
        };
        let error = twice.check().unwrap_err();
        assert!(
            error.contains("\"sku\"") && error.contains("the image URI"),
            "{error}"
        );
        let label_twice = CatalogColumns {
            labels: vec!["color=a".parse().unwrap(), "color=b".parse().unwrap()],
            ..CatalogColumns::default()
        };
        assert!(label_twice.check().unwrap_err().contains("color twice"));
        // A label mapped onto another label's default column.
        let clash = CatalogColumns {
            labels: vec!["color=brand".parse().unwrap()],
            ..CatalogColumns::default()
        };
        assert!(clash.check().is_err());
    }
}
