//! torchvision's ImageNet ResNets: ResNet-18 (basic blocks) and ResNet-50 (bottlenecks).

use super::layers::{add_relu, global_avg_pool, max_pool2d_padded, BatchNorm, Conv2d};
use super::Body;
use crate::error::Result;
use candle_core::{Module, ModuleT, Tensor};
use candle_nn::VarBuilder;

/// Which residual block a ResNet stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1 -> 3x3 -> 1x1 (ResNet-50/101/152), expansion 4, stride on the 3x3 convolution
    /// (torchvision's "ResNet v1.5").
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The projection shortcut: 1x1 conv (`downsample.0`) + BN (`downsample.1`).
#[derive(Debug)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

#[derive(Debug)]
struct Block {
    /// (conv, bn) pairs, named `conv{i+1}` / `bn{i+1}`; ReLU after all but the last.
    layers: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(kind: BlockKind, in_planes: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let out = planes * kind.expansion();
        // (in, out, kernel, stride, padding) of each convolution.
        let convs = match kind {
            BlockKind::Basic => vec![(in_planes, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => {
                vec![(in_planes, planes, 1, 1, 0), (planes, planes, 3, stride, 1), (planes, out, 1, 1, 0)]
            }
        };
        let layers = convs
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s, p))| {
                Ok((
                    Conv2d::new(ci, co, k, s, p, false, vb.pp(format!("conv{}", i + 1)))?,
                    BatchNorm::new(co, vb.pp(format!("bn{}", i + 1)))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || in_planes != out {
            Some(Downsample {
                conv: Conv2d::new(in_planes, out, 1, stride, 0, false, vb.pp("downsample.0"))?,
                bn: BatchNorm::new(out, vb.pp("downsample.1"))?,
            })
        } else {
            None
        };
        Ok(Self { layers, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, (conv, bn)) in self.layers.iter().enumerate() {
            let z = conv.forward(&h)?;
            h = if i < last { bn.forward_relu(&z, train)? } else { bn.forward_t(&z, train)? };
        }
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward_t(&d.conv.forward(x)?, train)?,
            None => x.clone(),
        };
        add_relu(&h, &shortcut)
    }
}

/// `conv1` 7x7/2 (64) -> `bn1` -> ReLU -> max pool 3x3/2 -> `layer1..4` at 64, 128, 256, 512
/// planes (strides 1, 2, 2, 2) -> global average pool; head `fc`. Names as torchvision, so its
/// ImageNet checkpoints load unchanged. With 1000 classes ResNet-18 has 11,689,512 parameters
/// and ResNet-50 25,557,032.
#[derive(Debug)]
pub struct ResNetBody {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<Block>,
    /// The number of blocks up to the end of each stage.
    stage_ends: Vec<usize>,
    out_dim: usize,
}

impl ResNetBody {
    /// `blocks_per_stage` of `kind` ([2, 2, 2, 2] basic for ResNet-18, [3, 4, 6, 3] bottleneck
    /// for ResNet-50), for images with `in_channels` channels.
    pub fn new(in_channels: usize, kind: BlockKind, blocks_per_stage: [usize; 4], vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut in_planes = 64;
        let stages = [(64, 1), (128, 2), (256, 2), (512, 2)];
        for (stage, ((planes, stride), n)) in stages.into_iter().zip(blocks_per_stage).enumerate() {
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(Block::new(kind, in_planes, planes, s, vb.pp(format!("layer{}.{i}", stage + 1)))?);
                in_planes = planes * kind.expansion();
            }
        }
        Ok(Self {
            conv1: Conv2d::new(in_channels, 64, 7, 2, 3, false, vb.pp("conv1"))?,
            bn1: BatchNorm::new(64, vb.pp("bn1"))?,
            stage_ends: blocks_per_stage.iter().scan(0, |end, n| {
                *end += n;
                Some(*end)
            }).collect(),
            blocks,
            out_dim: in_planes,
        })
    }
}

impl ResNetBody {
    fn run(&self, x: &Tensor, train: bool, keep: bool) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let h = self.bn1.forward_relu(&self.conv1.forward(x)?, train)?;
        let h = max_pool2d_padded(&h, 3, 2, 1)?;
        let (h, stages) = super::run_stages(&self.blocks, h, &self.stage_ends, keep, |b, h| b.forward_t(h, train))?;
        Ok((global_avg_pool(&h)?, stages))
    }
}

impl Body for ResNetBody {
    fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.run(x, train, false)?.0)
    }

    fn features_and_stages(&self, x: &Tensor, train: bool) -> candle_core::Result<Option<(Tensor, Vec<Tensor>)>> {
        self.run(x, train, true).map(Some)
    }

    fn feature_dim(&self) -> usize {
        self.out_dim
    }
}
