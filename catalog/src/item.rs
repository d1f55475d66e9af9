use std::collections::BTreeMap;

/// The labels a catalogue row carries, by attribute (`color`, `caption`, or
/// any label column a model is trained on); an attribute the row has no
/// value for is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// The row's label for `attribute`.
    pub fn get(&self, attribute: &str) -> Option<&str> {
        self.0.get(attribute).map(String::as_str)
    }

    /// Sets `attribute` to `value`, or leaves it absent for `None`.
    pub fn set(&mut self, attribute: &str, value: Option<String>) {
        match value {
            Some(value) => self.0.insert(attribute.to_string(), value),
            None => self.0.remove(attribute),
        };
    }

    /// Labels from `(attribute, value)` pairs; `None` values are left out.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Self {
        let mut labels = Self::default();
        for (attribute, value) in pairs {
            labels.set(attribute, value);
        }
        labels
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
