//! The LeNet-style CNN of the BadNets MNIST experiments (Gu et al. 2017).

use super::layers::{avg_pool2d, relu, Conv2d, Linear};
use super::Body;
use crate::error::{Error, Result};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// conv 5x5 (16) -> ReLU -> 2x2 average pool -> conv 5x5 (32) -> ReLU -> 2x2 average pool ->
/// flatten -> fc 512 -> ReLU. Names `conv1`, `conv2`, `fc1` (the head is `fc2`).
///
/// The common PyTorch re-implementations wrap each stage in an `nn.Sequential`, which puts
/// a `.0` after each of these names in their state dicts; a name map bridges the two.
#[derive(Debug)]
pub struct BadNetsCnnBody {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
}

/// Width of the penultimate layer.
const HIDDEN: usize = 512;

impl BadNetsCnnBody {
    /// For `input` = (channels, height, width); 28x28 (MNIST) flattens to 32 x 4 x 4 = 512,
    /// 32x32 (CIFAR, GTSRB) to 32 x 5 x 5 = 800.
    pub fn new(input: (usize, usize, usize), vb: VarBuilder) -> Result<Self> {
        let (c, h, w) = input;
        // Each stage: a valid 5x5 convolution (-4), then halving with floor.
        let stage = |s: usize| s.checked_sub(4).map(|s| s / 2).filter(|&s| s > 0);
        let out_hw = stage(h).and_then(stage).zip(stage(w).and_then(stage));
        let (h2, w2) = out_hw.ok_or_else(|| {
            Error::invalid("input shape", format!("{input:?} is too small for the BadNets CNN: at least 16x16 is needed"))
        })?;
        Ok(Self {
            conv1: Conv2d::new(c, 16, 5, 1, 0, true, vb.pp("conv1"))?,
            conv2: Conv2d::new(16, 32, 5, 1, 0, true, vb.pp("conv2"))?,
            fc1: Linear::new(32 * h2 * w2, HIDDEN, vb.pp("fc1"))?,
        })
    }
}

impl Body for BadNetsCnnBody {
    fn features(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let h = avg_pool2d(&relu(&self.conv1.forward(x)?)?, 2)?;
        let h = avg_pool2d(&relu(&self.conv2.forward(&h)?)?, 2)?;
        relu(&self.fc1.forward(&h.flatten_from(1)?)?)
    }

    fn feature_dim(&self) -> usize {
        HIDDEN
    }
}
