//! Detection metrics over a labelled span stream: the confusion matrix and the ratios derived from
//! it (precision, recall, F1, FPR), and the exact ROC AUC.
//!
//! Conventions, chosen so that no input can panic or produce NaN:
//!
//! * "predicted positive" is the engine's `keep`; "actual positive" is label 1;
//! * a ratio whose denominator is zero is reported as 0 (e.g. precision with nothing kept);
//! * the ROC AUC is the Mann-Whitney U statistic with average ranks for ties, divided by
//!   `n_pos · n_neg`; it is `None` when either class is empty. Callers map a missing score to
//!   0.0 before calling (a span without a score is "not anomalous at all").

use serde::Serialize;

/// Counts of a binary classifier's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Kept and anomalous.
    pub tp: u64,
    /// Kept but normal.
    pub fp: u64,
    /// Dropped but anomalous.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Dropped and normal.
    pub tn: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Confusion {
    /// Count one outcome.
    pub fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// Outcomes counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// TP / (TP + FP); 0 when nothing was predicted positive.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (TP + FN); 0 when there are no positives.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// FP / (FP + TN); 0 when there are no negatives.
    pub fn fpr(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }

    /// The confusion matrix plus its derived ratios and `auc`, ready to print or serialize.
    pub fn summary(&self, auc: Option<f64>) -> Metrics {
        Metrics {
            confusion: *self,
            precision: self.precision(),
            recall: self.recall(),
            f1: self.f1(),
            fpr: self.fpr(),
            roc_auc: auc,
        }
    }
}

/// A confusion matrix with its derived ratios.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// The counts (flattened into the JSON object).
    #[serde(flatten)]
    pub confusion: Confusion,
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1.
    pub f1: f64,
    /// False-positive rate.
    pub fpr: f64,
    /// ROC AUC (`null` when a class is empty).
    pub roc_auc: Option<f64>,
}

/// Exact ROC AUC of `scores` against `labels` (true = positive), by the Mann-Whitney U statistic
/// with average ranks for tied scores. `None` if either class is empty or the lengths differ.
/// NaN scores sort as 0.0. O(n log n); ranks are summed as integers, so the result is exact up to
/// the final division even for billions of spans.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let n_pos = labels.iter().filter(|&&l| l).count() as u128;
    let n_neg = labels.len() as u128 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let clean = |s: f64| if s.is_nan() { 0.0 } else { s };
    let mut order: Vec<(f64, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (clean(s), l))
        .collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of twice the (1-based, tie-averaged) ranks of the positives: a tie group occupying
    // ranks i+1..=j has average rank (i+1+j)/2, so twice it is the integer i+1+j.
    let mut pos_rank2: u128 = 0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        // -0.0 and 0.0 are one tie group.
        while j < order.len() && order[j].0 == order[i].0 {
            j += 1;
        }
        let pos_in_group = order[i..j].iter().filter(|p| p.1).count() as u128;
        pos_rank2 += pos_in_group * (i as u128 + 1 + j as u128);
        i = j;
    }
    // U = R_pos − n_pos(n_pos+1)/2, computed doubled to stay in integers.
    let u2 = pos_rank2 - n_pos * (n_pos + 1);
    Some(u2 as f64 / 2.0 / (n_pos as f64 * n_neg as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: the share of (positive, negative) pairs ordered correctly, ties half.
    fn brute_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
        let (mut num, mut den) = (0.0, 0.0);
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    den += 1.0;
                    if scores[i] > scores[j] {
                        num += 1.0;
                    } else if scores[i] == scores[j] {
                        num += 0.5;
                    }
                }
            }
        }
        if den == 0.0 { None } else { Some(num / den) }
    }

    #[test]
    fn auc_matches_pair_count_with_ties() {
        // A small deterministic generator; scores drawn from few values so ties are common.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..50 {
            let n = 1 + (next() % 200) as usize;
            let levels = 1 + (round % 7) as u64;
            let labels: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
            let scores: Vec<f64> = labels
                .iter()
                .map(|&l| ((next() % levels) as f64 + if l { 0.7 } else { 0.0 }).floor() / 8.0)
                .collect();
            let (a, b) = (roc_auc(&scores, &labels), brute_auc(&scores, &labels));
            match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "round {round}: {a} vs {b}"),
                (None, None) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
    }

    #[test]
    fn auc_known_values() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        // NaN is a missing score: 0.0.
        assert_eq!(
            roc_auc(&[f64::NAN, 0.0, 0.3], &[true, false, true]),
            Some(0.75)
        );
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        assert_eq!(roc_auc(&[0.1], &[true, false]), None);
    }

    #[test]
    fn zero_denominators_are_zero_not_nan() {
        let empty = Confusion::default();
        for v in [empty.precision(), empty.recall(), empty.f1(), empty.fpr()] {
            assert_eq!(v, 0.0);
        }
        // Nothing kept: precision 0, recall 0.
        let c = Confusion {
            tp: 0,
            fp: 0,
            fn_: 5,
            tn: 10,
        };
        assert_eq!(
            (c.precision(), c.recall(), c.f1(), c.fpr()),
            (0.0, 0.0, 0.0, 0.0)
        );
        // No negatives at all.
        let c = Confusion {
            tp: 3,
            fp: 0,
            fn_: 1,
            tn: 0,
        };
        assert_eq!((c.precision(), c.recall(), c.fpr()), (1.0, 0.75, 0.0));
        let m = c.summary(None);
        assert!(m.f1.is_finite());
    }

    #[test]
    fn paper_table2_numbers() {
        let c = Confusion {
            tp: 2895,
            fp: 1449,
            fn_: 0,
            tn: 57908 - 2895 - 1449,
        };
        assert!((c.precision() - 0.6664).abs() < 1e-3);
        assert_eq!(c.recall(), 1.0);
        assert!((c.f1() - 0.7998).abs() < 1e-3);
        assert!((c.fpr() - 0.0263).abs() < 1e-3);
        let json = serde_json::to_value(c.summary(Some(0.5))).unwrap();
        assert_eq!(json["fn"], 0);
        assert_eq!(json["tp"], 2895);
    }
}
