//! A whole ResNet basic block in training mode as one graph node:
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
//!
//! With one node per block, candle's backward pass zero-fills and adds into one
//! activation-sized gradient per block (the block input's) where the separate ops need five
//! fills and six adds; the intermediate gradients stay in this op's own buffers, and the block
//! input's two gradients (through the convolutions and through the shortcut) are summed here.
//! Arithmetic as [`conv2d_batch_norm_train`](super::conv2d_batch_norm_train) twice plus the
//! shortcut, so results are bit-identical to the separate ops.

use super::activation::{relu_grad_vec, relu_mask_in_place};
use super::conv::{Geom, Needs};
use super::conv_bn::{layer_backward, layer_forward, split_params, ConvBn};
use super::norm::{check_channel_vec, Stats};
use super::{cpu_slice, cpu_tensor, fast_path, with_f32, PAR_MIN};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// The shortcut of a basic block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// The block input itself (same channels and size as the output).
    Identity,
    /// He et al.'s option A: `x[:, :, ::2, ::2]` with this many zero channels on each side.
    SubsamplePad(usize),
}

/// The settings of [`basic_block_train`]: both convolutions are 3x3 with padding 1, the first
/// with `stride`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BasicBlock {
    /// Stride of the first convolution.
    pub stride: usize,
    /// How the block input reaches the output.
    pub shortcut: Shortcut,
    /// Batch norm's epsilon (PyTorch's default is 1e-5).
    pub eps: f64,
}

/// The parameters of a basic block: conv weights (no bias) and batch-norm affine parameters.
#[derive(Debug, Clone, Copy)]
pub struct BlockParams<'a> {
    pub conv1: &'a Tensor,
    pub gamma1: &'a Tensor,
    pub beta1: &'a Tensor,
    pub conv2: &'a Tensor,
    pub gamma2: &'a Tensor,
    pub beta2: &'a Tensor,
}

/// Batch statistics of one batch norm, for the caller's running averages.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Per-channel mean (C), without autograd history.
    pub mean: Tensor,
    /// Per-channel biased variance (C), without autograd history.
    pub var: Tensor,
    /// Values each channel's statistics were taken over.
    pub count: usize,
}

impl BatchStats {
    /// The unbiased variance, which PyTorch's running variance averages.
    pub fn unbiased_var(&self) -> Result<Tensor> {
        let m = self.count as f64;
        self.var.affine(if self.count > 1 { m / (m - 1.0) } else { 1.0 }, 0.0)
    }
}

/// What [`basic_block_train`] returns.
#[derive(Debug, Clone)]
pub struct BasicBlockOutput {
    /// The block's output.
    pub output: Tensor,
    /// Statistics of the first and second batch norm's inputs.
    pub bn: [BatchStats; 2],
}

/// A ResNet basic block in training mode (batch statistics), as one op on CPU `f32` tensors
/// and as the separate ops elsewhere. Values and gradients are bit-identical to
/// `conv2d_batch_norm_train(x, conv1, .., relu) -> conv2d_batch_norm_train(.., shortcut, relu)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use transferlab::kernels::{basic_block_train, BasicBlock, BlockParams, Shortcut};
/// let dev = Device::Cpu;
/// let x = Tensor::ones((2, 4, 6, 6), DType::F32, &dev)?;
/// let w = Tensor::ones((4, 4, 3, 3), DType::F32, &dev)?;
/// let (g, b) = (Tensor::ones(4, DType::F32, &dev)?, Tensor::zeros(4, DType::F32, &dev)?);
/// let p = BlockParams { conv1: &w, gamma1: &g, beta1: &b, conv2: &w, gamma2: &g, beta2: &b };
/// let spec = BasicBlock { stride: 1, shortcut: Shortcut::Identity, eps: 1e-5 };
/// let out = basic_block_train(&x, p, spec)?;
/// assert_eq!(out.output.dims(), &[2, 4, 6, 6]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn basic_block_train(x: &Tensor, p: BlockParams<'_>, spec: BasicBlock) -> Result<BasicBlockOutput> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, k1, k1b) = p.conv1.dims4()?;
    if wcin != cin || (k1, k1b) != (3, 3) {
        bail!("basic_block_train: conv1 has shape {:?}, expected [C_out, {cin}, 3, 3]", p.conv1.dims())
    }
    if p.conv2.dims() != [cout, cout, 3, 3] {
        bail!("basic_block_train: conv2 has shape {:?}, expected [{cout}, {cout}, 3, 3]", p.conv2.dims())
    }
    for (t, what) in [(p.gamma1, "gamma1"), (p.beta1, "beta1"), (p.gamma2, "gamma2"), (p.beta2, "beta2")] {
        check_channel_vec(t, cout, what)?;
    }
    if spec.stride == 0 {
        bail!("basic_block_train: stride must be at least 1")
    }
    if h == 0 || w == 0 || n == 0 {
        bail!("basic_block_train: empty input {:?}", x.dims())
    }
    let (ho, wo) = ((h - 1) / spec.stride + 1, (w - 1) / spec.stride + 1);
    match spec.shortcut {
        Shortcut::Identity if cin != cout || (ho, wo) != (h, w) => {
            bail!("basic_block_train: an identity shortcut needs the output shape of the input; {cin}x{h}x{w} -> {cout}x{ho}x{wo}")
        }
        Shortcut::SubsamplePad(pad) if cin + 2 * pad != cout || (ho, wo) != (h.div_ceil(2), w.div_ceil(2)) => {
            bail!("basic_block_train: option A with {pad} padding channels cannot map {cin}x{h}x{w} to {cout}x{ho}x{wo}")
        }
        _ => {}
    }
    let tensors = [x, p.conv1, p.gamma1, p.beta1, p.conv2, p.gamma2, p.beta2];
    if !tensors.iter().all(|t| fast_path(t)) {
        return unfused(x, p, spec);
    }
    let p1 = Tensor::cat(&[&p.conv1.flatten_all()?, p.gamma1, p.beta1], 0)?;
    let p2 = Tensor::cat(&[&p.conv2.flatten_all()?, p.gamma2, p.beta2], 0)?;
    let saved = Arc::new(OnceLock::new());
    let op = BlockOp { spec, cin, cout, saved: saved.clone() };
    let output = x.contiguous()?.apply_op3(&p1, &p2, op)?;
    let Some(sv) = saved.get() else {
        bail!("basic_block_train: the forward pass left no statistics")
    };
    let stats = |st: &Stats, count: usize| -> Result<BatchStats> {
        Ok(BatchStats { mean: cpu_tensor(st.mean.clone(), &[cout])?, var: cpu_tensor(st.var.clone(), &[cout])?, count })
    };
    Ok(BasicBlockOutput { output, bn: [stats(&sv.st1, n * ho * wo)?, stats(&sv.st2, n * ho * wo)?] })
}

