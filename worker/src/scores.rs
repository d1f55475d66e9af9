//! Evaluation scores: classification reports (accuracy, top-5, per-class
//! precision, recall and F1, confusion) and corpus BLEU.

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationReport {
    pub items: usize,
    pub accuracy: f64,
    pub top5_accuracy: f64,
    pub macro_f1: f64,
    /// Accuracy of always answering the most frequent label of the evaluated items.
    pub majority_baseline: f64,
    pub per_class: Vec<ClassMetrics>,
    pub classes: Vec<String>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// `predictions` and `targets` are class indices; `top5_hits` says whether the
/// target was among the five best guesses.
pub fn classification(
    classes: &[String],
    predictions: &[i64],
    targets: &[i64],
    top5_hits: &[bool],
) -> ClassificationReport {
    let n = classes.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (&p, &t) in predictions.iter().zip(targets) {
        if let (Ok(p), Ok(t)) = (usize::try_from(p), usize::try_from(t)) {
            if p < n && t < n {
                confusion[t][p] += 1;
            }
        }
    }
    let items = targets.len();
    let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassMetrics> = (0..n)
        .map(|i| {
            let tp = confusion[i][i] as f64;
            let predicted: usize = (0..n).map(|t| confusion[t][i]).sum();
            let support: usize = confusion[i].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: classes[i].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let macro_f1 = present.iter().map(|c| c.f1).sum::<f64>() / present.len().max(1) as f64;
    let majority = per_class.iter().map(|c| c.support).max().unwrap_or(0);
    ClassificationReport {
        items,
        accuracy: correct as f64 / items.max(1) as f64,
        top5_accuracy: top5_hits.iter().filter(|&&h| h).count() as f64 / items.max(1) as f64,
        macro_f1,
        majority_baseline: majority as f64 / items.max(1) as f64,
        per_class,
        classes: classes.to_vec(),
        confusion,
    }
}

/// Corpus BLEU-1..4 (uniform weights up to each order, with brevity penalty),
/// one reference per hypothesis, as in Papineni et al. and NLTK's corpus_bleu.
pub fn bleu(references: &[Vec<String>], hypotheses: &[Vec<String>]) -> [f64; 4] {
    let mut matches = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut ref_len, mut hyp_len) = (0usize, 0usize);
    for (reference, hypothesis) in references.iter().zip(hypotheses) {
        ref_len += reference.len();
        hyp_len += hypothesis.len();
        for order in 1..=4 {
            let counts = ngrams(reference, order);
            let mut hyp_counts = ngrams(hypothesis, order);
            for (gram, count) in hyp_counts.drain() {
                matches[order - 1] += count.min(counts.get(&gram).copied().unwrap_or(0));
                totals[order - 1] += count;
            }
        }
    }
    let brevity = if hyp_len == 0 {
        0.0
    } else if hyp_len >= ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    std::array::from_fn(|k| {
        let orders = k + 1;
        let mut log_sum = 0.0;
        for i in 0..orders {
            if matches[i] == 0 || totals[i] == 0 {
                return 0.0;
            }
            log_sum += (matches[i] as f64 / totals[i] as f64).ln();
        }
        brevity * (log_sum / orders as f64).exp()
    })
}

fn ngrams(words: &[String], n: usize) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    if words.len() >= n {
        for window in words.windows(n) {
            *counts.entry(window.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn bleu_is_one_for_identical_and_zero_for_disjoint() {
        let r = vec![words("red striped t-shirt by norda")];
        assert_eq!(bleu(&r, &r), [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(bleu(&r, &[words("blue cap")]), [0.0; 4]);
    }

    #[test]
    fn bleu_matches_a_hand_computation() {
        // 5-word reference, 4-word hypothesis sharing "red t-shirt by norda".
        let r = vec![words("red striped t-shirt by norda")];
        let h = vec![words("red t-shirt by norda")];
        let [b1, b2, _, _] = bleu(&r, &h);
        let bp = (1.0f64 - 5.0 / 4.0).exp();
        assert!((b1 - bp).abs() < 1e-12, "{b1}");
        assert!(
            (b2 - bp * (1.0f64 * 2.0 / 3.0).sqrt()).abs() < 1e-12,
            "{b2}"
        );
    }

    #[test]
    fn classification_report_counts() {
        let classes: Vec<String> = ["<unknown>", "a", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let report = classification(
            &classes,
            &[1, 1, 2, 2],
            &[1, 2, 2, 2],
            &[true, true, true, false],
        );
        assert_eq!(report.accuracy, 0.75);
        assert_eq!(report.top5_accuracy, 0.75);
        assert_eq!(report.confusion[2][1], 1);
        assert_eq!(report.majority_baseline, 0.75);
        let b = &report.per_class[2];
        assert!((b.precision - 1.0).abs() < 1e-12 && (b.recall - 2.0 / 3.0).abs() < 1e-12);
    }
}
