//! Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks")
//! for 32x32 images, the default model of BackdoorBench.

use super::layers::{global_avg_pool, BatchNorm, Conv2d};
use super::Body;
use crate::error::Result;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 3x3, added to the shortcut: the identity, or a
/// 1x1 convolution (`shortcut.0`) of the pre-activated input where the shape changes.
#[derive(Debug)]
struct PreActBlock {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl PreActBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || in_planes != planes {
            Some(Conv2d::new(in_planes, planes, 1, stride, 0, false, vb.pp("shortcut.0"))?)
        } else {
            None
        };
        Ok(Self {
            bn1: BatchNorm::new(in_planes, vb.pp("bn1"))?,
            conv1: Conv2d::new(in_planes, planes, 3, stride, 1, false, vb.pp("conv1"))?,
            bn2: BatchNorm::new(planes, vb.pp("bn2"))?,
            conv2: Conv2d::new(planes, planes, 3, 1, 1, false, vb.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let pre = self.bn1.forward_relu(x, train)?;
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(&pre)?,
            None => x.clone(),
        };
        let out = self.conv1.forward(&pre)?;
        let out = self.conv2.forward(&self.bn2.forward_relu(&out, train)?)?;
        out + shortcut
    }
}

/// `conv1` 3x3 (64) -> `layer1..4` of two pre-activation blocks at 64, 128, 256, 512 channels
/// (strides 1, 2, 2, 2) -> global (adaptive) average pool: 512 features, head `linear`.
///
/// Follows kuangliu/pytorch-cifar and BackdoorBench, which end the body without the final
/// BN + ReLU of the paper's pre-activation design: their checkpoints have no such tensors,
/// and the last block's output goes straight to the pooling.
#[derive(Debug)]
pub struct PreActResNet18Body {
    conv1: Conv2d,
    blocks: Vec<PreActBlock>,
}

impl PreActResNet18Body {
    /// For images with `in_channels` channels.
    pub fn new(in_channels: usize, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::with_capacity(8);
        let mut in_planes = 64;
        for (stage, (planes, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().enumerate() {
            for i in 0..2 {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(PreActBlock::new(in_planes, planes, s, vb.pp(format!("layer{}.{i}", stage + 1)))?);
                in_planes = planes;
            }
        }
        Ok(Self { conv1: Conv2d::new(in_channels, 64, 3, 1, 1, false, vb.pp("conv1"))?, blocks })
    }
}

impl PreActResNet18Body {
    fn run(&self, x: &Tensor, train: bool, keep: bool) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let h = self.conv1.forward(x)?;
        let (h, stages) = super::run_stages(&self.blocks, h, &[2, 4, 6, 8], keep, |b, h| b.forward_t(h, train))?;
        Ok((global_avg_pool(&h)?, stages))
    }
}

impl Body for PreActResNet18Body {
    fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.run(x, train, false)?.0)
    }

    fn features_and_stages(&self, x: &Tensor, train: bool) -> candle_core::Result<Option<(Tensor, Vec<Tensor>)>> {
        self.run(x, train, true).map(Some)
    }

    fn feature_dim(&self) -> usize {
        512
    }
}
