//! A convolution followed by training-mode batch norm, optionally a residual add and a ReLU,
//! as one graph node.
//!
//! candle's backward pass zero-fills a gradient buffer for every input of every node and adds
//! the node's gradient into it: for a ResNet block's five activation-sized nodes (conv, BN +
//! ReLU, conv, BN, add + ReLU) that is five extra passes of memset and add per block, a fifth of
//! a ResNet-20 training step. As one op, the batch norm's input gradient never becomes a
//! tensor: the convolution's backward pass computes it row by row as it stacks the output
//! gradient for its matrix products.
//!
//! The arithmetic is the unfused ops', operation for operation, so results are bit-identical
//! to `conv2d` -> `batch_norm_train(_relu)` (-> `add_relu`).

use super::conv::{self, backward_rows, Geom, Needs};
use super::norm::{affine_plane, check_channel_vec, dx_coefficients, for_planes_mut, grad_sums, BatchNormOutput, Stats};
use super::{cpu_slice, cpu_tensor, fast_path, with_f32};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, OnceLock};

/// The settings of [`conv2d_batch_norm_train`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvBn {
    /// Convolution stride along both axes.
    pub stride: usize,
    /// Zero padding along both axes.
    pub padding: usize,
    /// Batch norm's epsilon (PyTorch's default is 1e-5).
    pub eps: f64,
    /// Clamp the output at zero (after the residual add, if any).
    pub relu: bool,
}

/// `relu?(batch_norm_train(conv2d(x, w), gamma, beta) + residual?)` as one op: the convolution
/// has no bias (batch norm's shift makes one redundant), `residual` (same shape as the output)
/// is added after the batch norm and before the ReLU, as in a ResNet block's second layer.
///
/// Returns what [`batch_norm_train`](super::batch_norm_train) returns: the output and the
/// batch statistics of the convolution's output, for the caller's running averages. Values
/// and gradients are bit-identical to the unfused ops; off the CPU or for other dtypes this
/// runs the unfused ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use transferlab::kernels::{conv2d_batch_norm_train, ConvBn};
/// let x = Tensor::ones((2, 3, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let (gamma, beta) = (Tensor::ones(4, candle_core::DType::F32, &Device::Cpu)?, Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu)?);
/// let spec = ConvBn { stride: 1, padding: 1, eps: 1e-5, relu: true };
/// let out = conv2d_batch_norm_train(&x, &w, &gamma, &beta, None, spec)?;
/// assert_eq!(out.output.dims(), &[2, 4, 5, 5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn conv2d_batch_norm_train(x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor, residual: Option<&Tensor>, spec: ConvBn) -> Result<BatchNormOutput> {
    let cout = conv::check_shapes(x, w, spec.stride, spec.padding)?;
    check_channel_vec(gamma, cout, "conv2d_batch_norm_train gamma")?;
    check_channel_vec(beta, cout, "conv2d_batch_norm_train beta")?;
    let g = Geom::new(x.shape(), w.shape(), spec.stride, spec.padding)?;
    if let Some(r) = residual {
        if r.dims() != [g.n, cout, g.ho, g.wo] {
            bail!("conv2d_batch_norm_train: residual has shape {:?}, the output {:?}", r.dims(), [g.n, cout, g.ho, g.wo])
        }
    }
    let count = g.n * g.p();
    if count == 0 {
        bail!("conv2d_batch_norm_train: no values to take statistics over")
    }
    let all_fast = fast_path(x) && fast_path(w) && fast_path(gamma) && fast_path(beta) && residual.is_none_or(fast_path);
    if !all_fast {
        return unfused(x, w, gamma, beta, residual, spec);
    }
    // One parameter tensor so that the op, with the residual, has at most three inputs; the
    // concatenation's backward pass hands each parameter its slice of the gradient.
    let params = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
    let saved = Arc::new(OnceLock::new());
    let op = ConvBnTrain { spec, wdims: w.dims4()?, affine: false, saved: saved.clone() };
    let x = x.contiguous()?;
    let output = match residual {
        Some(r) => x.apply_op3(&params, &r.contiguous()?, op)?,
        None => x.apply_op2(&params, op)?,
    };
    let Some(sv) = saved.get() else {
        bail!("conv2d_batch_norm_train: the forward pass left no statistics")
    };
    let Some(st) = &sv.stats else {
        bail!("conv2d_batch_norm_train: the forward pass left no statistics")
    };
    let mean = cpu_tensor(st.mean.clone(), &[cout])?;
    let var = cpu_tensor(st.var.clone(), &[cout])?;
    Ok(BatchNormOutput { output, mean, var, count })
}

