//! Batch normalisation: training mode with a fused backward, and the eval-mode per-channel
//! affine map.

use super::{cpu_slice, cpu_tensor, fast_path, with_f32};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// What [`batch_norm_train`] returns.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// The normalised, scaled and shifted input, same shape as the input.
    pub output: Tensor,
    /// Per-channel batch mean (C), without autograd history.
    pub mean: Tensor,
    /// Per-channel biased batch variance (C), the one the output was normalised with,
    /// without autograd history.
    pub var: Tensor,
    /// Values each channel's statistics were taken over (N times the spatial size).
    pub count: usize,
}

impl BatchNormOutput {
    /// The unbiased variance `var * count / (count - 1)`, which PyTorch's (and candle-nn's)
    /// running variance averages.
    pub fn unbiased_var(&self) -> Result<Tensor> {
        let m = self.count as f64;
        self.var.affine(if self.count > 1 { m / (m - 1.0) } else { 1.0 }, 0.0)
    }
}

/// Training-mode batch normalisation of `x` (N, C, ...) over every axis but the channel axis,
/// with affine `weight` and `bias` (C). Running statistics are the caller's to update from
/// the returned batch statistics.
pub fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<BatchNormOutput> {
    batch_norm_train_impl(x, weight, bias, eps, false)
}

