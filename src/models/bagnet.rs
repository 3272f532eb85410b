//! A bag-of-local-features network (after BagNet, Brendel & Bethge, ICLR 2019): the texture
//! prior of "Combining Diverse Feature Priors" (Jain et al. 2022).

use super::layers::{global_avg_pool, relu, Conv2d};
use super::Body;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `patch.0`: a `patch` x `patch` convolution without padding; `patch.1..=depth`: 1x1
/// convolutions; ReLU after each; then global average pooling. Because the head is linear,
/// its logits are the average of the per-patch logits, as in BagNet.
#[derive(Debug)]
pub struct BagNetBody {
    convs: Vec<Conv2d>,
    width: usize,
}

impl BagNetBody {
    pub fn new(in_channels: usize, width: usize, depth: usize, patch: usize, vb: VarBuilder) -> Result<Self> {
        let mut convs = vec![Conv2d::new(in_channels, width, patch, 1, 0, true, vb.pp("patch.0"))?];
        for i in 1..=depth {
            convs.push(Conv2d::new(width, width, 1, 1, 0, true, vb.pp(format!("patch.{i}")))?);
        }
        Ok(Self { convs, width })
    }
}

impl Body for BagNetBody {
    fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = relu(&conv.forward(&h)?)?;
        }
        global_avg_pool(&h)
    }

    fn feature_dim(&self) -> usize {
        self.width
    }
}
