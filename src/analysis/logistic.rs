//! Multinomial logistic regression with an L2 penalty, fitted by L-BFGS: the linear probe of
//! Kornblith et al. (2019) and of CLIP's linear-probe evaluation (Radford et al. 2021).
//!
//! Plain f64 loops on the CPU: probes see a few thousand feature vectors of a few hundred
//! dimensions, where a full-batch objective costs well under a millisecond.

use crate::error::{Error, Result};

/// Options of [`lbfgs`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    /// Pairs (s, y) kept for the inverse-Hessian estimate.
    pub history: usize,
    pub max_iterations: usize,
    /// Stop when the largest gradient component is below this.
    pub gradient_tolerance: f64,
    /// Armijo (sufficient decrease) constant c1 of the Wolfe conditions.
    pub c1: f64,
    /// Curvature constant c2 of the weak Wolfe conditions.
    pub c2: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        // scikit-learn's lbfgs solver keeps 10 pairs; c1, c2 are Nocedal & Wright's defaults.
        Self { history: 10, max_iterations: 1000, gradient_tolerance: 1e-6, c1: 1e-4, c2: 0.9 }
    }
}

/// What [`lbfgs`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsResult {
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: usize,
    /// Whether the gradient tolerance was met (otherwise the iteration limit or a line search
    /// that could make no progress stopped it).
    pub converged: bool,
}

/// A step length satisfying the weak Wolfe conditions along `d` from `x` (bisection /
/// doubling of Lewis & Overton), with the value and gradient there. `f` writes the gradient
/// into its second argument and returns the value. `None` when no such step is found within
/// 60 trials (a descent direction on a function bounded below always has one).
pub fn wolfe_line_search<F>(f: &mut F, x: &[f64], fx: f64, gx: &[f64], d: &[f64], initial: f64, c1: f64, c2: f64) -> Option<(f64, f64, Vec<f64>)>
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let slope = dot(gx, d);
    if slope >= 0.0 {
        return None;
    }
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut t = initial;
    let mut xt = vec![0.0; x.len()];
    let mut gt = vec![0.0; x.len()];
    for _ in 0..60 {
        for i in 0..x.len() {
            xt[i] = x[i] + t * d[i];
        }
        let ft = f(&xt, &mut gt);
        if !ft.is_finite() || ft > fx + c1 * t * slope {
            hi = t;
        } else if dot(&gt, d) < c2 * slope {
            lo = t;
        } else {
            return Some((t, ft, gt));
        }
        t = if hi.is_finite() { 0.5 * (lo + hi) } else { 2.0 * lo };
    }
    None
}

/// Minimise `f` from `x0` with limited-memory BFGS (Nocedal & Wright, algorithm 7.5) and a
/// weak-Wolfe line search. `f(x, grad)` returns the value and writes the gradient.
///
/// ```
/// use transferlab::analysis::logistic::{lbfgs, LbfgsOptions};
/// // Rosenbrock's banana, minimum at (1, 1).
/// let mut f = |x: &[f64], g: &mut [f64]| {
///     g[0] = -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]);
///     g[1] = 200.0 * (x[1] - x[0] * x[0]);
///     (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
/// };
/// let r = lbfgs(&mut f, vec![-1.2, 1.0], &LbfgsOptions::default());
/// assert!(r.converged && (r.x[0] - 1.0).abs() < 1e-5 && (r.x[1] - 1.0).abs() < 1e-5);
/// ```
pub fn lbfgs<F>(f: &mut F, x0: Vec<f64>, opts: &LbfgsOptions) -> LbfgsResult
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let n = x0.len();
    let mut x = x0;
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    for iteration in 0..opts.max_iterations {
        if max_abs(&g) < opts.gradient_tolerance {
            return LbfgsResult { x, value: fx, iterations: iteration, converged: true };
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            axpy(-a, y, &mut q);
            alphas.push(a);
        }
        if let Some((s, y, _)) = pairs.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            axpy(a - b, s, &mut q);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        if dot(&d, &g) >= 0.0 {
            // The estimate lost positive definiteness: restart from steepest descent.
            pairs.clear();
            d = g.iter().map(|v| -v).collect();
        }
        let initial = if pairs.is_empty() { 1.0 / norm(&g).max(1e-12) } else { 1.0 };
        let Some((t, f_new, g_new)) = wolfe_line_search(f, &x, fx, &g, &d, initial, opts.c1, opts.c2) else {
            return LbfgsResult { x, value: fx, iterations: iteration, converged: false };
        };
        let s: Vec<f64> = d.iter().map(|v| t * v).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        axpy(1.0, &s, &mut x);
        let decrease = fx - f_new;
        fx = f_new;
        g = g_new;
        if sy > 1e-12 {
            pairs.push_back((s, y, 1.0 / sy));
            if pairs.len() > opts.history {
                pairs.pop_front();
            }
        }
        if decrease.abs() <= 1e-15 * fx.abs().max(1.0) && max_abs(&g) < opts.gradient_tolerance.sqrt() {
            return LbfgsResult { x, value: fx, iterations: iteration + 1, converged: true };
        }
    }
    let converged = max_abs(&g) < opts.gradient_tolerance;
    LbfgsResult { x, value: fx, iterations: opts.max_iterations, converged }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// A fitted multinomial logistic regression on standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegression {
    pub classes: usize,
    pub dim: usize,
    /// Row-major (classes, dim), acting on standardised features.
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
    /// Per-feature mean and standard deviation of the training features.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// The L2 penalty it was fitted with.
    pub l2: f64,
    /// The L-BFGS run.
    pub iterations: usize,
    pub converged: bool,
}

