//! How well a score separates positives from negatives.

/// Area under the ROC curve of `scores` for the positives in `y` (the Mann-Whitney U
/// statistic, ties counted half). NaN when a class is missing.
///
/// ```
/// use transferlab::stats::auc;
/// assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
/// ```
pub fn auc(scores: &[f64], y: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            rank[k] = r;
        }
        i = j + 1;
    }
    let pos = y.iter().filter(|&&v| v).count() as f64;
    let neg = y.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let rsum: f64 = rank.iter().zip(y).filter(|(_, &v)| v).map(|(r, _)| r).sum();
    (rsum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The true-positive rate when the threshold is set so that at most `fpr` of the negatives
/// score above it (a score flags when it is strictly above the threshold, so ties with a
/// negative are not counted: the rate is never flattered). NaN when a class is missing.
///
/// ```
/// use transferlab::stats::tpr_at_fpr;
/// let scores = [0.1, 0.2, 0.3, 0.9, 0.5, 0.95];
/// let y = [false, false, false, false, true, true];
/// // No negative may pass (0 % of 4 at 5 %): the threshold is 0.9, one positive is above.
/// assert_eq!(tpr_at_fpr(&scores, &y, 0.05), 0.5);
/// // One negative of four may pass (25 %): the threshold drops to 0.3.
/// assert_eq!(tpr_at_fpr(&scores, &y, 0.25), 1.0);
/// ```
pub fn tpr_at_fpr(scores: &[f64], y: &[bool], fpr: f64) -> f64 {
    let mut neg: Vec<f64> = scores.iter().zip(y).filter(|(_, &p)| !p).map(|(s, _)| *s).collect();
    let pos: Vec<f64> = scores.iter().zip(y).filter(|(_, &p)| p).map(|(s, _)| *s).collect();
    if neg.is_empty() || pos.is_empty() {
        return f64::NAN;
    }
    neg.sort_by(|a, b| b.total_cmp(a));
    let allowed = (fpr * neg.len() as f64).floor() as usize;
    // The threshold is the highest negative that must stay below it.
    let threshold = if allowed >= neg.len() { f64::NEG_INFINITY } else { neg[allowed] };
    pos.iter().filter(|&&s| s > threshold).count() as f64 / pos.len() as f64
}

/// The `q` quantile of `values` (linear interpolation between order statistics, numpy's
/// default). NaN for no values.
///
/// ```
/// use transferlab::stats::quantile;
/// assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
/// assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.0), 1.0);
/// ```
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
