//! A plain 3-layer CNN: the network of the training-speed benchmark, and a quick baseline.

use super::layers::{relu_max_pool2d, Conv2d};
use super::Body;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `conv1..conv3`: 3x3 convolutions (padding 1) at 32, 64, 128 channels, each followed by
/// ReLU and 2x2 max pooling; the head `fc` sees the flattened last feature map.
#[derive(Debug)]
pub struct SmallCnnBody {
    convs: Vec<Conv2d>,
    out_dim: usize,
}

impl SmallCnnBody {
    pub fn new(input: (usize, usize, usize), vb: VarBuilder) -> Result<Self> {
        let (mut c, mut h, mut w) = input;
        let mut convs = Vec::new();
        for (i, width) in [32, 64, 128].into_iter().enumerate() {
            convs.push(Conv2d::new(c, width, 3, 1, 1, true, vb.pp(format!("conv{}", i + 1)))?);
            c = width;
            h /= 2;
            w /= 2;
        }
        Ok(Self { convs, out_dim: c * h * w })
    }
}

impl Body for SmallCnnBody {
    fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = relu_max_pool2d(&conv.forward(&h)?, 2)?;
        }
        h.flatten_from(1)
    }

    fn feature_dim(&self) -> usize {
        self.out_dim
    }
}
