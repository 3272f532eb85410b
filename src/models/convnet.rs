//! The ConvNet of the dataset-distillation papers (Zhao et al. 2021, and DOORPING after it).

use super::layers::{avg_pool2d, relu, BatchNorm, Conv2d, InstanceNorm};
use super::spec::Norm;
use super::Body;
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug)]
enum NormLayer {
    Instance(InstanceNorm),
    Batch(BatchNorm),
    None,
}

/// `depth` blocks of 3x3 conv (padding 1) -> norm -> ReLU -> 2x2 average pooling, names
/// `features.{4i}` (conv) and `features.{4i+1}` (norm; ReLU and pooling follow) as in the reference `nn.Sequential`.
#[derive(Debug)]
pub struct ConvNetBody {
    blocks: Vec<(Conv2d, NormLayer)>,
    out_dim: usize,
}

impl ConvNetBody {
    pub fn new(input: (usize, usize, usize), width: usize, depth: usize, norm: Norm, vb: VarBuilder) -> Result<Self> {
        let (mut c, mut h, mut w) = input;
        let mut blocks = Vec::new();
        for d in 0..depth {
            let conv = Conv2d::new(c, width, 3, 1, 1, true, vb.pp(format!("features.{}", 4 * d)))?;
            let nvb = vb.pp(format!("features.{}", 4 * d + 1));
            let norm = match norm {
                Norm::Instance => NormLayer::Instance(InstanceNorm::new(width, nvb)?),
                Norm::Batch => NormLayer::Batch(BatchNorm::new(width, nvb)?),
                Norm::None => NormLayer::None,
            };
            blocks.push((conv, norm));
            c = width;
            h /= 2;
            w /= 2;
        }
        Ok(Self { blocks, out_dim: c * h * w })
    }
}

impl ConvNetBody {
    /// Every block is a stage.
    fn run(&self, x: &Tensor, train: bool, keep: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let ends: Vec<usize> = (1..=self.blocks.len()).collect();
        let (h, stages) = super::run_stages(&self.blocks, x.clone(), &ends, keep, |(conv, norm), h| {
            let h = conv.forward(h)?;
            let h = match norm {
                NormLayer::Instance(n) => n.forward(&h)?,
                NormLayer::Batch(n) => n.forward_t(&h, train)?,
                NormLayer::None => h,
            };
            avg_pool2d(&relu(&h)?, 2)
        })?;
        Ok((h.flatten_from(1)?, stages))
    }
}

impl Body for ConvNetBody {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.run(x, train, false)?.0)
    }

    fn features_and_stages(&self, x: &Tensor, train: bool) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        self.run(x, train, true).map(Some)
    }

    fn feature_dim(&self) -> usize {
        self.out_dim
    }
}
