//! k-means (Lloyd's algorithm with k-means++ seeding), as scikit-learn runs it by default:
//! several seeded starts, the lowest inertia kept.

use crate::rng::stream_at;
use rand::Rng;

/// A k-means clustering.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// The cluster of each sample.
    pub assignment: Vec<usize>,
    /// `k` centres of dimension d.
    pub centres: Vec<Vec<f64>>,
    /// Sum of squared distances of the samples to their centres.
    pub inertia: f64,
}

impl KMeans {
    /// Samples per cluster.
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![0; self.centres.len()];
        self.assignment.iter().for_each(|&c| s[c] += 1);
        s
    }
}

/// Cluster the `n` x `d` row-major `rows` into `k` clusters: `starts` k-means++ starts seeded
/// from `seed`, at most 300 Lloyd rounds each (scikit-learn's defaults are 10 and 300).
///
/// ```
/// use transferlab::stats::kmeans;
/// let rows = [0.0, 0.1, 0.2, 10.0, 10.1, 9.9];
/// let km = kmeans(&rows, 1, 2, 10, 0);
/// assert_eq!(km.assignment[0], km.assignment[2]);
/// assert_ne!(km.assignment[0], km.assignment[3]);
/// assert_eq!(km.sizes().iter().sum::<usize>(), 6);
/// ```
pub fn kmeans(rows: &[f64], d: usize, k: usize, starts: usize, seed: u64) -> KMeans {
    let n = rows.len() / d.max(1);
    let k = k.clamp(1, n.max(1));
    let mut best: Option<KMeans> = None;
    for start in 0..starts.max(1) {
        let run = lloyd(rows, d, seeded_centres(rows, d, k, seed, start as u64));
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.expect("at least one start")
}

fn distance2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means++: each next centre drawn with probability proportional to its squared distance to
/// the nearest centre so far.
fn seeded_centres(rows: &[f64], d: usize, k: usize, seed: u64, start: u64) -> Vec<Vec<f64>> {
    let mut rng = stream_at(seed, "kmeans++", start);
    let n = rows.len() / d;
    let mut centres = vec![rows[rng.random_range(0..n) * d..][..d].to_vec()];
    let mut nearest: Vec<f64> = rows.chunks(d).map(|r| distance2(r, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = nearest.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            nearest.iter().position(|&w| {
                u -= w;
                u < 0.0
            })
            .unwrap_or(n - 1)
        } else {
            rng.random_range(0..n)
        };
        let c = rows[pick * d..][..d].to_vec();
        nearest.iter_mut().zip(rows.chunks(d)).for_each(|(m, r)| *m = m.min(distance2(r, &c)));
        centres.push(c);
    }
    centres
}

fn lloyd(rows: &[f64], d: usize, mut centres: Vec<Vec<f64>>) -> KMeans {
    let k = centres.len();
    let n = rows.len() / d;
    let mut assignment = vec![usize::MAX; n];
    for _ in 0..300 {
        let mut changed = false;
        for (i, r) in rows.chunks(d).enumerate() {
            let c = (0..k).min_by(|&a, &b| distance2(r, &centres[a]).total_cmp(&distance2(r, &centres[b]))).unwrap_or(0);
            if assignment[i] != c {
                assignment[i] = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0f64; d]; k];
        let mut counts = vec![0usize; k];
        for (r, &c) in rows.chunks(d).zip(&assignment) {
            sums[c].iter_mut().zip(r).for_each(|(s, v)| *s += v);
            counts[c] += 1;
        }
        for c in 0..k {
            // An emptied cluster keeps its old centre (scikit-learn moves it to a far sample).
            if counts[c] > 0 {
                centres[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            }
        }
    }
    let inertia = rows.chunks(d).zip(&assignment).map(|(r, &c)| distance2(r, &centres[c])).sum();
    KMeans { assignment, centres, inertia }
}
