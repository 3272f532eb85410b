//! Max pooling that remembers its argmax, and average pooling.

use super::{cpu_slice, cpu_tensor, fast_path, with_f32};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Planes (one channel of one sample) per parallel task: enough work per task to amortise
/// rayon's scheduling on small feature maps.
fn planes_per_task(plane_len: usize) -> usize {
    (super::PAR_MIN / plane_len.max(1)).max(1)
}

/// Max pooling over `k x k` windows of (N, C, H, W), moved by `stride`, over an input padded
/// by `padding` on every side with values that never win (PyTorch's `max_pool2d`, floor
/// mode, `padding <= k / 2`).
///
/// The backward pass sends each output's gradient to the first maximum of its window in
/// row-major order, as PyTorch does. NaNs do not win a window (in PyTorch they would). candle
/// 0.11's own backward differs: it scales gradients by (number of maxima) / k² and only
/// supports `stride == k`. The fallback on other devices is candle's op and requires
/// `padding == 0`.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    max_pool(x, k, stride, padding, false)
}

/// `relu(max_pool2d(x))`, which equals `max_pool2d(relu(x))` value for value and gradient for
/// gradient, as one op: the ReLU runs on the pooled values (k² fewer than its input) and the
/// graph has one node where the two-op form has two, each with its own gradient buffer.
pub fn max_pool2d_relu(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    max_pool(x, k, stride, padding, true)
}

fn max_pool(x: &Tensor, k: usize, stride: usize, padding: usize, relu: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || stride == 0 {
        bail!("max_pool2d: kernel size and stride must be at least 1")
    }
    if padding > k / 2 {
        bail!("max_pool2d: padding {padding} must be at most half the kernel size {k}")
    }
    if h + 2 * padding < k || w + 2 * padding < k {
        bail!("max_pool2d: window {k} is larger than the padded input {}x{}", h + 2 * padding, w + 2 * padding)
    }
    if !fast_path(x) {
        if padding != 0 {
            bail!("max_pool2d: padding is only supported for CPU f32 tensors")
        }
        let y = x.max_pool2d_with_stride(k, stride)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op1(MaxPool { k, stride, padding, relu, argmax: OnceLock::new() })
}

/// Average pooling over non-overlapping `k x k` windows (stride `k`, no padding); trailing
/// rows and columns that do not fill a window are dropped, as in PyTorch.
pub fn avg_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || h < k || w < k {
        bail!("avg_pool2d: window {k} does not fit the {h}x{w} input")
    }
    if !fast_path(x) {
        return x.avg_pool2d(k);
    }
    x.contiguous()?.apply_op1(AvgPool { k })
}

struct MaxPool {
    k: usize,
    stride: usize,
    padding: usize,
    /// Clamp the pooled values at zero (and pass gradients only where they are positive).
    relu: bool,
    /// For every output, the index of its winning input within its (H, W) plane, kept from
    /// the forward pass so that the backward pass is one scatter.
    argmax: OnceLock<Vec<u32>>,
}

impl MaxPool {
    fn out_size(&self, size: usize) -> usize {
        (size + 2 * self.padding - self.k) / self.stride + 1
    }