/// The same computation as separate ops.
fn unfused(x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor, residual: Option<&Tensor>, spec: ConvBn) -> Result<BatchNormOutput> {
    let z = super::conv2d(x, w, None, spec.stride, spec.padding)?;
    if residual.is_none() && spec.relu {
        return super::batch_norm_train_relu(&z, gamma, beta, spec.eps);
    }
    let mut out = super::batch_norm_train(&z, gamma, beta, spec.eps)?;
    if let Some(r) = residual {
        out.output = if spec.relu { super::add_relu(&out.output, r)? } else { (&out.output + r)? };
    }
    Ok(out)
}

/// What the forward pass keeps for the backward pass: the convolution's output (the batch
/// norm's input) and its statistics.
struct Saved {
    z: Vec<f32>,
    /// Batch statistics (training mode); none for a given per-channel affine map.
    stats: Option<Stats>,
}

struct ConvBnTrain {
    spec: ConvBn,
    wdims: (usize, usize, usize, usize),
    /// The parameters are (weight, scale, shift) of a fixed affine map (eval-mode batch norm)
    /// rather than (weight, gamma, beta) of a batch norm with batch statistics.
    affine: bool,
    saved: Arc<OnceLock<Saved>>,
}

impl ConvBnTrain {
    fn geom(&self, x: &Shape) -> Result<Geom> {
        Geom::new(x, &Shape::from(self.wdims), self.spec.stride, self.spec.padding)
    }

    fn wlen(&self) -> usize {
        let (a, b, c, d) = self.wdims;
        a * b * c * d
    }