/// The same block from separate ops (the fallback off the CPU).
fn unfused(x: &Tensor, p: BlockParams<'_>, spec: BasicBlock) -> Result<BasicBlockOutput> {
    let s1 = ConvBn { stride: spec.stride, padding: 1, eps: spec.eps, relu: true };
    let a = super::conv2d_batch_norm_train(x, p.conv1, p.gamma1, p.beta1, None, s1)?;
    let shortcut = match spec.shortcut {
        Shortcut::Identity => x.clone(),
        Shortcut::SubsamplePad(pad) => every_other(&every_other(x, 2)?, 3)?.pad_with_zeros(1, pad, pad)?,
    };
    let s2 = ConvBn { stride: 1, ..s1 };
    let b = super::conv2d_batch_norm_train(&a.output, p.conv2, p.gamma2, p.beta2, Some(&shortcut), s2)?;
    let stats = |o: &super::BatchNormOutput| BatchStats { mean: o.mean.clone(), var: o.var.clone(), count: o.count };
    Ok(BasicBlockOutput { bn: [stats(&a), stats(&b)], output: b.output })
}

/// Every other element along `dim`, from the first (the last one kept when the size is odd).
/// Reshape and narrow rather than `index_select`, whose backward pass in candle 0.11 fails on
/// some shapes.
fn every_other(x: &Tensor, dim: usize) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let t = if size % 2 == 1 { x.pad_with_zeros(dim, 0, 1)? } else { x.clone() };
    let mut shape = t.dims().to_vec();
    shape[dim] = size.div_ceil(2);
    shape.insert(dim + 1, 2);
    t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    z1: Vec<f32>,
    st1: Stats,
    h: Vec<f32>,
    z2: Vec<f32>,
    st2: Stats,
}

struct BlockOp {
    spec: BasicBlock,
    cin: usize,
    cout: usize,
    saved: Arc<OnceLock<Saved>>,
}

impl BlockOp {
    /// Geometries of the two convolutions for input shape `x`.
    fn geoms(&self, x: &Shape) -> Result<(Geom, Geom)> {
        let (cin, cout) = (self.cin, self.cout);
        let g1 = Geom::new(x, &Shape::from((cout, cin, 3, 3)), self.spec.stride, 1)?;
        let g2 = Geom::new(&Shape::from((g1.n, cout, g1.ho, g1.wo)), &Shape::from((cout, cout, 3, 3)), 1, 1)?;
        Ok((g1, g2))
    }

    fn layer_specs(&self) -> (ConvBn, ConvBn) {
        let s1 = ConvBn { stride: self.spec.stride, padding: 1, eps: self.spec.eps, relu: true };
        (s1, ConvBn { stride: 1, ..s1 })
    }

    fn wlens(&self) -> (usize, usize) {
        (self.cout * self.cin * 9, self.cout * self.cout * 9)
    }
}

