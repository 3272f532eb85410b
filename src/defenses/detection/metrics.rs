//! How well a detector separates poisoned from clean samples.

use crate::error::Result;
use crate::report::{BarChart, Chart, Figure};
use crate::stats::{auc, tpr_at_fpr};
use polars::prelude::{Column, NamedFrom, Series};

/// A detector's scores judged against the truth. Rates are fractions in [0, 1]; NaN where a
/// rate is undefined (no poisoned sample, or nothing flagged for precision).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionMetrics {
    /// Area under the ROC curve of the suspicion score (threshold-free).
    pub auroc: f64,
    /// Fraction of poisoned samples caught when at most 5 % of clean ones are.
    pub tpr_at_5_fpr: f64,
    /// Of the flagged samples, the fraction really poisoned.
    pub precision: f64,
    /// Of the poisoned samples, the fraction flagged.
    pub recall: f64,
    /// Of the clean samples, the fraction flagged.
    pub false_positive_rate: f64,
    pub flagged: usize,
    pub samples: usize,
    pub poisoned: usize,
}

impl DetectionMetrics {
    /// Judge `scores` (higher = more suspicious) and the detector's decisions `flagged`
    /// against the truth `poisoned`.
    ///
    /// ```
    /// use transferlab::defenses::detection::DetectionMetrics;
    /// let m = DetectionMetrics::measure(&[0.9, 0.8, 0.1, 0.2], &[true, false, false, true], &[true, true, false, false]);
    /// assert_eq!((m.auroc, m.precision, m.recall, m.false_positive_rate), (1.0, 0.5, 0.5, 0.5));
    /// ```
    pub fn measure(scores: &[f64], flagged: &[bool], poisoned: &[bool]) -> Self {
        let count = |f: &dyn Fn(usize) -> bool| (0..poisoned.len()).filter(|&i| f(i)).count();
        let n_flagged = count(&|i| flagged[i]);
        let n_poisoned = count(&|i| poisoned[i]);
        let hits = count(&|i| flagged[i] && poisoned[i]);
        let ratio = |a: usize, b: usize| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
        Self {
            auroc: auc(scores, poisoned),
            tpr_at_5_fpr: tpr_at_fpr(scores, poisoned, 0.05),
            precision: ratio(hits, n_flagged),
            recall: ratio(hits, n_poisoned),
            false_positive_rate: ratio(n_flagged - hits, poisoned.len() - n_poisoned),
            flagged: n_flagged,
            samples: poisoned.len(),
            poisoned: n_poisoned,
        }
    }

    /// The metrics as columns of `rows` equal values, to sit beside a defence table.
    pub(crate) fn columns(&self, rows: usize) -> Vec<Column> {
        let f = |name: &str, v: f64| Series::new(name.into(), vec![v; rows]).into();
        let u = |name: &str, v: usize| Series::new(name.into(), vec![v as u64; rows]).into();
        vec![
            f("auroc", self.auroc),
            f("tpr_at_5_fpr", self.tpr_at_5_fpr),
            f("precision", self.precision),
            f("recall", self.recall),
            f("false_positive_rate", self.false_positive_rate),
            u("flagged", self.flagged),
            u("screened", self.samples),
            u("truly_poisoned", self.poisoned),
        ]
    }
}

/// The distribution of a detector's scores for clean and for poisoned samples (% of each
/// group per bin), with the detector's threshold in the title when it has a single one.
pub fn score_histogram(title: &str, score_name: &str, scores: &[f64], poisoned: &[bool], threshold: Option<f64>) -> Result<Figure> {
    const BINS: usize = 20;
    let finite: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo.min(0.0), lo.max(0.0) + 1.0) };
    let width = (hi - lo) / BINS as f64;
    let share = |group: bool| {
        let members: Vec<f64> = scores.iter().zip(poisoned).filter(|(s, &p)| p == group && s.is_finite()).map(|(s, _)| *s).collect();
        let mut bins = vec![0f64; BINS];
        for s in &members {
            bins[(((s - lo) / width) as usize).min(BINS - 1)] += 1.0;
        }
        bins.iter().map(|c| 100.0 * c / members.len().max(1) as f64).collect::<Vec<_>>()
    };
    let labels = (0..BINS).map(|b| format!("{:.3}", lo + (b as f64 + 0.5) * width)).collect();
    let title = match threshold {
        Some(t) => format!("{title} (flagged above {t:.3})"),
        None => title.to_string(),
    };
    let chart = BarChart::new(&title, &format!("% of group, by {score_name}"), labels)
        .series("clean", share(false))
        .series("poisoned", share(true));
    Ok(Figure::new(Chart::Bars(chart)))
}
