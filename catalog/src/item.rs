/// The labels a catalogue row may carry; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub color: Option<String>,
    pub brand: Option<String>,
    pub category: Option<String>,
    pub caption: Option<String>,
}

impl Labels {
    /// The label for a column of [`crate::schema::LABEL_COLUMNS`].
    pub fn get(&self, column: &str) -> Option<&str> {
        match column {
            crate::schema::COLOR => self.color.as_deref(),
            crate::schema::BRAND => self.brand.as_deref(),
            crate::schema::CATEGORY => self.category.as_deref(),
            crate::schema::CAPTION => self.caption.as_deref(),
            _ => None,
        }
    }
}

/// One row to write: an image (bytes and/or a URI), its labels, and any extra
/// columns in the order the writer was created with.
#[derive(Debug, Clone, Default)]
pub struct CatalogItem {
    pub item_id: String,
    pub image: Option<Vec<u8>>,
    pub image_uri: Option<String>,
    pub labels: Labels,
    pub extra: Vec<Option<String>>,
}

/// A hash of a string that is the same on every machine, build and run (FNV-1a),
/// for splits and per-item randomness that must not depend on scheduling.
pub fn stable_hash(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
