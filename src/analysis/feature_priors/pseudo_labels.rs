//! Pseudo-labels from predicted probabilities: class-balanced confident selection, and the
//! paper's shared set of two priors.

use crate::data::Dataset;
use crate::error::Result;
use crate::models::Network;
use crate::train;
use candle_core::D;

/// Class probabilities (row-major N x K).
pub(super) fn probabilities(net: &Network, ds: &Dataset) -> Result<Vec<f32>> {
    let p = candle_nn::ops::softmax(&train::logits(net, ds)?, D::Minus1)?;
    Ok(p.flatten_all()?.to_vec1::<f32>()?)
}

pub(super) fn argmax_rows(p: &[f32], k: usize) -> Vec<u32> {
    p.chunks(k)
        .map(|row| row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32)
        .collect()
}

pub(super) fn accuracy_of(p: &[f32], k: usize, labels: &[u32]) -> f64 {
    train::evaluate::fraction_equal(&argmax_rows(p, k), labels)
}

pub(super) fn average(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect()
}

/// Class-balanced confident pseudo-labels: for every class, the `quota` pool images predicted
/// as that class with the highest probability (ties by index), as (pool index, class).
pub fn select_confident(probs: &[f32], k: usize, quota: usize) -> Vec<(usize, u32)> {
    let pred = argmax_rows(probs, k);
    let mut out = Vec::new();
    for c in 0..k as u32 {
        let mut idx: Vec<usize> = (0..pred.len()).filter(|&i| pred[i] == c).collect();
        idx.sort_by(|&a, &b| probs[b * k + c as usize].total_cmp(&probs[a * k + c as usize]).then(a.cmp(&b)));
        out.extend(idx.into_iter().take(quota).map(|i| (i, c)));
    }
    out
}

/// The paper's shared pseudo-label set from two class-balanced selections (each as
/// [`select_confident`] returns it: grouped by class, most confident first): per class, the
/// two lists are walked in turn, rank by rank, until `quota` distinct images are in; an image
/// picked by both models appears once per pick.
pub fn merge_shared(a: &[(usize, u32)], b: &[(usize, u32)], k: usize, quota: usize) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for c in 0..k as u32 {
        let la: Vec<usize> = a.iter().filter(|p| p.1 == c).map(|p| p.0).collect();
        let lb: Vec<usize> = b.iter().filter(|p| p.1 == c).map(|p| p.0).collect();
        let mut seen = std::collections::BTreeSet::new();
        'ranks: for i in 0..la.len().max(lb.len()) {
            for list in [&la, &lb] {
                if seen.len() == quota {
                    break 'ranks;
                }
                if let Some(&idx) = list.get(i) {
                    out.push((idx, c));
                    seen.insert(idx);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_selection_is_class_balanced_and_ordered() {
        // Four samples, two classes: 0 and 2 predict class 0 (2 more confidently), 1 and 3 class 1.
        let p = [0.6, 0.4, 0.2, 0.8, 0.9, 0.1, 0.3, 0.7];
        assert_eq!(select_confident(&p, 2, 1), vec![(2, 0), (1, 1)]);
        assert_eq!(select_confident(&p, 2, 5).len(), 4);
        assert!(select_confident(&p, 2, 0).is_empty());
    }

    #[test]
    fn shared_set_alternates_ranks_until_the_quota_of_distinct_images() {
        // Class 0: model a ranks 3, 1, 5; model b ranks 1, 4. Class 1: only b picks (2).
        let a = [(3, 0), (1, 0), (5, 0)];
        let b = [(1, 0), (4, 0), (2, 1)];
        // Quota 3: 3 (a), 1 (b), 1 (a again: a second pick, no new image), 4 (b): full.
        assert_eq!(merge_shared(&a, &b, 2, 3), vec![(3, 0), (1, 0), (1, 0), (4, 0), (2, 1)]);
        assert_eq!(merge_shared(&a, &b, 2, 1), vec![(3, 0), (2, 1)]);
        assert!(merge_shared(&a, &b, 2, 0).is_empty());
    }
}