    fn fwd(&self, x: (&CpuStorage, &Layout), p: (&CpuStorage, &Layout), r: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(x.1.shape())?;
        let xs = cpu_slice(x.0, x.1, "conv2d_batch_norm_train")?;
        let ps = cpu_slice(p.0, p.1, "conv2d_batch_norm_train")?;
        let rs = r.map(|(s, l)| cpu_slice(s, l, "conv2d_batch_norm_train")).transpose()?;
        let params = split_params(ps, self.wlen(), g.cout);
        let (z, stats, y) = if self.affine {
            let z = conv::forward(&g, xs, params.0, None);
            let y = affine_output(&g, &z, (params.1, params.2), self.spec.relu, rs);
            (z, None, y)
        } else {
            let (z, stats, y) = layer_forward(&g, xs, params, self.spec, rs);
            (z, Some(stats), y)
        };
        let _ = self.saved.set(Saved { z, stats });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    /// Gradients of `x`, the packed parameters and the residual.
    fn bwd(&self, x: &Tensor, p: &Tensor, r: Option<&Tensor>, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(sv) = self.saved.get() else {
            bail!("conv2d_batch_norm_train backward: the forward pass did not run on the CPU")
        };
        let g = self.geom(x.shape())?;
        // The gradient at the batch norm's output (and the residual's): dy where the output is
        // positive.
        let gt = if self.spec.relu { super::activation::relu_grad(y, dy)? } else { dy.contiguous()? };
        let needs = Needs { dx: x.track_op(), dw: p.track_op(), db: false };
        let (dx, dp) = with_f32(&gt, "conv2d_batch_norm_train backward", |gs| {
            with_f32(x, "conv2d_batch_norm_train backward", |xs| {
                with_f32(p, "conv2d_batch_norm_train backward", |ps| {
                    let params = split_params(ps, self.wlen(), g.cout);
                    match &sv.stats {
                        Some(st) => layer_backward(&g, xs, params, &sv.z, st, gs, needs),
                        None => affine_backward(&g, xs, params, &sv.z, gs, needs),
                    }
                })
            })
        })???;
        let dx = dx.map(|d| cpu_tensor(d, x.dims())).transpose()?;
        let dp = dp.map(|d| cpu_tensor(d, p.dims())).transpose()?;
        let dr = r.filter(|r| r.track_op()).map(|_| gt);
        Ok((dx, dp, dr))
    }
}

/// (conv weight, gamma, beta) of a packed parameter slice.
pub(super) fn split_params(ps: &[f32], wlen: usize, c: usize) -> (&[f32], &[f32], &[f32]) {
    (&ps[..wlen], &ps[wlen..wlen + c], &ps[wlen + c..wlen + 2 * c])
}

/// The forward pass of one conv -> BN (-> + residual) (-> ReLU) layer: the convolution's
/// output, its batch statistics and the layer's output.
pub(super) fn layer_forward(g: &Geom, xs: &[f32], (w, gamma, beta): (&[f32], &[f32], &[f32]), spec: ConvBn, rs: Option<&[f32]>) -> (Vec<f32>, Stats, Vec<f32>) {
    let z = conv::forward(g, xs, w, None);
    let (stats, scale, shift) = Stats::of_batch(&z, (g.n, g.cout, g.p()), gamma, beta, spec.eps);
    let y = affine_output(g, &z, (&scale, &shift), spec.relu, rs);
    (z, stats, y)
}

/// `relu?(z * scale + shift + residual?)` per channel, as the separate ops round it.
fn affine_output(g: &Geom, z: &[f32], (scale, shift): (&[f32], &[f32]), relu: bool, rs: Option<&[f32]>) -> Vec<f32> {
    let (c, s) = (g.cout, g.p());
    let mut y = vec![0f32; z.len()];
    match rs {
        None => for_planes_mut(&mut y, c, s, |ch, yp, i| affine_plane(&z[i * s..][..s], scale[ch], shift[ch], relu, yp)),
        Some(rs) => for_planes_mut(&mut y, c, s, |ch, yp, i| {
            let (zp, rp) = (&z[i * s..][..s], &rs[i * s..][..s]);
            let (sc, sh) = (scale[ch], shift[ch]);
            // The batch norm's output rounded to f32 first, then the add: as the two ops.
            for ((o, &v), &rv) in yp.iter_mut().zip(zp).zip(rp) {
                let bn = v * sc + sh;
                *o = if relu { (bn + rv).max(0.0) } else { bn + rv };
            }
        }),
    }
    y
}

/// The backward pass of one layer given `gs`, the gradient at the batch norm's output (ReLU
/// mask applied): the input gradient and the packed parameter gradient, as `needs` asks.
pub(super) fn layer_backward(g: &Geom, xs: &[f32], (w, gamma, _): (&[f32], &[f32], &[f32]), z: &[f32], st: &Stats, gs: &[f32], needs: Needs) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (c, s) = (g.cout, g.p());
    let m = (g.n * s) as f32;
    let sums = st.grad_sums(z, gs, (g.n, c, s));
    let (a, k2, mdb) = dx_coefficients(st, gamma, &sums, m);
    let row = |i: usize, co: usize, dst: &mut [f32]| {
        let o = (i * c + co) * s;
        let (a, k2, mdb, mu) = (a[co], k2[co], mdb[co], st.mean[co]);
        for ((d, &gv), &v) in dst.iter_mut().zip(&gs[o..o + s]).zip(&z[o..o + s]) {
            *d = a * (gv - mdb) - k2 * (v - mu);
        }
    };
    let grads = backward_rows(g, xs, w, &row, needs);
    let dp = grads.dw.map(|mut dp| {
        dp.extend(sums.iter().zip(&st.invstd).map(|(p, &is)| p.1 * is));
        dp.extend(sums.iter().map(|p| p.0));
        dp
    });
    (grads.dx, dp)
}

