//! A safe, row-major face on the `gemm` crate's single-precision product.

/// A row-major matrix operand: `data` holds it, or its transpose when `trans` is set.
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    pub data: &'a [f32],
    pub trans: bool,
}

impl<'a> Operand<'a> {
    /// The matrix as stored.
    pub fn plain(data: &'a [f32]) -> Self {
        Self { data, trans: false }
    }

    /// The transpose of the matrix as stored.
    pub fn transposed(data: &'a [f32]) -> Self {
        Self { data, trans: true }
    }

    /// (row stride, column stride) of the logical `rows x cols` matrix.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        if self.trans {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        }
    }
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`), with `a` logically `m x k`, `b` `k x n`
/// and `c` a row-major `m x n` buffer.
///
/// Single-threaded: callers split the batch over threads themselves, which keeps every
/// product's summation order fixed and the result deterministic.
pub(super) fn matmul(m: usize, n: usize, k: usize, a: Operand<'_>, b: Operand<'_>, c: &mut [f32], accumulate: bool) {
    assert!(a.data.len() >= m * k && b.data.len() >= k * n && c.len() >= m * n, "matmul operand too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = a.strides(m, k);
    let (b_rs, b_cs) = b.strides(k, n);
    // SAFETY: the assertion above bounds every index the strides can reach, and `c` is a
    // unique borrow that does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], at: bool, b: &[f32], bt: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let x = if at { a[p * m + i] } else { a[i * k + p] };
                    let y = if bt { b[j * k + p] } else { b[p * n + j] };
                    s += x * y;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn all_transpose_combinations_match_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for at in [false, true] {
            for bt in [false, true] {
                let want = naive(m, n, k, &a, at, &b, bt);
                let mut got = vec![1.0; m * n];
                matmul(m, n, k, Operand { data: &a, trans: at }, Operand { data: &b, trans: bt }, &mut got, false);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{at} {bt}: {g} vs {w}");
                }
                matmul(m, n, k, Operand { data: &a, trans: at }, Operand { data: &b, trans: bt }, &mut got, true);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 2.0 * w).abs() < 1e-5);
                }
            }
        }
    }
}