/// The penalised mean cross-entropy (weights only; biases are not penalised, as in
/// scikit-learn) and its gradient, for standardised rows `x` (n, d).
pub fn objective(theta: &[f64], grad: &mut [f64], x: &[f64], y: &[u32], k: usize, d: usize, l2: f64) -> f64 {
    let n = y.len();
    grad.iter_mut().for_each(|g| *g = 0.0);
    let (w, b) = theta.split_at(k * d);
    let mut loss = 0.0;
    let mut z = vec![0.0; k];
    for i in 0..n {
        let xi = &x[i * d..(i + 1) * d];
        for c in 0..k {
            z[c] = b[c] + dot(&w[c * d..(c + 1) * d], xi);
        }
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
        let lse = m + sum.ln();
        loss += lse - z[y[i] as usize];
        for c in 0..k {
            let r = (z[c] - lse).exp() - if c == y[i] as usize { 1.0 } else { 0.0 };
            axpy(r, xi, &mut grad[c * d..(c + 1) * d]);
            grad[k * d + c] += r;
        }
    }
    let inv = 1.0 / n as f64;
    grad.iter_mut().for_each(|g| *g *= inv);
    let mut penalty = 0.0;
    for (j, wj) in w.iter().enumerate() {
        penalty += wj * wj;
        grad[j] += l2 * wj;
    }
    loss * inv + 0.5 * l2 * penalty
}

