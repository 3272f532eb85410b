//! A fully connected ReLU network on flattened images.

use super::layers::{relu, Linear};
use super::Body;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Hidden layers `layers.0`, `layers.1`, ... each Linear + ReLU.
#[derive(Debug)]
pub struct MlpBody {
    layers: Vec<Linear>,
    out_dim: usize,
}

impl MlpBody {
    pub fn new(input: (usize, usize, usize), hidden: &[usize], vb: VarBuilder) -> Result<Self> {
        let mut in_dim = input.0 * input.1 * input.2;
        let mut layers = Vec::new();
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(Linear::new(in_dim, h, vb.pp(format!("layers.{i}")))?);
            in_dim = h;
        }
        Ok(Self { layers, out_dim: in_dim })
    }
}

impl Body for MlpBody {
    fn features(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let mut h = x.flatten_from(1)?;
        for l in &self.layers {
            h = relu(&l.forward(&h)?)?;
        }
        Ok(h)
    }

    fn feature_dim(&self) -> usize {
        self.out_dim
    }
}
