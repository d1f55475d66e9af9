//! Validation metrics as one line: the item count as a whole number, the
//! rest (accuracies, losses) to four places.

/// `accuracy 0.9420, items 46, loss 0.3120`, in the map's order.
pub fn describe<'a>(metrics: impl IntoIterator<Item = (&'a String, &'a f64)>) -> String {
    metrics
        .into_iter()
        .map(|(name, value)| match name.as_str() {
            "items" => format!("{name} {value:.0}"),
            _ => format!("{name} {value:.4}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn counts_read_as_counts_and_rates_to_four_places() {
        let metrics: BTreeMap<String, f64> =
            [("accuracy", 1.0), ("items", 46.0), ("loss", 0.31204)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(describe(&metrics), "accuracy 1.0000, items 46, loss 0.3120");
    }
}
