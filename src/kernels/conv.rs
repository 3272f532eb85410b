//! 2-D convolution (groups 1, no dilation): im2col + gemm forward, gemm + col2im input
//! gradient, im2col + gemm weight gradient.

use super::gemm::{matmul, Operand};
use super::{cpu_slice, cpu_tensor, fast_path, with_f32, with_scratch};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// 2-D cross-correlation of `x` (N, C_in, H, W) with `w` (C_out, C_in, kH, kW), plus an
/// optional `bias` (C_out), with the same `stride` and zero `padding` along both axes:
/// PyTorch's `conv2d` with groups 1 and dilation 1.
///
/// On CPU f32 tensors the forward pass and all three gradients are computed here; elsewhere
/// this is candle's `conv2d` followed by a broadcast bias add.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let cout = check_shapes(x, w, stride, padding)?;
    if let Some(b) = bias {
        if b.dims() != [cout] {
            bail!("conv2d: bias has shape {:?}, expected [{cout}]", b.dims())
        }
    }
    let all_fast = fast_path(x) && fast_path(w) && bias.is_none_or(fast_path);
    if !all_fast {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?),
            None => Ok(y),
        };
    }
    let op = Conv2dOp { stride, padding };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Conv2dBiasOp(op)),
        None => x.apply_op2(&w, op),
    }
}

