//! The Input-aware dynamic attack's generator network: an encoder-decoder that maps an image
//! to an image-sized output. One instance draws the trigger pattern (as many channels as the
//! image), another the mask that says where the pattern replaces the image (one channel).

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::init::{initialise, InitScheme};
use super::trigger_generator::map_images;
use crate::models::layers::{conv_bn, max_pool2d, BatchNorm, Conv2d};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

/// Nguyen & Tran's generator (`networks/models.py` of the authors' code, kept by
/// BackdoorBench): `depth` down stages of two 3x3 convolution blocks and a 2x2 max-pool (the
/// first `width` channels wide, doubling per stage), a middle block, then `depth` up stages of
/// a 2x upsampling and two blocks, halving the channels back to `out_channels`; every block is
/// convolution, batch norm and ReLU, the last without ReLU. Authors: width 32 and depth 3 on
/// 32x32 images, 16 and 2 on MNIST.
///
/// Deviations: the upsampling is nearest-neighbour, not bilinear (candle has no bilinear
/// gradient; the two 3x3 blocks after it smooth it); the convolutions have no bias (batch norm
/// right after cancels a bias exactly), so that each block is one fused op; batch-norm momentum
/// 0.1 (authors: 0.05).
pub struct InputAwareGenerator {
    varmap: VarMap,
    layers: Vec<Layer>,
    in_channels: usize,
    out_channels: usize,
    width: usize,
    depth: usize,
}

enum Layer {
    Block { conv: Conv2d, norm: BatchNorm, relu: bool },
    Down,
    Up,
}

impl std::fmt::Debug for InputAwareGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputAwareGenerator {{ {} -> {} channels, width {}, depth {} }}", self.in_channels, self.out_channels, self.width, self.depth)
    }
}

/// Keeps tanh's output strictly inside (0, 1), as the authors' `/ (2 + EPSILON) + 0.5`.
const EPSILON: f64 = 1e-7;

impl InputAwareGenerator {
    /// A generator for images of `shape` with `out_channels` output maps, initialised as
    /// PyTorch initialises its layers, from `seed`.
    pub fn new(shape: (usize, usize, usize), out_channels: usize, width: usize, depth: usize, seed: u64, device: &Device) -> Result<Self> {
        let (c, h, w) = shape;
        if width == 0 || depth == 0 || out_channels == 0 || h % (1 << depth) != 0 || w % (1 << depth) != 0 {
            return Err(Error::invalid(
                "Input-aware generator",
                format!(
                    "images {shape:?} at width {width}, depth {depth}: each of the depth stages halves the side, so the sides must divide by 2^depth (authors: depth 3 on 32x32, 2 on 28x28), with a width of at least 1 (authors: 32)"
                ),
            ));
        }
        let varmap = VarMap::new();
        let layers = Self::declare(&varmap, (c, out_channels, width, depth), device)?;
        initialise(&varmap, InitScheme::TorchDefault, seed, "")?;
        Ok(Self { varmap, layers, in_channels: c, out_channels, width, depth })
    }

    /// Declare every parameter in `varmap` (a name already there is reused) and build the
    /// layers on them.
    fn declare(varmap: &VarMap, (c, out, width, depth): (usize, usize, usize, usize), device: &Device) -> Result<Vec<Layer>> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let mut layers = Vec::new();
        let mut n = 0;
        let mut block = |layers: &mut Vec<Layer>, cin: usize, cout: usize, relu: bool| -> Result<()> {
            let p = vb.pp(format!("block{n}"));
            layers.push(Layer::Block { conv: Conv2d::new(cin, cout, 3, 1, 1, false, p.pp("conv"))?, norm: BatchNorm::new(cout, p.pp("norm"))?, relu });
            n += 1;
            Ok(())
        };
        let (mut current, mut next) = (c, width);
        for stage in 0..depth {
            block(&mut layers, current, next, true)?;
            block(&mut layers, next, next, true)?;
            layers.push(Layer::Down);
            current = next;
            if stage + 1 < depth {
                next *= 2;
            }
        }
        block(&mut layers, current, current, true)?;
        for stage in 0..depth {
            let last = stage + 1 == depth;
            let cout = if last { out } else { current / 2 };
            layers.push(Layer::Up);
            block(&mut layers, current, current, true)?;
            block(&mut layers, current, cout, !last)?;
            current = cout;
        }
        Ok(layers)
    }

    /// The network's output mapped into (0, 1): `tanh(y) / (2 + 1e-7) + 0.5`. As the pattern
    /// generator's output, this is the trigger pattern in pixel space. `train` selects batch
    /// statistics in the batch norms (and updates the running ones).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = match layer {
                Layer::Block { conv, norm, relu } => conv_bn(conv, norm, &y, train, *relu, None)?,
                Layer::Down => max_pool2d(&y, 2)?,
                Layer::Up => {
                    let (_, _, h, w) = y.dims4()?;
                    y.upsample_nearest2d(2 * h, 2 * w)?
                }
            };
        }
        Ok(((y.tanh()? / (2.0 + EPSILON))? + 0.5)?)
    }

    /// The mask generator's output: [`Self::forward`] sharpened around 0.5 by the authors'
    /// `tanh(20 m - 10) / (2 + 1e-7) + 0.5`, so that most pixels are nearly 0 or 1.
    pub fn mask(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let m = self.forward(x, train)?;
        Ok(((((m * 20.0)? - 10.0)?.tanh()? / (2.0 + EPSILON))? + 0.5)?)
    }

    /// The channels of the images this generator reads.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The generator's output for every image of `ds`, in batches, without recording a graph,
    /// in eval mode: a dataset of the outputs (`mask = true`: [`Self::mask`]), labels kept.
    pub fn outputs(&self, ds: &Dataset, mask: bool, device: &Device) -> Result<Dataset> {
        if ds.shape.0 != self.in_channels {
            return Err(Error::invalid("Input-aware generator", format!("it was built for {} channels; the data have {}", self.in_channels, ds.shape.0)));
        }
        map_images(ds, self.out_channels, device, |x| if mask { self.mask(x, false) } else { self.forward(x, false) })
    }

    /// The trainable parameters, by name (the batch norms' running statistics are not).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut vars: Vec<(String, Var)> = data.iter().filter(|(k, _)| !k.contains(".running_")).map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}
