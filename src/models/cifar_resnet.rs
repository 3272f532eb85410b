//! He et al. (2016) ResNets for 32x32 images: ResNet-20/32/44/56 with option-A shortcuts.

use super::layers::{basic_block, conv_bn, global_avg_pool, subsample2d, BatchNorm, Conv2d};
use crate::kernels::Shortcut;
use super::Body;
use crate::error::{Error, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// Two 3x3 convolutions with batch norm; the shortcut is the identity or, where the block
/// halves the resolution and doubles the channels, the parameter-free option A.
#[derive(Debug)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    /// Channels of zeros added on each side of the subsampled input (option A), if any.
    shortcut_pad: Option<usize>,
}

impl BasicBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut_pad = (stride != 1 || in_planes != planes).then_some(planes / 4);
        if shortcut_pad.is_some() && in_planes + 2 * (planes / 4) != planes {
            return Err(Error::invalid("CIFAR ResNet block", format!("option-A shortcut cannot map {in_planes} to {planes} channels")));
        }
        Ok(Self {
            conv1: Conv2d::new(in_planes, planes, 3, stride, 1, false, vb.pp("conv1"))?,
            bn1: BatchNorm::new(planes, vb.pp("bn1"))?,
            conv2: Conv2d::new(planes, planes, 3, 1, 1, false, vb.pp("conv2"))?,
            bn2: BatchNorm::new(planes, vb.pp("bn2"))?,
            shortcut_pad,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let kind = match self.shortcut_pad {
            Some(pad) => Shortcut::SubsamplePad(pad),
            None => Shortcut::Identity,
        };
        // The reference subsamples by 2 whatever the stride: the two only differ in blocks it
        // never builds.
        let pad = self.shortcut_pad.unwrap_or(0);
        let shortcut_of = |x: &Tensor| subsample2d(x, 2)?.pad_with_zeros(1, pad, pad);
        basic_block(x, [&self.conv1, &self.conv2], [&self.bn1, &self.bn2], kind, train, shortcut_of)
    }
}

/// `conv1` 3x3 (16) -> `bn1` -> ReLU -> `layer1..3` of n = (depth - 2) / 6 blocks at 16, 32, 64
/// channels (strides 1, 2, 2) -> global average pool: 64 features, head `linear`.
///
/// Names and forward pass as the widely used PyTorch reference (akamaster/pytorch_resnet_cifar10);
/// ResNet-20 with 10 classes has 269,722 trainable parameters.
#[derive(Debug)]
pub struct CifarResNetBody {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<BasicBlock>,
}

impl CifarResNetBody {
    /// `depth` = 6n + 2 (20, 32, 44, 56, 110, ...), `in_channels` of the images.
    pub fn new(in_channels: usize, depth: usize, vb: VarBuilder) -> Result<Self> {
        if depth < 8 || (depth - 2) % 6 != 0 {
            return Err(Error::invalid("CIFAR ResNet depth", format!("{depth}; it must be 6n+2 (20, 32, 44, 56, ...)")));
        }
        let n = (depth - 2) / 6;
        let mut blocks = Vec::with_capacity(3 * n);
        let mut in_planes = 16;
        for (stage, (planes, stride)) in [(16, 1), (32, 2), (64, 2)].into_iter().enumerate() {
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(in_planes, planes, s, vb.pp(format!("layer{}.{i}", stage + 1)))?);
                in_planes = planes;
            }
        }
        Ok(Self {
            conv1: Conv2d::new(in_channels, 16, 3, 1, 1, false, vb.pp("conv1"))?,
            bn1: BatchNorm::new(16, vb.pp("bn1"))?,
            blocks,
        })
    }
}

impl CifarResNetBody {
    fn run(&self, x: &Tensor, train: bool, keep: bool) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let h = conv_bn(&self.conv1, &self.bn1, x, train, true, None)?;
        let n = self.blocks.len() / 3;
        let (h, stages) = super::run_stages(&self.blocks, h, &[n, 2 * n, 3 * n], keep, |b, h| b.forward_t(h, train))?;
        Ok((global_avg_pool(&h)?, stages))
    }
}

impl Body for CifarResNetBody {
    fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.run(x, train, false)?.0)
    }

    fn features_and_stages(&self, x: &Tensor, train: bool) -> candle_core::Result<Option<(Tensor, Vec<Tensor>)>> {
        self.run(x, train, true).map(Some)
    }

    fn feature_dim(&self) -> usize {
        64
    }
}
