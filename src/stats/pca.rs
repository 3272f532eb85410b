//! Principal components by subspace iteration on the centred data, never forming the
//! covariance matrix (d can be 2,048 while a class has a few hundred samples).

use crate::rng::{normal, stream};

/// The top `k` principal directions of the `n` x `d` row-major `rows` (each of length d, unit
/// norm, in decreasing order of variance) and the column means they are relative to.
/// Deterministic: the starting subspace is drawn from `seed`; the sign of each direction is
/// fixed so that its largest-magnitude coordinate is positive.
///
/// ```
/// use transferlab::stats::principal_components;
/// // Points spread along (1, 1) with a little noise along (1, -1).
/// let rows: Vec<f64> = (0..20).flat_map(|i| { let t = i as f64 - 10.0; let e = if i % 2 == 0 { 0.1 } else { -0.1 }; [t + e, t - e] }).collect();
/// let (dirs, mean) = principal_components(&rows, 2, 1, 0);
/// assert!((dirs[0][0] - 0.5f64.sqrt()).abs() < 1e-2 && (dirs[0][1] - 0.5f64.sqrt()).abs() < 1e-2);
/// assert!((dirs[0][0].powi(2) + dirs[0][1].powi(2) - 1.0).abs() < 1e-12);
/// assert!(mean[0].abs() < 1.0);
/// ```
pub fn principal_components(rows: &[f64], d: usize, k: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = if d == 0 { 0 } else { rows.len() / d };
    let mut mean = vec![0f64; d];
    for r in rows.chunks(d) {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let k = k.min(d).min(n);
    if k == 0 {
        return (Vec::new(), mean);
    }
    let centred: Vec<f64> = rows.chunks(d).flat_map(|r| r.iter().zip(&mean).map(|(v, m)| v - m).collect::<Vec<_>>()).collect();
    let mut rng = stream(seed, "pca");
    let mut basis: Vec<Vec<f64>> = (0..k).map(|_| (0..d).map(|_| normal(&mut rng) as f64).collect()).collect();
    orthonormalise(&mut basis);
    // Subspace iteration converges at the ratio of the k-th to the (k+1)-th eigenvalue; 200
    // rounds settle every direction these detectors use to well below float noise.
    for _ in 0..200 {
        let next: Vec<Vec<f64>> = basis.iter().map(|v| covariance_times(&centred, d, v)).collect();
        let previous = std::mem::replace(&mut basis, next);
        orthonormalise(&mut basis);
        let moved = basis.iter().zip(&previous).map(|(a, b)| 1.0 - dot(a, b).abs()).fold(0.0, f64::max);
        if moved < 1e-13 {
            break;
        }
    }
    // Order by variance (Rayleigh quotient) and fix signs.
    let mut with_var: Vec<(f64, Vec<f64>)> = basis.into_iter().map(|v| (dot(&v, &covariance_times(&centred, d, &v)), v)).collect();
    with_var.sort_by(|a, b| b.0.total_cmp(&a.0));
    let dirs = with_var
        .into_iter()
        .map(|(_, mut v)| {
            let big = v.iter().copied().fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
            if big < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            v
        })
        .collect();
    (dirs, mean)
}

/// Coordinates of each row of `rows` (length d each) along `dirs`, relative to `mean`:
/// `n` x `dirs.len()`, row-major.
pub fn project(rows: &[f64], d: usize, mean: &[f64], dirs: &[Vec<f64>]) -> Vec<f64> {
    rows.chunks(d).flat_map(|r| dirs.iter().map(|v| r.iter().zip(mean).zip(v).map(|((x, m), w)| (x - m) * w).sum::<f64>()).collect::<Vec<_>>()).collect()
}

/// X^T X v for the centred rows X.
fn covariance_times(centred: &[f64], d: usize, v: &[f64]) -> Vec<f64> {
    let mut out = vec![0f64; d];
    for r in centred.chunks(d) {
        let s = dot(r, v);
        out.iter_mut().zip(r).for_each(|(o, x)| *o += s * x);
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Modified Gram-Schmidt; a direction that vanishes (rank-deficient data) is left at zero.
fn orthonormalise(basis: &mut [Vec<f64>]) {
    for i in 0..basis.len() {
        for j in 0..i {
            let (done, rest) = basis.split_at_mut(i);
            let p = dot(&rest[0], &done[j]);
            rest[0].iter_mut().zip(&done[j]).for_each(|(x, y)| *x -= p * y);
        }
        let norm = dot(&basis[i], &basis[i]).sqrt();
        if norm > 1e-300 {
            basis[i].iter_mut().for_each(|x| *x /= norm);
        }
    }
}