/// [`batch_norm_train`] followed by ReLU, as one op: the clamp happens as the output is
/// written and the backward pass masks the incoming gradient itself, so the graph has one
/// node (and one gradient buffer) where the two-op form has two. The statistics returned are
/// those of the batch norm's input, as in the two-op form.
pub fn batch_norm_train_relu(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<BatchNormOutput> {
    batch_norm_train_impl(x, weight, bias, eps, true)
}

fn batch_norm_train_impl(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, relu: bool) -> Result<BatchNormOutput> {
    let (n, c, s) = channel_dims(x, "batch_norm_train")?;
    check_channel_vec(weight, c, "batch_norm_train weight")?;
    check_channel_vec(bias, c, "batch_norm_train bias")?;
    let count = n * s;
    if count == 0 {
        bail!("batch_norm_train: no values to take statistics over")
    }
    if !(fast_path(x) && fast_path(weight) && fast_path(bias)) {
        let mut out = batch_norm_train_reference(x, weight, bias, eps, count)?;
        if relu {
            out.output = out.output.relu()?;
        }
        return Ok(out);
    }
    let stats = Arc::new(OnceLock::new());
    let op = BatchNormTrain { eps, relu, stats: stats.clone() };
    let output = x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let Some(st) = stats.get() else {
        bail!("batch_norm_train: the forward pass left no statistics")
    };
    let mean = cpu_tensor(st.mean.clone(), &[c])?;
    let var = cpu_tensor(st.var.clone(), &[c])?;
    Ok(BatchNormOutput { output, mean, var, count })
}

/// Eval-mode batch normalisation with running statistics:
/// `(x - running_mean) / sqrt(running_var + eps) * weight + bias`, one pass over `x`.
/// Gradients flow to `x`, `weight` and `bias` (fine-tuning with frozen statistics).
pub fn batch_norm_eval(x: &Tensor, running_mean: &Tensor, running_var: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    batch_norm_eval_impl(x, running_mean, running_var, weight, bias, eps, false)
}

/// [`batch_norm_eval`] followed by ReLU, as one op (see [`batch_norm_train_relu`]).
pub fn batch_norm_eval_relu(x: &Tensor, running_mean: &Tensor, running_var: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    batch_norm_eval_impl(x, running_mean, running_var, weight, bias, eps, true)
}

fn batch_norm_eval_impl(x: &Tensor, running_mean: &Tensor, running_var: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, relu: bool) -> Result<Tensor> {
    let (_, c, _) = channel_dims(x, "batch_norm_eval")?;
    for (t, what) in [(running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")] {
        check_channel_vec(t, c, what)?;
    }
    let (scale, shift) = batch_norm_eval_affine(running_mean, running_var, weight, bias, eps)?;
    channel_affine_impl(x, &scale, &shift, relu)
}

/// The per-channel `(scale, shift)` that eval-mode batch norm applies:
/// `weight / sqrt(running_var + eps)` and `bias - running_mean * scale`, differentiable in
/// `weight` and `bias`.
pub fn batch_norm_eval_affine(running_mean: &Tensor, running_var: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let scale = weight.broadcast_div(&(running_var.detach() + eps)?.sqrt()?)?;
    let shift = (bias - running_mean.detach().mul(&scale)?)?;
    Ok((scale, shift))
}

/// `x * scale[c] + shift[c]` for `x` (N, C, ...) and per-channel `scale`, `shift` (C).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    channel_affine_impl(x, scale, shift, false)
}

fn channel_affine_impl(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    let (_, c, _) = channel_dims(x, "channel_affine")?;
    check_channel_vec(scale, c, "channel_affine scale")?;
    check_channel_vec(shift, c, "channel_affine shift")?;
    if !(fast_path(x) && fast_path(scale) && fast_path(shift)) {
        let bshape = broadcast_shape(x);
        let y = x.broadcast_mul(&scale.reshape(bshape.as_slice())?)?.broadcast_add(&shift.reshape(bshape.as_slice())?)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op3(&scale.contiguous()?, &shift.contiguous()?, ChannelAffine { relu })
}

/// (N, C, product of the remaining axes) of a tensor with at least two axes.
pub(super) fn channel_dims(x: &Tensor, op: &str) -> Result<(usize, usize, usize)> {
    let d = x.dims();
    if d.len() < 2 {
        bail!("{op}: input must be (N, C, ...), got shape {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

pub(super) fn check_channel_vec(t: &Tensor, c: usize, what: &str) -> Result<()> {
    if t.dims() != [c] {
        bail!("{what} has shape {:?}, expected [{c}]", t.dims())
    }
    Ok(())
}

/// (1, C, 1, ...) for broadcasting a per-channel vector against `x`.
fn broadcast_shape(x: &Tensor) -> Vec<usize> {
    x.dims().iter().enumerate().map(|(i, &d)| if i == 1 { d } else { 1 }).collect()
}

fn batch_norm_train_reference(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, count: usize) -> Result<BatchNormOutput> {
    let bshape = broadcast_shape(x);
    let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
    let mean = x.mean_keepdim(axes.as_slice())?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(axes.as_slice())?;
    let normed = centred.broadcast_div(&(&var + eps)?.sqrt()?)?;
    let output = normed.broadcast_mul(&weight.reshape(bshape.as_slice())?)?.broadcast_add(&bias.reshape(bshape.as_slice())?)?;
    Ok(BatchNormOutput { output, mean: mean.flatten_all()?.detach(), var: var.flatten_all()?.detach(), count })
}

/// Sum of `x` as f64, with eight f32 partial sums so the loop is not one long dependency
/// chain; the grouping is fixed, so the result is deterministic.
fn sum(x: &[f32]) -> f64 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// `sum((x - m)^2)` as f64, grouped like [`sum`].
fn sum_sq_dev(x: &[f32], m: f32) -> f64 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| ((v - m) * (v - m)) as f64).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += (v - m) * (v - m);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// `(sum(dy), sum(dy * (x - m)))` as f64, grouped like [`sum`].
fn sums_dy(dy: &[f32], x: &[f32], m: f32) -> (f64, f64) {
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    let (cd, cx) = (dy.chunks_exact(8), x.chunks_exact(8));
    let (mut ta, mut tb) = (0f64, 0f64);
    for (&g, &v) in cd.remainder().iter().zip(cx.remainder()) {
        ta += g as f64;
        tb += (g * (v - m)) as f64;
    }
    for (gd, gx) in cd.zip(cx) {
        for i in 0..8 {
            a[i] += gd[i];
            b[i] += gd[i] * (gx[i] - m);
        }
    }
    (a.iter().map(|&v| v as f64).sum::<f64>() + ta, b.iter().map(|&v| v as f64).sum::<f64>() + tb)
}

/// Applies `f(channel, plane_index_in_sample, plane)` to every (N, C) plane in parallel.
pub(super) fn for_planes_mut(out: &mut [f32], c: usize, s: usize, f: impl Fn(usize, &mut [f32], usize) + Sync) {
    let per = (super::PAR_MIN / s.max(1)).max(1);
    out.par_chunks_mut(per * s).enumerate().for_each(|(t, chunk)| {
        for (i, plane) in chunk.chunks_exact_mut(s).enumerate() {
            let global = t * per + i;
            f(global % c, plane, global);
        }
    });
}

/// `y = x * scale + shift` over one plane, clamped at zero when `relu`.
pub(super) fn affine_plane(x: &[f32], scale: f32, shift: f32, relu: bool, y: &mut [f32]) {
    if relu {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v * scale + shift).max(0.0);
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * scale + shift;
        }
    }
}

/// The gradient a fused ReLU passes back: `dy` where the op's output `y` is positive.
fn relu_masked(relu: bool, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if !relu {
        return Ok(dy.clone());
    }
    super::activation::relu_grad(y, dy)
}

/// Batch statistics as computed in the forward pass and reused by the backward pass.
pub(super) struct Stats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
}

impl Stats {
    /// The statistics of `x` (N, C, S) and the per-channel (scale, shift) that normalise it
    /// and apply the affine `w`, `b`.
    pub(super) fn of_batch(x: &[f32], (n, c, s): (usize, usize, usize), w: &[f32], b: &[f32], eps: f64) -> (Self, Vec<f32>, Vec<f32>) {
        let m = (n * s) as f64;
        // Two passes (mean, then squared deviations) as the reference does: one-pass
        // E[x^2] - E[x]^2 loses precision when the mean is large.
        let per_channel: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = || (0..n).map(|i| &x[(i * c + ch) * s..][..s]);
                let mean = (planes().map(sum).sum::<f64>() / m) as f32;
                let var = (planes().map(|p| sum_sq_dev(p, mean)).sum::<f64>() / m) as f32;
                (mean, var)
            })
            .collect();
        let mean: Vec<f32> = per_channel.iter().map(|p| p.0).collect();
        let var: Vec<f32> = per_channel.iter().map(|p| p.1).collect();
        let invstd: Vec<f32> = var.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect();
        let scale: Vec<f32> = (0..c).map(|i| invstd[i] * w[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| b[i] - mean[i] * scale[i]).collect();
        (Self { mean, var, invstd }, scale, shift)
    }

    /// Per channel `(sum(dy), sum(dy * (x - mean)))` over the batch: the bias gradient and the
    /// weight gradient before scaling by `invstd`.
    pub(super) fn grad_sums(&self, x: &[f32], dy: &[f32], dims: (usize, usize, usize)) -> Vec<(f32, f32)> {
        grad_sums(x, dy, dims, |ch| self.mean[ch])
    }
}

