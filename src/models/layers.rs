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

/// Max pooling with a square `kernel`, `stride` and symmetric `padding`, as PyTorch's
/// `MaxPool2d(kernel, stride, padding)` (floor mode): the ResNet stem's 3x3/2/1.
///
/// candle's own pooling has no padding and no backward pass when windows overlap, so the
/// window maximum is taken over `kernel * kernel` strided views of the padded input, which
/// differentiates through ordinary tensor ops.
pub fn max_pool2d_padded(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel == 0 || stride == 0 || padding * 2 > kernel {
        candle_core::bail!("max_pool2d_padded: kernel {kernel}, stride {stride}, padding {padding} is not a valid pooling");
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!("max_pool2d_padded: {h}x{w} input is smaller than the {kernel}x{kernel} window");
    }
    let (ho, wo) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
    // Every view must be able to take `stride * out` elements from its offset, so the far
    // side gets extra padding; it never reaches a window, so its value is irrelevant.
    let (hp, wp) = (kernel - 1 + stride * ho, kernel - 1 + stride * wo);
    // Padding must lose every comparison. The lowest f32 rather than -inf: in f32 it cannot
    // turn into NaN through arithmetic (narrower dtypes round it to -inf, which still loses).
    // Where values tie (zeros after a ReLU) the gradient is shared among the tied inputs
    // instead of going to the first, as PyTorch does; through a ReLU at zero it is 0 anyway.
    let fill = f32::MIN as f64;
    let pad_to = |t: &Tensor, dim: usize, before: usize, total: usize| -> Result<Tensor> {
        let len = t.dim(dim)?;
        let after = total.saturating_sub(before + len);
        let mut parts = Vec::with_capacity(3);
        let mut shape = t.dims().to_vec();
        if before > 0 {
            shape[dim] = before;
            parts.push(Tensor::full(fill, shape.clone(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            shape[dim] = after;
            parts.push(Tensor::full(fill, shape, t.device())?.to_dtype(t.dtype())?);
        }
        let padded = Tensor::cat(&parts, dim)?;
        padded.narrow(dim, 0, total)
    };
    let padded = pad_to(&pad_to(x, 2, padding, hp)?, 3, padding, wp)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..kernel {
        let rows = every_nth(&padded, 2, dy, stride, ho)?;
        for dx in 0..kernel {
            let view = every_nth(&rows, 3, dx, stride, wo)?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    let out = out.expect("kernel >= 1");
    debug_assert_eq!(out.dims(), &[n, c, ho, wo]);
    Ok(out)
}

/// `x[:, :, ::stride, ::stride]`: keep every `stride`-th row and column, starting at the first
/// (the option-A shortcut of the CIFAR ResNets). Odd sizes keep the last row, as PyTorch does.
pub fn subsample2d(x: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    let rows = every_nth(x, 2, 0, stride, h.div_ceil(stride))?;
    every_nth(&rows, 3, 0, stride, w.div_ceil(stride))
}

/// `count` elements along `dim` taken every `step` from `start`. candle has no strided slicing:
/// split the dimension into (count, step) and keep the first of each group.
fn every_nth(x: &Tensor, dim: usize, start: usize, step: usize, count: usize) -> Result<Tensor> {
    if step == 1 {
        return x.narrow(dim, start, count);
    }
    let avail = x.dim(dim)? - start;
    let span = (step * count).min(avail);
    let mut t = x.narrow(dim, start, span)?;
    if span < step * count {
        t = t.pad_with_zeros(dim, 0, step * count - span)?;
    }
    let mut shape = t.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, step);
    t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Average pooling with a square window and stride equal to it.
pub fn avg_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    x.avg_pool2d(size)
}

/// Global average pooling: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        // A permutation-like pattern so that window maxima are unique and not at a fixed corner.
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// PyTorch's MaxPool2d(kernel, stride, padding) written out loop by loop.
    fn naive_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Vec<f32> {
        let (n, c, h, w) = x.dims4().unwrap();
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let mut out = Vec::new();
        for b in 0..n * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (y, x) = ((oy * s + ky) as isize - p as isize, (ox * s + kx) as isize - p as isize);
                            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                m = m.max(v[b * h * w + y as usize * w + x as usize]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    #[test]
    fn padded_max_pool_matches_pytorch_semantics() {
        for &(h, w) in &[(8, 8), (7, 9), (5, 4), (2, 2)] {
            for &(k, s, p) in &[(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)] {
                if h + 2 * p < k || w + 2 * p < k {
                    continue;
                }
                let x = ramp((2, 3, h, w));
                let got = max_pool2d_padded(&x, k, s, p).unwrap();
                let want = naive_max_pool(&x, k, s, p);
                assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{h}x{w} k{k} s{s} p{p}");
            }
        }
    }

    #[test]
    fn padded_max_pool_has_a_gradient_to_each_window_maximum() {
        let x = Var::from_tensor(&ramp((1, 1, 6, 6))).unwrap();
        let y = max_pool2d_padded(x.as_tensor(), 3, 2, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // Unique values: the gradient of a sum of window maxima counts how many windows each
        // input is the maximum of, so it sums to the number of windows (9).
        assert_eq!(g.iter().sum::<f32>(), 9.0);
        assert!(g.iter().all(|v| *v >= 0.0 && v.fract() == 0.0));
    }

    #[test]
    fn subsample_keeps_every_other_row_and_column_from_the_first() {
        let x = Tensor::arange(0f32, 35.0, &Device::Cpu).unwrap().reshape((1, 1, 5, 7)).unwrap();
        let y = subsample2d(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 4]);
        let want: Vec<f32> = [0, 2, 4, 6, 14, 16, 18, 20, 28, 30, 32, 34].iter().map(|&v| v as f32).collect();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        assert_eq!(subsample2d(&x, 1).unwrap().dims(), x.dims());
    }
}
