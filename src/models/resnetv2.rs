//! Pre-activation ResNet v2 with GroupNorm and weight standardisation: the BiT architecture
//! (Kolesnikov et al. 2020, "Big Transfer"), with timm's `resnetv2_*_bit` parameter names.
//!
//! Names, as in timm's `resnetv2.py`: `stem.conv.weight`;
//! `stages.{s}.blocks.{b}.{norm1,conv1,norm2,conv2,norm3,conv3}.*`, the first block of each
//! stage with `downsample.conv.weight`; the final `norm.*`; head `head.fc.*`. Convolutions have
//! no bias. timm's head is a 1x1 convolution (`head.fc.weight` [K, F, 1, 1]); ours is a linear
//! layer with the same numbers as [K, F], so a timm checkpoint needs that one reshape.

use super::Body;
use crate::error::Result;
use crate::kernels;
use candle_core::{Module, Tensor};
use candle_nn::{GroupNorm, Init, VarBuilder};

/// BiT's weight-standardisation epsilon (timm's `partial(StdConv2d, eps=1e-8)` for `_bit`).
const WS_EPS: f64 = 1e-8;
/// GroupNorm epsilon (PyTorch's default).
const GN_EPS: f64 = 1e-5;

/// A convolution whose kernel is standardised (zero mean, unit variance over each output
/// channel's fan-in, biased variance) before every use, as timm's `StdConv2d`. Padding is
/// timm's symmetric `((stride - 1) + (kernel - 1)) / 2`.
#[derive(Debug, Clone)]
struct StdConv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl StdConv2d {
    fn new(in_c: usize, out_c: usize, kernel: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints((out_c, in_c, kernel, kernel), "weight", Init::Const(0.0))?;
        Ok(Self { weight, stride, padding: ((stride - 1) + (kernel - 1)) / 2 })
    }

    fn standardised(&self) -> candle_core::Result<Tensor> {
        let dims = self.weight.dims().to_vec();
        let flat = self.weight.flatten_from(1)?;
        let mean = flat.mean_keepdim(1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        centred.broadcast_div(&(var + WS_EPS)?.sqrt()?)?.reshape(dims)
    }
}

impl Module for StdConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d(x, &self.standardised()?, None, self.stride, self.padding)
    }
}

/// GroupNorm followed by ReLU (timm's `GroupNormAct`).
#[derive(Debug, Clone)]
struct GroupNormAct {
    inner: GroupNorm,
}

impl GroupNormAct {
    fn new(groups: usize, channels: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { inner: candle_nn::group_norm(groups.min(channels), channels, GN_EPS, vb)? })
    }
}

impl Module for GroupNormAct {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::relu(&self.inner.forward(x)?)
    }
}

/// timm's `PreActBottleneck`: norm1 -> (shortcut projection from the pre-activation) ->
/// conv1 1x1 -> norm2 -> conv2 3x3 (the stride) -> norm3 -> conv3 1x1, plus the shortcut.
#[derive(Debug)]
struct PreActBottleneck {
    norm1: GroupNormAct,
    conv1: StdConv2d,
    norm2: GroupNormAct,
    conv2: StdConv2d,
    norm3: GroupNormAct,
    conv3: StdConv2d,
    downsample: Option<StdConv2d>,
}

impl PreActBottleneck {
    fn new(in_c: usize, out_c: usize, stride: usize, project: bool, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let mid = out_c / 4;
        Ok(Self {
            norm1: GroupNormAct::new(groups, in_c, vb.pp("norm1"))?,
            conv1: StdConv2d::new(in_c, mid, 1, 1, vb.pp("conv1"))?,
            norm2: GroupNormAct::new(groups, mid, vb.pp("norm2"))?,
            conv2: StdConv2d::new(mid, mid, 3, stride, vb.pp("conv2"))?,
            norm3: GroupNormAct::new(groups, mid, vb.pp("norm3"))?,
            conv3: StdConv2d::new(mid, out_c, 1, 1, vb.pp("conv3"))?,
            downsample: if project { Some(StdConv2d::new(in_c, out_c, 1, stride, vb.pp("downsample.conv"))?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pre = self.norm1.forward(x)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(&pre)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&pre)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?)?;
        let h = self.conv3.forward(&self.norm3.forward(&h)?)?;
        h + shortcut
    }
}

/// The ResNetV2 body: `stem.conv` 7x7/2 (weight-standardised, no norm: pre-activation) ->
/// BiT's "fixed" stem pooling (zero-pad 1, then 3x3/2 max pool without padding) -> four
/// stages of pre-activation bottlenecks (strides 1, 2, 2, 2, the first block of each stage
/// projecting its shortcut) -> `norm` (GroupNorm + ReLU) -> global average pool.
///
/// `resnetv2_50x1_bit` is stem 64, stage widths 256/512/1024/2048, depths 3/4/6/3, 32 groups;
/// with 1000 classes it has 25,549,352 parameters, as timm's.
#[derive(Debug)]
pub struct ResNetV2Body {
    stem: StdConv2d,
    blocks: Vec<PreActBottleneck>,
    norm: GroupNormAct,
    out_dim: usize,
}

impl ResNetV2Body {
    /// A body for images with `in_channels` channels: `stem` stem channels, stage output
    /// `widths` and `depths`, `groups` GroupNorm groups (fewer when a layer has fewer channels).
    pub fn new(in_channels: usize, stem: usize, widths: &[usize], depths: &[usize], groups: usize, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut in_c = stem;
        for (s, (&w, &d)) in widths.iter().zip(depths).enumerate() {
            for b in 0..d {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(PreActBottleneck::new(in_c, w, stride, b == 0, groups, vb.pp(format!("stages.{s}.blocks.{b}")))?);
                in_c = w;
            }
        }
        Ok(Self {
            stem: StdConv2d::new(in_channels, stem, 7, 2, vb.pp("stem.conv"))?,
            blocks,
            norm: GroupNormAct::new(groups, in_c, vb.pp("norm"))?,
            out_dim: in_c,
        })
    }
}

impl Body for ResNetV2Body {
    fn features(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let h = self.stem.forward(x)?;
        // BiT pads with zeros (not -inf) before pooling; the stem output has no ReLU, so the
        // zeros can win a window, as in timm's `ConstantPad2d(1, 0.)`.
        let h = h.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut h = kernels::max_pool2d(&h, 3, 2, 0)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.norm.forward(&h)?.mean((2, 3))
    }

    fn feature_dim(&self) -> usize {
        self.out_dim
    }
}