impl LogisticRegression {
    /// Fit on `features` (n rows of `dim` values) and `labels` in `0..classes` with penalty
    /// `l2` (on the mean loss: sklearn's C is 1 / (n * l2)).
    ///
    /// ```
    /// use transferlab::analysis::logistic::{LbfgsOptions, LogisticRegression};
    /// let x = vec![0.0f32, 0.1, 1.0, 1.1, 2.0, 2.1];
    /// let y = vec![0, 0, 1, 1, 2, 2];
    /// let m = LogisticRegression::fit(&x, 1, &y, 3, 1e-3, &LbfgsOptions::default())?;
    /// assert_eq!(m.predict(&x), y);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn fit(features: &[f32], dim: usize, labels: &[u32], classes: usize, l2: f64, opts: &LbfgsOptions) -> Result<Self> {
        let n = labels.len();
        if dim == 0 || n == 0 || features.len() != n * dim {
            return Err(Error::shape("logistic regression", format!("{} values are not {n} rows of {dim} features", features.len())));
        }
        if classes < 2 || labels.iter().any(|&y| y as usize >= classes) {
            return Err(Error::invalid("logistic regression labels", format!("labels must lie in 0..{classes} with at least 2 classes")));
        }
        if !(l2 >= 0.0 && l2.is_finite()) {
            return Err(Error::invalid("L2 penalty", format!("{l2}; it must be a finite number >= 0")));
        }
        let mut mean = vec![0.0; dim];
        let mut var = vec![0.0; dim];
        for row in features.chunks(dim) {
            for j in 0..dim {
                mean[j] += row[j] as f64 / n as f64;
            }
        }
        for row in features.chunks(dim) {
            for j in 0..dim {
                var[j] += (row[j] as f64 - mean[j]).powi(2) / n as f64;
            }
        }
        // Constant features (dead units) get unit scale rather than a division by zero.
        let std: Vec<f64> = var.iter().map(|v| if *v > 1e-12 { v.sqrt() } else { 1.0 }).collect();
        let x: Vec<f64> = features.chunks(dim).flat_map(|row| (0..dim).map(|j| (row[j] as f64 - mean[j]) / std[j]).collect::<Vec<_>>()).collect();
        let mut f = |theta: &[f64], g: &mut [f64]| objective(theta, g, &x, labels, classes, dim, l2);
        let r = lbfgs(&mut f, vec![0.0; classes * dim + classes], opts);
        let (w, b) = r.x.split_at(classes * dim);
        Ok(Self { classes, dim, weights: w.to_vec(), bias: b.to_vec(), mean, std, l2, iterations: r.iterations, converged: r.converged })
    }

    /// Logits of each row of `features`.
    pub fn decision(&self, features: &[f32]) -> Vec<Vec<f64>> {
        features
            .chunks(self.dim)
            .map(|row| {
                let xs: Vec<f64> = (0..self.dim).map(|j| (row[j] as f64 - self.mean[j]) / self.std[j]).collect();
                (0..self.classes).map(|c| self.bias[c] + dot(&self.weights[c * self.dim..(c + 1) * self.dim], &xs)).collect()
            })
            .collect()
    }

    /// Predicted class of each row.
    pub fn predict(&self, features: &[f32]) -> Vec<u32> {
        self.decision(features)
            .iter()
            .map(|z| z.iter().enumerate().fold(0, |b, (i, v)| if *v > z[b] { i } else { b }) as u32)
            .collect()
    }

    /// Fraction of rows predicted as their label.
    pub fn accuracy(&self, features: &[f32], labels: &[u32]) -> f64 {
        let p = self.predict(features);
        p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_search_returns_a_step_meeting_both_wolfe_conditions() {
        // f(x) = sum (x_i - i)^2 / (i + 1), an ill-conditioned quadratic.
        let mut f = |x: &[f64], g: &mut [f64]| {
            let mut v = 0.0;
            for i in 0..x.len() {
                let a = 1.0 / (i as f64 + 1.0);
                v += a * (x[i] - i as f64).powi(2);
                g[i] = 2.0 * a * (x[i] - i as f64);
            }
            v
        };
        let x = vec![10.0; 5];
        let mut g = vec![0.0; 5];
        let fx = f(&x, &mut g);
        let d: Vec<f64> = g.iter().map(|v| -v).collect();
        for initial in [1e-6, 1.0, 1e3] {
            let (t, ft, gt) = wolfe_line_search(&mut f, &x, fx, &g, &d, initial, 1e-4, 0.9).unwrap();
            assert!(ft <= fx + 1e-4 * t * dot(&g, &d), "Armijo fails at {t}");
            assert!(dot(&gt, &d) >= 0.9 * dot(&g, &d), "curvature fails at {t}");
        }
        // An ascent direction has no such step.
        assert!(wolfe_line_search(&mut f, &x, fx, &g, &g.clone(), 1.0, 1e-4, 0.9).is_none());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, d, k) = (7, 3, 4);
        let x: Vec<f64> = (0..n * d).map(|i| ((i * 13 % 7) as f64 - 3.0) / 3.0).collect();
        let y: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        let theta: Vec<f64> = (0..k * d + k).map(|i| ((i * 5 % 11) as f64 - 5.0) / 10.0).collect();
        let mut g = vec![0.0; theta.len()];
        objective(&theta, &mut g, &x, &y, k, d, 0.3);
        let mut scratch = vec![0.0; theta.len()];
        for j in 0..theta.len() {
            let (mut a, mut b) = (theta.clone(), theta.clone());
            a[j] += 1e-6;
            b[j] -= 1e-6;
            let num = (objective(&a, &mut scratch, &x, &y, k, d, 0.3) - objective(&b, &mut scratch, &x, &y, k, d, 0.3)) / 2e-6;
            assert!((num - g[j]).abs() < 1e-6, "component {j}: {num} vs {}", g[j]);
        }
    }

    #[test]
    fn fit_reaches_a_stationary_point_and_the_penalty_shrinks_weights() {
        let x: Vec<f32> = (0..60).map(|i| ((i * 7 % 17) as f32) / 17.0 + if i % 3 == 0 { 1.0 } else { 0.0 }).collect();
        let y: Vec<u32> = (0..30).map(|i| ((i * 2) % 3) as u32).collect();
        let weak = LogisticRegression::fit(&x, 2, &y, 3, 1e-4, &LbfgsOptions::default()).unwrap();
        let strong = LogisticRegression::fit(&x, 2, &y, 3, 1.0, &LbfgsOptions::default()).unwrap();
        assert!(weak.converged && strong.converged);
        let n2 = |m: &LogisticRegression| m.weights.iter().map(|w| w * w).sum::<f64>();
        assert!(n2(&strong) < n2(&weak));
        assert!(LogisticRegression::fit(&x, 2, &y, 3, -1.0, &LbfgsOptions::default()).is_err());
        assert!(LogisticRegression::fit(&x, 3, &y, 3, 1.0, &LbfgsOptions::default()).is_err());
    }
}
