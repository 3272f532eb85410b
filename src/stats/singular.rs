//! The largest singular value (spectral norm) of a small dense matrix.

/// sigma_max of the `rows` x `cols` row-major `matrix`, by power iteration on the `cols` x
/// `cols` Gram matrix (cheap for the wide-and-short matrices of a convolution channel:
/// input channels x kernel positions). Deterministic: starts from the all-ones vector.
///
/// ```
/// use transferlab::stats::largest_singular_value;
/// // diag(3, 1) padded with a zero row: sigma_max = 3.
/// assert!((largest_singular_value(&[3.0, 0.0, 0.0, 1.0, 0.0, 0.0], 3, 2) - 3.0).abs() < 1e-9);
/// // A rank-one matrix u v^T has sigma_max = |u| |v|.
/// let (u, v) = ([1.0, 2.0, 2.0], [3.0, 4.0]);
/// let m: Vec<f64> = u.iter().flat_map(|a| v.iter().map(move |b| a * b)).collect();
/// assert!((largest_singular_value(&m, 3, 2) - 15.0).abs() < 1e-9);
/// ```
pub fn largest_singular_value(matrix: &[f64], rows: usize, cols: usize) -> f64 {
    let mut gram = vec![0f64; cols * cols];
    for r in matrix.chunks(cols).take(rows) {
        for i in 0..cols {
            for j in 0..cols {
                gram[i * cols + j] += r[i] * r[j];
            }
        }
    }
    let mut v = vec![1f64; cols];
    let mut lambda = 0.0;
    for _ in 0..1000 {
        let w: Vec<f64> = (0..cols).map(|i| (0..cols).map(|j| gram[i * cols + j] * v[j]).sum()).collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
        let settled = (norm - lambda).abs() <= 1e-14 * norm;
        lambda = norm;
        v = next;
        if settled {
            break;
        }
    }
    lambda.sqrt()
}