/// Checks that `w` can convolve `x` with this stride and padding; returns the output channels.
pub(super) fn check_shapes(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<usize> {
    let (_, cin, h, wd) = x.dims4()?;
    let (cout, wcin, kh, kw) = w.dims4()?;
    if cin != wcin {
        bail!("conv2d: input has {cin} channels but the weight expects {wcin}")
    }
    if stride == 0 {
        bail!("conv2d: stride must be at least 1")
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        bail!("conv2d: kernel {kh}x{kw} is larger than the padded input {}x{}", h + 2 * padding, wd + 2 * padding)
    }
    Ok(cout)
}

/// Every size a convolution's loops need, derived once from the operand shapes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub n: usize,
    cin: usize,
    h: usize,
    w: usize,
    pub cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    pub(super) fn new(x: &Shape, w: &Shape, stride: usize, pad: usize) -> Result<Self> {
        let (n, cin, h, wd) = x.dims4()?;
        let (cout, _, kh, kw) = w.dims4()?;
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (wd + 2 * pad - kw) / stride + 1;
        Ok(Self { n, cin, h, w: wd, cout, kh, kw, stride, pad, ho, wo })
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output pixels per channel.
    pub(super) fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    pub(super) fn out_len(&self) -> usize {
        self.cout * self.p()
    }

    /// The output indices `o` for which `o * stride + offset - pad` falls inside `0..size`.
    fn valid(&self, offset: usize, size: usize, out: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(offset).div_ceil(self.stride).min(out);
        let hi = if size + self.pad > offset { ((size - 1 + self.pad - offset) / self.stride + 1).min(out) } else { 0 };
        (lo, hi.max(lo))
    }

    /// Output samples per group when the backward pass stacks samples side by side, so that
    /// the weight-gradient product has a long enough reduction to run near peak.
    fn group(&self) -> usize {
        (GROUP_COLS / self.p()).clamp(1, self.n.max(1))
    }
}

/// Target width (columns) of the stacked im2col matrix in the backward pass.
const GROUP_COLS: usize = 512;

/// The batch is cut into at most this many chunks for the weight-gradient reduction. The
/// count depends only on the batch size, so the summation order never depends on threads.
const GRAD_CHUNKS: usize = 8;

/// Writes sample `x`'s patches into columns `off..off + P` of `cols` (K rows, row stride `ld`).
fn im2col(g: &Geom, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    if is_shift(g) {
        im2col_shift(g, x, cols, ld, off)
    } else {
        im2col_rows(g, x, cols, ld, off)
    }
}

/// [`im2col`] for any geometry, one output row at a time.
fn im2col_rows(g: &Geom, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    let (p, wo, s) = (g.p(), g.wo, g.stride);
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(ki, g.h, g.ho);
            for kj in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(kj, g.w, g.wo);
                let row = &mut cols[((ci * g.kh + ki) * g.kw + kj) * ld + off..][..p];
                row[..oh_lo * wo].fill(0.0);
                row[oh_hi * wo..].fill(0.0);
                for oh in oh_lo..oh_hi {
                    let src = &plane[(oh * s + ki - g.pad) * g.w..][..g.w];
                    let dst = &mut row[oh * wo..][..wo];
                    dst[..ow_lo].fill(0.0);
                    dst[ow_hi..].fill(0.0);
                    let first = ow_lo * s + kj - g.pad;
                    if s == 1 {
                        dst[ow_lo..ow_hi].copy_from_slice(&src[first..first + ow_hi - ow_lo]);
                    } else {
                        for (d, v) in dst[ow_lo..ow_hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds columns `off..off + P` of `cols` back onto the input pixels they were read from:
/// the adjoint of [`im2col`]. `dx` must start zeroed; `cols` is left with the entries that fell
/// on padding zeroed.
fn col2im(g: &Geom, cols: &mut [f32], ld: usize, off: usize, dx: &mut [f32]) {
    if is_shift(g) {
        col2im_shift(g, cols, ld, off, dx)
    } else {
        col2im_rows(g, cols, ld, off, dx)
    }
}

/// [`col2im`] for any geometry, one output row at a time.
fn col2im_rows(g: &Geom, cols: &[f32], ld: usize, off: usize, dx: &mut [f32]) {
    let (p, wo, s) = (g.p(), g.wo, g.stride);
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * g.w..][..g.h * g.w];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(ki, g.h, g.ho);
            for kj in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(kj, g.w, g.wo);
                let row = &cols[((ci * g.kh + ki) * g.kw + kj) * ld + off..][..p];
                for oh in oh_lo..oh_hi {
                    let dst = &mut plane[(oh * s + ki - g.pad) * g.w..][..g.w];
                    let src = &row[oh * wo + ow_lo..oh * wo + ow_hi];
                    let first = ow_lo * s + kj - g.pad;
                    if s == 1 {
                        for (d, v) in dst[first..first + src.len()].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[first..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Stride 1 with the output as wide as the input (3x3 with padding 1, 5x5 with 2, 1x1 with
/// 0...): every im2col row is then its input plane shifted by one constant offset, so it is
/// one long copy plus a few zeroed border columns, where the general loop copies row by row.
fn is_shift(g: &Geom) -> bool {
    g.stride == 1 && g.wo == g.w
}

/// Where im2col row (ki, kj) of a shift geometry reads the input.
struct ShiftSpan {
    /// Output rows that fall inside the input.
    rows: (usize, usize),
    /// Output columns that fall inside the input.
    cols: (usize, usize),
    /// From the row's first in-bounds value to just past its last.
    start: usize,
    end: usize,
    /// Input index minus row index.
    shift: isize,
}

fn shift_span(g: &Geom, ki: usize, kj: usize) -> Option<ShiftSpan> {
    let (oh_lo, oh_hi) = g.valid(ki, g.h, g.ho);
    let (ow_lo, ow_hi) = g.valid(kj, g.w, g.wo);
    if oh_lo == oh_hi || ow_lo == ow_hi {
        return None;
    }
    let shift = (ki as isize - g.pad as isize) * g.w as isize + (kj as isize - g.pad as isize);
    Some(ShiftSpan { rows: (oh_lo, oh_hi), cols: (ow_lo, ow_hi), start: oh_lo * g.w + ow_lo, end: (oh_hi - 1) * g.w + ow_hi, shift })
}

/// Zeroes the columns outside `ow_lo..ow_hi` in rows `oh_lo..oh_hi` of one im2col row.
fn zero_border_columns(row: &mut [f32], w: usize, (oh_lo, oh_hi): (usize, usize), (ow_lo, ow_hi): (usize, usize)) {
    for c in (0..ow_lo).chain(ow_hi..w) {
        for v in row[oh_lo * w + c..oh_hi * w].iter_mut().step_by(w) {
            *v = 0.0;
        }
    }
}

fn im2col_shift(g: &Geom, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    let (p, w) = (g.p(), g.w);
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * w..][..g.h * w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &mut cols[((ci * g.kh + ki) * g.kw + kj) * ld + off..][..p];
                let Some(ShiftSpan { rows, cols: cols_ok, start, end, shift }) = shift_span(g, ki, kj) else {
                    row.fill(0.0);
                    continue;
                };
                row[..start].fill(0.0);
                row[end..].fill(0.0);
                let src = (start as isize + shift) as usize;
                row[start..end].copy_from_slice(&plane[src..src + (end - start)]);
                // The long copy carried neighbouring rows' pixels into the padding columns.
                zero_border_columns(row, w, rows, cols_ok);
            }
        }
    }
}

fn col2im_shift(g: &Geom, cols: &mut [f32], ld: usize, off: usize, dx: &mut [f32]) {
    let (p, w) = (g.p(), g.w);
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * w..][..g.h * w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &mut cols[((ci * g.kh + ki) * g.kw + kj) * ld + off..][..p];
                let Some(ShiftSpan { rows, cols: cols_ok, start, end, shift }) = shift_span(g, ki, kj) else {
                    continue;
                };
                // Padding positions have no input pixel; zeroed, one long add can run over them.
                zero_border_columns(row, w, rows, cols_ok);
                let dst = (start as isize + shift) as usize;
                for (d, v) in plane[dst..dst + (end - start)].iter_mut().zip(&row[start..end]) {
                    *d += *v;
                }
            }
        }
    }
}

fn is_pointwise(g: &Geom) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0
}

pub(super) fn forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let mut out = vec![0f32; g.n * g.out_len()];
    let cols_len = if is_pointwise(g) { 0 } else { k * p };
    out.par_chunks_mut(g.out_len()).zip(x.par_chunks(g.in_len())).for_each(|(o, xs)| {
        with_scratch(cols_len, |cols| {
            let rhs: &[f32] = if cols_len == 0 {
                xs
            } else {
                im2col(g, xs, cols, p, 0);
                cols
            };
            if let Some(b) = bias {
                for (row, &bv) in o.chunks_exact_mut(p).zip(b) {
                    row.fill(bv);
                }
            }
            matmul(g.cout, p, k, Operand::plain(w), Operand::plain(rhs), o, bias.is_some());
        })
    });
    out
}

/// Which gradients the backward pass must produce.
#[derive(Clone, Copy)]
pub(super) struct Needs {
    pub dx: bool,
    pub dw: bool,
    pub db: bool,
}

pub(super) struct Grads {
    pub dx: Option<Vec<f32>>,
    pub dw: Option<Vec<f32>>,
    pub db: Option<Vec<f32>>,
}

/// Writes the output gradient of (sample, output channel) — `P` values — into the slice: a
/// copy for a plain convolution, computed on the fly when an op fused after the convolution
/// (batch norm) turns its own output gradient into the convolution's.
pub(super) type DyRow<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// All gradients in one pass over the batch: each chunk of samples stacks `group` samples'
/// output gradients side by side, multiplies by the stacked im2col matrix for the weight
/// gradient and by the transposed weight for the input gradient's columns.
fn backward(g: &Geom, x: &[f32], w: &[f32], dy: &[f32], needs: Needs) -> Grads {
    let (p, cout) = (g.p(), g.cout);
    backward_rows(g, x, w, &|i, co, dst| dst.copy_from_slice(&dy[(i * cout + co) * p..][..p]), needs)
}

/// [`backward`] with the output gradient given row by row.
pub(super) fn backward_rows(g: &Geom, x: &[f32], w: &[f32], dy_row: DyRow<'_>, needs: Needs) -> Grads {
    let (k, p, cout) = (g.k(), g.p(), g.cout);
    let chunk = g.n.div_ceil(GRAD_CHUNKS).max(1);
    let n_chunks = g.n.div_ceil(chunk);
    let group = g.group().min(chunk);
    let mut dx = needs.dx.then(|| vec![0f32; g.n * g.in_len()]);
    let dx_parts: Vec<Option<&mut [f32]>> = match dx.as_mut() {
        Some(d) => d.chunks_mut(chunk * g.in_len()).map(Some).collect(),
        None => (0..n_chunks).map(|_| None).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_parts
        .into_par_iter()
        .enumerate()
        .map(|(c, mut dx_part)| {
            with_scratch((k + cout) * group * p, |scratch| {
                let (cols, dys) = scratch.split_at_mut(k * group * p);
                let mut dwt = vec![0f32; if needs.dw { k * cout } else { 0 }];
                let mut db = vec![0f32; if needs.db { cout } else { 0 }];
                let start = c * chunk;
                let end = (start + chunk).min(g.n);
                let mut s0 = start;
                while s0 < end {
                    let m = group.min(end - s0);
                    let ld = m * p;
                    // The output gradients of samples s0..s0+m side by side: cout x (m*p).
                    for j in 0..m {
                        for co in 0..cout {
                            dy_row(s0 + j, co, &mut dys[co * ld + j * p..][..p]);
                        }
                    }
                    let dys = &dys[..cout * ld];
                    if needs.db {
                        for (acc, row) in db.iter_mut().zip(dys.chunks_exact(ld)) {
                            *acc += row.iter().sum::<f32>();
                        }
                    }
                    if needs.dw {
                        for j in 0..m {
                            im2col(g, &x[(s0 + j) * g.in_len()..][..g.in_len()], cols, ld, j * p);
                        }
                        // dW^T = cols . dys^T, row-major: gemm computes it as dys . cols^T
                        // into a column-major result, packing the small `dys` and reading
                        // `cols` as it is; asked for dW itself, it would first copy (pack)
                        // all of `cols`, as much memory traffic as building it.
                        matmul(k, cout, ld, Operand::plain(&cols[..k * ld]), Operand::transposed(dys), &mut dwt, true);
                    }
                    if let Some(dxp) = dx_part.as_deref_mut() {
                        matmul(k, ld, cout, Operand::transposed(w), Operand::plain(dys), &mut cols[..k * ld], false);
                        for j in 0..m {
                            let dst = &mut dxp[(s0 - start + j) * g.in_len()..][..g.in_len()];
                            col2im(g, cols, ld, j * p, dst);
                        }
                    }
                    s0 += m;
                }
                let mut dw = vec![0f32; dwt.len()];
                for (kk, row) in dwt.chunks_exact(cout).enumerate() {
                    for (co, &v) in row.iter().enumerate() {
                        dw[co * k + kk] = v;
                    }
                }
                (dw, db)
            })
        })
        .collect();
    let mut parts = partials.into_iter();
    let (mut dw, mut db) = parts.next().unwrap_or_default();
    for (pw, pb) in parts {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += *b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += *b);
    }
    Grads { dx, dw: needs.dw.then_some(dw), db: needs.db.then_some(db) }
}

#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl Conv2dOp {
    fn fwd(&self, x: (&CpuStorage, &Layout), w: (&CpuStorage, &Layout), b: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(x.1.shape(), w.1.shape(), self.stride, self.padding)?;
        let xs = cpu_slice(x.0, x.1, "conv2d")?;
        let ws = cpu_slice(w.0, w.1, "conv2d")?;
        let bs = b.map(|(s, l)| cpu_slice(s, l, "conv2d")).transpose()?;
        let out = forward(&g, xs, ws, bs);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, dy: &Tensor, needs: Needs) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.shape(), w.shape(), self.stride, self.padding)?;
        let grads = with_f32(x, "conv2d backward", |xs| {
            with_f32(w, "conv2d backward", |ws| with_f32(dy, "conv2d backward", |dys| backward(&g, xs, ws, dys, needs)))
        })???;
        let dx = grads.dx.map(|d| cpu_tensor(d, x.dims())).transpose()?;
        let dw = grads.dw.map(|d| cpu_tensor(d, w.dims())).transpose()?;
        let db = grads.db.map(|d| cpu_tensor(d, &[g.cout])).transpose()?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "transferlab-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let needs = Needs { dx: x.track_op(), dw: w.track_op(), db: false };
        let (dx, dw, _) = Conv2dOp::bwd(self, x, w, dy, needs)?;
        Ok((dx, dw))
    }
}