/// [`layer_backward`] for a fixed affine map `(w, scale, shift)`: the input gradient and the
/// packed (weight, scale, shift) gradient, arithmetic as `channel_affine`'s backward.
fn affine_backward(g: &Geom, xs: &[f32], (w, scale, _): (&[f32], &[f32], &[f32]), z: &[f32], gs: &[f32], needs: Needs) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (c, s) = (g.cout, g.p());
    let row = |i: usize, co: usize, dst: &mut [f32]| {
        let o = (i * c + co) * s;
        let sc = scale[co];
        for (d, &gv) in dst.iter_mut().zip(&gs[o..o + s]) {
            *d = gv * sc;
        }
    };
    let grads = backward_rows(g, xs, w, &row, needs);
    let dp = grads.dw.map(|mut dp| {
        let sums = grad_sums(z, gs, (g.n, c, s), |_| 0.0);
        dp.extend(sums.iter().map(|p| p.1));
        dp.extend(sums.iter().map(|p| p.0));
        dp
    });
    (grads.dx, dp)
}

/// `relu?(conv2d(x, w) * scale + shift + residual?)` with per-channel `scale` and `shift`
/// (C_out): a convolution followed by eval-mode batch norm (see
/// [`batch_norm_eval_affine`](super::batch_norm_eval_affine)) as one op, bit-identical to
/// `conv2d` -> `channel_affine` (-> `add_relu`). Gradients flow to all inputs; `spec.eps` is
/// not used.
pub fn conv2d_affine(x: &Tensor, w: &Tensor, scale: &Tensor, shift: &Tensor, residual: Option<&Tensor>, spec: ConvBn) -> Result<Tensor> {
    let cout = conv::check_shapes(x, w, spec.stride, spec.padding)?;
    check_channel_vec(scale, cout, "conv2d_affine scale")?;
    check_channel_vec(shift, cout, "conv2d_affine shift")?;
    let g = Geom::new(x.shape(), w.shape(), spec.stride, spec.padding)?;
    if let Some(r) = residual {
        if r.dims() != [g.n, cout, g.ho, g.wo] {
            bail!("conv2d_affine: residual has shape {:?}, the output {:?}", r.dims(), [g.n, cout, g.ho, g.wo])
        }
    }
    let all_fast = fast_path(x) && fast_path(w) && fast_path(scale) && fast_path(shift) && residual.is_none_or(fast_path);
    if !all_fast {
        let y = super::channel_affine(&super::conv2d(x, w, None, spec.stride, spec.padding)?, scale, shift)?;
        return match (residual, spec.relu) {
            (None, false) => Ok(y),
            (None, true) => super::relu(&y),
            (Some(r), false) => &y + r,
            (Some(r), true) => super::add_relu(&y, r),
        };
    }
    let params = Tensor::cat(&[&w.flatten_all()?, scale, shift], 0)?;
    let op = ConvBnTrain { spec, wdims: w.dims4()?, affine: true, saved: Arc::new(OnceLock::new()) };
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op3(&params, &r.contiguous()?, op),
        None => x.apply_op2(&params, op),
    }
}

impl CustomOp2 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "transferlab-conv2d-batch-norm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, p: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, _) = ConvBnTrain::bwd(self, x, p, None, y, dy)?;
        Ok((dx, dp))
    }
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "transferlab-conv2d-batch-norm-add-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, p: &Tensor, r: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        ConvBnTrain::bwd(self, x, p, Some(r), y, dy)
    }
}
