//! Label maps: class names to indices, with a documented unknown class.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Index 0 of every label map: a label never seen in training (or seen fewer
/// than `min_count` times) maps here, so that a model always has an answer and
/// evaluation counts such items as misses rather than dropping them.
pub const UNKNOWN_LABEL: &str = "<unknown>";

/// Targets for items with no label at all; the loss ignores them.
pub const IGNORE_INDEX: i64 = -100;

/// Values seen at least `min_count` times, most frequent first, ties by value:
/// the order of label maps and vocabularies, stable across runs.
pub(crate) fn rank_by_frequency<'a>(
    values: impl IntoIterator<Item = &'a str>,
    min_count: usize,
) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for value in values {
        *counts.entry(value).or_default() += 1;
    }
    let mut kept: Vec<(&str, usize)> = counts
        .into_iter()
        .filter(|(_, c)| *c >= min_count.max(1))
        .collect();
    kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    kept.into_iter()
        .map(|(value, _)| value.to_string())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMap {
    /// Class names; `classes[0]` is [`UNKNOWN_LABEL`].
    pub classes: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, i64>,
}

impl LabelMap {
    /// Classes by descending frequency (ties by name), keeping those seen at least `min_count` times.
    pub fn build<'a>(labels: impl IntoIterator<Item = &'a str>, min_count: usize) -> Self {
        let mut classes = vec![UNKNOWN_LABEL.to_string()];
        classes.extend(rank_by_frequency(labels, min_count));
        Self::from_classes(classes)
    }

    pub fn from_classes(classes: Vec<String>) -> Self {
        let index = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as i64))
            .collect();
        Self { classes, index }
    }

    /// Restores the lookup table after deserialising.
    pub fn reindexed(self) -> Self {
        Self::from_classes(self.classes)
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The training target for an optional label.
    pub fn target(&self, label: Option<&str>) -> i64 {
        match label {
            None => IGNORE_INDEX,
            Some(label) => self.index.get(label).copied().unwrap_or(0),
        }
    }

    pub fn name(&self, index: i64) -> &str {
        self.classes
            .get(usize::try_from(index).unwrap_or(0))
            .map_or(UNKNOWN_LABEL, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_and_rare_labels_map_to_unknown() {
        let map = LabelMap::build(["red", "red", "blue", "blue", "blue", "teal"], 2);
        assert_eq!(map.classes, vec![UNKNOWN_LABEL, "blue", "red"]);
        assert_eq!(map.target(Some("red")), 2);
        assert_eq!(map.target(Some("teal")), 0);
        assert_eq!(map.target(Some("never seen")), 0);
        assert_eq!(map.target(None), IGNORE_INDEX);
        let json = serde_json::to_string(&map).unwrap();
        let back: LabelMap = serde_json::from_str::<LabelMap>(&json).unwrap().reindexed();
        assert_eq!(back.target(Some("blue")), 1);
    }
}