#[derive(Debug, Clone, Copy)]
struct Conv2dBiasOp(Conv2dOp);

impl CustomOp3 for Conv2dBiasOp {
    fn name(&self) -> &'static str {
        "transferlab-conv2d-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let needs = Needs { dx: x.track_op(), dw: w.track_op(), db: b.track_op() };
        self.0.bwd(x, w, dy, needs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_im2col_and_col2im_match_the_row_by_row_loops() {
        // (cin, h, w, k, pad): every stride-1 geometry whose output is as wide as the input.
        for (cin, h, w, k, pad) in [(2, 5, 7, 3, 1), (1, 6, 5, 7, 3), (3, 4, 4, 1, 0), (2, 3, 9, 5, 2), (1, 2, 2, 3, 1)] {
            let (ho, wo) = (h + 2 * pad - k + 1, w + 2 * pad - k + 1);
            let g = Geom { n: 1, cin, h, w, cout: 1, kh: k, kw: k, stride: 1, pad, ho, wo };
            assert!(is_shift(&g));
            let x: Vec<f32> = (0..cin * h * w).map(|i| i as f32 + 1.0).collect();
            let (ld, off) = (g.p() + 3, 2);
            let (mut a, mut b) = (vec![7.0; g.k() * ld], vec![7.0; g.k() * ld]);
            im2col_shift(&g, &x, &mut a, ld, off);
            im2col_rows(&g, &x, &mut b, ld, off);
            assert_eq!(a, b, "im2col {cin} {h}x{w} k {k} pad {pad}");
            let cols: Vec<f32> = (0..g.k() * ld).map(|i| (i % 13) as f32 - 6.0).collect();
            let (mut da, mut db) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            col2im_shift(&g, &mut cols.clone(), ld, off, &mut da);
            col2im_rows(&g, &cols, ld, off, &mut db);
            assert_eq!(da, db, "col2im {cin} {h}x{w} k {k} pad {pad}");
        }
    }

    #[test]
    fn valid_ranges_cover_exactly_the_in_bounds_outputs() {
        for (size, k, s, pad) in [(5, 3, 1, 1), (7, 3, 2, 1), (6, 7, 2, 3), (4, 1, 1, 0), (9, 5, 3, 0), (3, 3, 2, 3)] {
            let out = (size + 2 * pad - k) / s + 1;
            let g = Geom { n: 1, cin: 1, h: size, w: size, cout: 1, kh: k, kw: k, stride: s, pad, ho: out, wo: out };
            for off in 0..k {
                let (lo, hi) = g.valid(off, size, out);
                for o in 0..out {
                    let i = (o * s + off) as isize - pad as isize;
                    let inside = i >= 0 && (i as usize) < size;
                    assert_eq!(inside, (lo..hi).contains(&o), "size {size} k {k} s {s} pad {pad} off {off} o {o}");
                }
            }
        }
    }
}