    /// The input range `lo..hi` window `o` covers along an axis of `size`.
    fn window(&self, o: usize, size: usize) -> (usize, usize) {
        let start = o * self.stride;
        (start.saturating_sub(self.padding), (start + self.k - self.padding).min(size))
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "transferlab-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, "max_pool2d")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        if h * w > u32::MAX as usize {
            bail!("max_pool2d: planes of {h}x{w} are too large")
        }
        let (plane, oplane) = (h * w, ho * wo);
        let mut y = vec![0f32; n * c * oplane];
        let mut idx = vec![0u32; n * c * oplane];
        let per = planes_per_task(plane);
        y.par_chunks_mut(per * oplane)
            .zip(idx.par_chunks_mut(per * oplane))
            .zip(x.par_chunks(per * plane))
            .for_each(|((ys, is), xs)| {
                for ((yp, ip), xp) in ys.chunks_exact_mut(oplane).zip(is.chunks_exact_mut(oplane)).zip(xs.chunks_exact(plane)) {
                    if self.k == 2 && self.stride == 2 && self.padding == 0 {
                        max_pool_2x2(xp, w, wo, yp, ip);
                        continue;
                    }
                    for oh in 0..ho {
                        let (h0, h1) = self.window(oh, h);
                        for ow in 0..wo {
                            let (w0, w1) = self.window(ow, w);
                            let mut best = f32::NEG_INFINITY;
                            let mut at = h0 * w + w0;
                            for ih in h0..h1 {
                                for (iw, &v) in xp[ih * w + w0..ih * w + w1].iter().enumerate() {
                                    if v > best {
                                        best = v;
                                        at = ih * w + w0 + iw;
                                    }
                                }
                            }
                            yp[oh * wo + ow] = best;
                            ip[oh * wo + ow] = at as u32;
                        }
                    }
                }
            });
        if self.relu {
            y.par_chunks_mut(super::PAR_MIN).for_each(|ys| ys.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        let _ = self.argmax.set(idx);
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let Some(idx) = self.argmax.get() else {
            bail!("max_pool2d backward: the forward pass did not run on the CPU")
        };
        let (_, _, h, w) = x.dims4()?;
        let (_, _, ho, wo) = y.dims4()?;
        let (plane, oplane) = (h * w, ho * wo);
        let relu = self.relu;
        let dx = with_f32(dy, "max_pool2d backward", |dys| {
            with_f32(y, "max_pool2d backward", |ys| {
                let mut dx = vec![0f32; x.elem_count()];
                let per = planes_per_task(plane);
                dx.par_chunks_mut(per * plane)
                    .zip(dys.par_chunks(per * oplane))
                    .zip(idx.par_chunks(per * oplane))
                    .zip(ys.par_chunks(per * oplane))
                    .for_each(|(((dxs, dys), is), ys)| {
                        let planes = dxs.chunks_exact_mut(plane).zip(dys.chunks_exact(oplane)).zip(is.chunks_exact(oplane)).zip(ys.chunks_exact(oplane));
                        for (((dxp, dyp), ip), yp) in planes {
                            for ((&g, &i), &yv) in dyp.iter().zip(ip).zip(yp) {
                                // With the ReLU only positive outputs pass their gradient, as
                                // in `relu`; without it every output does.
                                let pass = !relu || yv > 0.0;
                                dxp[i as usize] += f32::from_bits(g.to_bits() & (pass as u32).wrapping_neg());
                            }
                        }
                    });
                dx
            })
        })??;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}

/// The common 2x2, stride 2 case on one plane: two input rows per output row and no window
/// bookkeeping. Written without data-dependent branches (maxima of random data are where a
/// branch predictor guesses wrong half the time): float maxima, integer selects for the index.
#[inline(never)]
fn max_pool_2x2(xp: &[f32], w: usize, wo: usize, yp: &mut [f32], ip: &mut [u32]) {
    let w32 = w as u32;
    for (oh, (yrow, irow)) in yp.chunks_exact_mut(wo).zip(ip.chunks_exact_mut(wo)).enumerate() {
        let base = 2 * oh * w;
        let r0 = &xp[base..base + 2 * wo];
        let r1 = &xp[base + w..base + w + 2 * wo];
        let mut at = base as u32;
        for (((y, i), a), b) in yrow.iter_mut().zip(irow.iter_mut()).zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            // Ties go to the earlier position in row-major order, as in the general loop.
            let (top, bottom) = (a[0].max(a[1]), b[0].max(b[1]));
            let top_at = (a[1] > a[0]) as u32;
            let bottom_at = w32.wrapping_add((b[1] > b[0]) as u32);
            let lower = (bottom > top) as u32;
            *y = top.max(bottom);
            *i = at.wrapping_add(top_at.wrapping_add(lower.wrapping_mul(bottom_at.wrapping_sub(top_at))));
            at = at.wrapping_add(2);
        }
    }
}

struct AvgPool {
    k: usize,
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "transferlab-avg-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, "avg_pool2d")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let k = self.k;
        let (ho, wo) = (h / k, w / k);
        let (plane, oplane) = (h * w, ho * wo);
        let scale = 1.0 / (k * k) as f32;
        let mut y = vec![0f32; n * c * oplane];
        let per = planes_per_task(plane);
        y.par_chunks_mut(per * oplane).zip(x.par_chunks(per * plane)).for_each(|(ys, xs)| {
            for (yp, xp) in ys.chunks_exact_mut(oplane).zip(xs.chunks_exact(plane)) {
                for oh in 0..ho {
                    let out = &mut yp[oh * wo..][..wo];
                    for ih in oh * k..oh * k + k {
                        let row = &xp[ih * w..][..wo * k];
                        for (o, win) in out.iter_mut().zip(row.chunks_exact(k)) {
                            *o += win.iter().sum::<f32>();
                        }
                    }
                    out.iter_mut().for_each(|o| *o *= scale);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (_, _, ho, wo) = y.dims4()?;
        let k = self.k;
        let (plane, oplane) = (h * w, ho * wo);
        let scale = 1.0 / (k * k) as f32;
        let dx = with_f32(dy, "avg_pool2d backward", |dys| {
            let mut dx = vec![0f32; x.elem_count()];
            let per = planes_per_task(plane);
            dx.par_chunks_mut(per * plane).zip(dys.par_chunks(per * oplane)).for_each(|(dxs, dys)| {
                for (dxp, dyp) in dxs.chunks_exact_mut(plane).zip(dys.chunks_exact(oplane)) {
                    for oh in 0..ho {
                        let g = &dyp[oh * wo..][..wo];
                        for ih in oh * k..oh * k + k {
                            let row = &mut dxp[ih * w..][..wo * k];
                            for (win, &gv) in row.chunks_exact_mut(k).zip(g) {
                                win.fill(gv * scale);
                            }
                        }
                    }
                }
            });
            dx
        })?;
        Ok(Some(cpu_tensor(dx, x.dims())?))
    }
}
