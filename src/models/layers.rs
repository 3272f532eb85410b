//! The building blocks every architecture is made of.
//!
//! Architectures call these instead of candle-nn directly so that one place decides how a
//! convolution, a normalisation or a pooling is computed (and can swap in faster CPU kernels).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNormConfig, Conv2dConfig, VarBuilder};

/// A 2-D convolution with PyTorch's parameter names (`weight`, optional `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

impl Conv2d {
    /// `in_c -> out_c` channels, square `kernel`, given stride and padding.
    pub fn new(in_c: usize, out_c: usize, kernel: usize, stride: usize, padding: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig { stride, padding, ..Default::default() };
        let inner = if bias {
            candle_nn::conv2d(in_c, out_c, kernel, cfg, vb)?
        } else {
            candle_nn::conv2d_no_bias(in_c, out_c, kernel, cfg, vb)?
        };
        Ok(Self { inner })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// Batch normalisation over channels: batch statistics and running-average updates in
/// training mode, running statistics in eval mode. PyTorch's names and defaults
/// (`weight`, `bias`, `running_mean`, `running_var`; eps 1e-5, momentum 0.1).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    inner: candle_nn::BatchNorm,
}

impl BatchNorm {
    /// Batch norm over `channels` with PyTorch defaults.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = BatchNormConfig { eps: 1e-5, remove_mean: true, affine: true, momentum: 0.1 };
        Ok(Self { inner: candle_nn::batch_norm(channels, cfg, vb)? })
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.forward_t(x, train)
    }
}

/// Instance normalisation (per-sample, per-channel) with an affine transform, as used by the
/// ConvNet of the dataset-distillation papers. Parameters `weight`, `bias`.
#[derive(Debug, Clone)]
pub struct InstanceNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl InstanceNorm {
    /// Instance norm over `channels` (eps 1e-5).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: 1e-5 })
    }
}

impl Module for InstanceNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let flat = x.reshape((n, c, h * w))?;
        let mean = flat.mean_keepdim(2)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.reshape((1, c, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1))?)?
            .reshape((n, c, h, w))
    }
}

/// A fully connected layer (`weight` [out, in], `bias` [out]).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// `in_dim -> out_dim` with bias.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { inner: candle_nn::linear(in_dim, out_dim, vb)? })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// ReLU.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// Max pooling with a square window and stride equal to it.
pub fn max_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    x.max_pool2d(size)
}

/// Average pooling with a square window and stride equal to it.
pub fn avg_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    x.avg_pool2d(size)
}

/// Global average pooling: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}