/// Per channel `(sum(dy), sum(dy * (x - centre(channel))))` over the batch.
pub(super) fn grad_sums(x: &[f32], dy: &[f32], (n, c, s): (usize, usize, usize), centre: impl Fn(usize) -> f32 + Sync) -> Vec<(f32, f32)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sd, mut sdx) = (0f64, 0f64);
            for i in 0..n {
                let o = (i * c + ch) * s;
                let (a, b) = sums_dy(&dy[o..o + s], &x[o..o + s], centre(ch));
                sd += a;
                sdx += b;
            }
            (sd as f32, sdx as f32)
        })
        .collect()
}

/// Per-channel constants of the batch-norm input gradient
/// `dx = a * (dy - mdb) - k2 * (x - mean)`: (a, k2, mdb).
pub(super) fn dx_coefficients(st: &Stats, w: &[f32], sums: &[(f32, f32)], m: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = w.len();
    let dw: Vec<f32> = sums.iter().zip(&st.invstd).map(|(p, &is)| p.1 * is).collect();
    let a: Vec<f32> = (0..c).map(|i| w[i] * st.invstd[i]).collect();
    let k2: Vec<f32> = (0..c).map(|i| a[i] * st.invstd[i] * dw[i] / m).collect();
    let mdb: Vec<f32> = sums.iter().map(|p| p.0 / m).collect();
    (a, k2, mdb)
}

struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "transferlab-batch-norm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "batch_norm_train")?;
        let w = cpu_slice(s2, l2, "batch_norm_train")?;
        let b = cpu_slice(s3, l3, "batch_norm_train")?;
        let d = l1.shape().dims();
        let (n, c, s) = (d[0], d[1], d[2..].iter().product::<usize>());
        let (st, scale, shift) = Stats::of_batch(x, (n, c, s), w, b, self.eps);
        let mut y = vec![0f32; x.len()];
        for_planes_mut(&mut y, c, s, |ch, yp, g| {
            affine_plane(&x[g * s..][..s], scale[ch], shift[ch], self.relu, yp);
        });
        let _ = self.stats.set(st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = &relu_masked(self.relu, y, dy)?;
        let Some(st) = self.stats.get() else {
            bail!("batch_norm_train backward: the forward pass did not run on the CPU")
        };
        let (n, c, s) = channel_dims(x, "batch_norm_train backward")?;
        let m = (n * s) as f32;
        let need_dx = x.track_op();
        let (dx, dw, db) = with_f32(x, "batch_norm_train backward", |xs| {
            with_f32(w, "batch_norm_train backward", |ws| {
                with_f32(dy, "batch_norm_train backward", |dys| {
                    let sums = st.grad_sums(xs, dys, (n, c, s));
                    let db: Vec<f32> = sums.iter().map(|p| p.0).collect();
                    let dw: Vec<f32> = sums.iter().zip(&st.invstd).map(|(p, &is)| p.1 * is).collect();
                    let dx = need_dx.then(|| {
                        // dx = w*invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), with
                        // xhat = (x - mean) * invstd, folded into one multiply-add per value.
                        let (a, k2, mdb) = dx_coefficients(st, ws, &sums, m);
                        let mut dx = vec![0f32; xs.len()];
                        for_planes_mut(&mut dx, c, s, |ch, dp, g| {
                            let (xp, gp) = (&xs[g * s..][..s], &dys[g * s..][..s]);
                            let (a, k2, mdb, mu) = (a[ch], k2[ch], mdb[ch], st.mean[ch]);
                            for ((o, &v), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                                *o = a * (gv - mdb) - k2 * (v - mu);
                            }
                        });
                        dx
                    });
                    (dx, dw, db)
                })
            })
        })???;
        let dx = dx.map(|d| cpu_tensor(d, x.dims())).transpose()?;
        let dw = if w.track_op() { Some(cpu_tensor(dw, &[c])?) } else { None };
        let db = if b.track_op() { Some(cpu_tensor(db, &[c])?) } else { None };
        Ok((dx, dw, db))
    }
}

struct ChannelAffine {
    relu: bool,
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "transferlab-channel-affine"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "channel_affine")?;
        let scale = cpu_slice(s2, l2, "channel_affine")?;
        let shift = cpu_slice(s3, l3, "channel_affine")?;
        let d = l1.shape().dims();
        let (c, s) = (d[1], d[2..].iter().product::<usize>());
        let mut y = vec![0f32; x.len()];
        for_planes_mut(&mut y, c, s, |ch, yp, g| {
            affine_plane(&x[g * s..][..s], scale[ch], shift[ch], self.relu, yp);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, scale: &Tensor, shift: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = &relu_masked(self.relu, y, dy)?;
        let (n, c, s) = channel_dims(x, "channel_affine backward")?;
        let need_dx = x.track_op();
        let (dx, dscale, dshift) = with_f32(x, "channel_affine backward", |xs| {
            with_f32(scale, "channel_affine backward", |sc| {
                with_f32(dy, "channel_affine backward", |dys| {
                    let sums = grad_sums(xs, dys, (n, c, s), |_| 0.0);
                    let dx = need_dx.then(|| {
                        let mut dx = vec![0f32; xs.len()];
                        for_planes_mut(&mut dx, c, s, |ch, dp, g| {
                            for (o, &gv) in dp.iter_mut().zip(&dys[g * s..][..s]) {
                                *o = gv * sc[ch];
                            }
                        });
                        dx
                    });
                    (dx, sums.iter().map(|p| p.1).collect::<Vec<f32>>(), sums.iter().map(|p| p.0).collect::<Vec<f32>>())
                })
            })
        })???;
        let dx = dx.map(|d| cpu_tensor(d, x.dims())).transpose()?;
        let dscale = if scale.track_op() { Some(cpu_tensor(dscale, &[c])?) } else { None };
        let dshift = if shift.track_op() { Some(cpu_tensor(dshift, &[c])?) } else { None };
        Ok((dx, dscale, dshift))
    }
}