/// `x[:, :, ::2, ::2]` with `pad` zero channels on each side, (N, cin + 2 pad, ho, wo).
fn subsample_pad(x: &[f32], (n, cin, h, w): (usize, usize, usize, usize), pad: usize, (ho, wo): (usize, usize)) -> Vec<f32> {
    let cout = cin + 2 * pad;
    let mut r = vec![0f32; n * cout * ho * wo];
    r.par_chunks_mut(cout * ho * wo).enumerate().for_each(|(i, rs)| {
        for c in 0..cin {
            let plane = &x[(i * cin + c) * h * w..][..h * w];
            let dst = &mut rs[(c + pad) * ho * wo..][..ho * wo];
            for oh in 0..ho {
                for ow in 0..wo {
                    dst[oh * wo + ow] = plane[2 * oh * w + 2 * ow];
                }
            }
        }
    });
    r
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "transferlab-basic-block-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = cpu_slice(s1, l1, "basic_block_train")?;
        let p1 = cpu_slice(s2, l2, "basic_block_train")?;
        let p2 = cpu_slice(s3, l3, "basic_block_train")?;
        let (g1, g2) = self.geoms(l1.shape())?;
        let (spec1, spec2) = self.layer_specs();
        let (wl1, wl2) = self.wlens();
        let (z1, st1, h) = layer_forward(&g1, xs, split_params(p1, wl1, self.cout), spec1, None);
        let r: Cow<[f32]> = match self.spec.shortcut {
            Shortcut::Identity => Cow::Borrowed(xs),
            Shortcut::SubsamplePad(pad) => Cow::Owned(subsample_pad(xs, l1.shape().dims4()?, pad, (g1.ho, g1.wo))),
        };
        let (z2, st2, y) = layer_forward(&g2, &h, split_params(p2, wl2, self.cout), spec2, Some(&r));
        let _ = self.saved.set(Saved { z1, st1, h, z2, st2 });
        Ok((CpuStorage::F32(y), Shape::from((g2.n, self.cout, g2.ho, g2.wo))))
    }

    fn bwd(&self, x: &Tensor, p1: &Tensor, p2: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(sv) = self.saved.get() else {
            bail!("basic_block_train backward: the forward pass did not run on the CPU")
        };
        if dy.dtype() != DType::F32 {
            bail!("basic_block_train backward: expected an f32 gradient")
        }
        let (g1, g2) = self.geoms(x.shape())?;
        let (wl1, wl2) = self.wlens();
        let dims = x.dims4()?;
        let (need_dx, need_p1, need_p2) = (x.track_op(), p1.track_op(), p2.track_op());
        let (dx, dp1, dp2) = with_f32(y, "basic_block_train backward", |ys| {
            with_f32(dy, "basic_block_train backward", |dys| {
                with_f32(x, "basic_block_train backward", |xs| {
                    with_f32(p1, "basic_block_train backward", |p1s| {
                        with_f32(p2, "basic_block_train backward", |p2s| {
                            // The gradient at the second batch norm's output and the shortcut's.
                            let gt2 = relu_grad_vec(ys, dys);
                            let need_h = need_dx || need_p1;
                            let needs2 = Needs { dx: need_h, dw: need_p2, db: false };
                            let (dh, dp2) = layer_backward(&g2, &sv.h, split_params(p2s, wl2, self.cout), &sv.z2, &sv.st2, &gt2, needs2);
                            let (mut dx, dp1) = match dh {
                                Some(mut dh) => {
                                    relu_mask_in_place(&sv.h, &mut dh);
                                    let needs1 = Needs { dx: need_dx, dw: need_p1, db: false };
                                    layer_backward(&g1, xs, split_params(p1s, wl1, self.cout), &sv.z1, &sv.st1, &dh, needs1)
                                }
                                None => (None, None),
                            };
                            if let Some(dx) = dx.as_mut() {
                                add_shortcut_grad(dx, &gt2, dims, self.spec.shortcut, (g1.ho, g1.wo));
                            }
                            (dx, dp1, dp2)
                        })
                    })
                })
            })
        })?????;
        let dx = dx.map(|d| cpu_tensor(d, x.dims())).transpose()?;
        let dp1 = dp1.map(|d| cpu_tensor(d, p1.dims())).transpose()?;
        let dp2 = dp2.map(|d| cpu_tensor(d, p2.dims())).transpose()?;
        Ok((dx, dp1, dp2))
    }
}

/// Adds the shortcut's share of the input gradient: `g` itself for the identity; for option A,
/// `g`'s inner channels at the subsampled positions and zero (added, as the separate ops add
/// it) elsewhere.
fn add_shortcut_grad(dx: &mut [f32], g: &[f32], (_, cin, h, w): (usize, usize, usize, usize), shortcut: Shortcut, (ho, wo): (usize, usize)) {
    match shortcut {
        Shortcut::Identity => dx.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).for_each(|(d, g)| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        }),
        Shortcut::SubsamplePad(pad) => {
            let cout = cin + 2 * pad;
            dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, d)| {
                let (i, c) = (plane / cin, plane % cin);
                let src = &g[(i * cout + c + pad) * ho * wo..][..ho * wo];
                for (r, row) in d.chunks_exact_mut(w).enumerate() {
                    for (col, v) in row.iter_mut().enumerate() {
                        let add = if r % 2 == 0 && col % 2 == 0 { src[(r / 2) * wo + col / 2] } else { 0.0 };
                        *v += add;
                    }
                }
            });
        }
    }
}
