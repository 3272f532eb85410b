//! The building blocks every architecture is made of.
//!
//! Architectures call these instead of candle-nn directly so that one place decides how a
//! convolution, a normalisation or a pooling is computed (and can swap in faster CPU kernels).

use crate::kernels;
use candle_core::{Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

/// A 2-D convolution with PyTorch's parameter names (`weight`, optional `bias`), computed by
/// [`kernels::conv2d`] (im2col + gemm on CPU, candle's op elsewhere).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
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
        Ok(Self { weight: inner.weight().clone(), bias: inner.bias().cloned(), stride, padding })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}

/// Batch normalisation over channels: batch statistics and running-average updates in
/// training mode, running statistics in eval mode. PyTorch's names and defaults
/// (`weight`, `bias`, `running_mean`, `running_var`; eps 1e-5, momentum 0.1, the running
/// variance averaging the unbiased batch variance).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// Batch norm over `channels` with PyTorch defaults.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        // The running statistics are variables of the model's VarMap (saved with the weights);
        // `Var::from_tensor` on a variable shares its storage, so updates land in the map.
        let running_mean = Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var = Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, running_mean, running_var, eps: 1e-5, momentum: 0.1 })
    }

    /// Batch norm followed by ReLU, fused into one op.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            let (rm, rv) = (self.running_mean.as_detached_tensor(), self.running_var.as_detached_tensor());
            return if relu {
                kernels::batch_norm_eval_relu(x, &rm, &rv, &self.weight, &self.bias, self.eps)
            } else {
                kernels::batch_norm_eval(x, &rm, &rv, &self.weight, &self.bias, self.eps)
            };
        }
        let out = if relu {
            kernels::batch_norm_train_relu(x, &self.weight, &self.bias, self.eps)?
        } else {
            kernels::batch_norm_train(x, &self.weight, &self.bias, self.eps)?
        };
        self.update_running(&out.mean, &out.unbiased_var()?)?;
        Ok(out.output)
    }

    /// Moves the running statistics towards a batch's mean and unbiased variance.
    fn update_running(&self, mean: &Tensor, unbiased_var: &Tensor) -> Result<()> {
        let m = self.momentum;
        let mean = mean.to_dtype(self.running_mean.dtype())?;
        let var = unbiased_var.to_dtype(self.running_var.dtype())?;
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        self.running_mean.set(&((rm * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var.set(&((rv * (1.0 - m))? + (var * m)?)?)?;
        Ok(())
    }
}

/// `relu?(bn(conv(x)) + residual?)`: a convolution without bias, batch norm, an optional
/// residual add and an optional ReLU. In training mode this is one op
/// ([`kernels::conv2d_batch_norm_train`], bit-identical to the separate ops and a graph node
/// for three); in eval mode too ([`kernels::conv2d_affine`] with the running statistics); for
/// a convolution with a bias, the separate ops.
pub fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: &Tensor, train: bool, relu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
    if train && conv.bias.is_none() {
        let spec = kernels::ConvBn { stride: conv.stride, padding: conv.padding, eps: bn.eps, relu };
        let out = kernels::conv2d_batch_norm_train(x, &conv.weight, &bn.weight, &bn.bias, residual, spec)?;
        bn.update_running(&out.mean, &out.unbiased_var()?)?;
        return Ok(out.output);
    }
    if !train && conv.bias.is_none() {
        let (rm, rv) = (bn.running_mean.as_detached_tensor(), bn.running_var.as_detached_tensor());
        let (scale, shift) = kernels::batch_norm_eval_affine(&rm, &rv, &bn.weight, &bn.bias, bn.eps)?;
        let spec = kernels::ConvBn { stride: conv.stride, padding: conv.padding, eps: bn.eps, relu };
        return kernels::conv2d_affine(x, &conv.weight, &scale, &shift, residual, spec);
    }
    let z = conv.forward(x)?;
    match residual {
        None => bn.forward_impl(&z, train, relu),
        Some(r) => {
            let y = bn.forward_t(&z, train)?;
            if relu {
                add_relu(&y, r)
            } else {
                y + r
            }
        }
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
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

/// A ResNet basic block, `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut)`, with 3x3
/// convolutions without bias (padding 1, `conv1` carrying the stride). In training mode one
/// op ([`kernels::basic_block_train`], bit-identical to the separate ops, one graph node for
/// five); in eval mode two [`conv_bn`] ops, with `shortcut_of(x)` computing a non-identity
/// shortcut (the fused op computes `kind` itself).
pub fn basic_block(x: &Tensor, [conv1, conv2]: [&Conv2d; 2], [bn1, bn2]: [&BatchNorm; 2], kind: kernels::Shortcut, train: bool, shortcut_of: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let fusable = conv1.bias.is_none() && conv2.bias.is_none() && conv1.padding == 1 && conv2.padding == 1 && conv2.stride == 1 && bn1.eps == bn2.eps;
    let kernel3 = conv1.weight.dims().ends_with(&[3, 3]) && conv2.weight.dims().ends_with(&[3, 3]);
    if train && fusable && kernel3 {
        let p = kernels::BlockParams { conv1: &conv1.weight, gamma1: &bn1.weight, beta1: &bn1.bias, conv2: &conv2.weight, gamma2: &bn2.weight, beta2: &bn2.bias };
        let out = kernels::basic_block_train(x, p, kernels::BasicBlock { stride: conv1.stride, shortcut: kind, eps: bn1.eps })?;
        for (bn, st) in [bn1, bn2].into_iter().zip(&out.bn) {
            bn.update_running(&st.mean, &st.unbiased_var()?)?;
        }
        return Ok(out.output);
    }
    let out = conv_bn(conv1, bn1, x, train, true, None)?;
    let shortcut = match kind {
        kernels::Shortcut::Identity => x.clone(),
        kernels::Shortcut::SubsamplePad(_) => shortcut_of(x)?,
    };
    conv_bn(conv2, bn2, &out, train, true, Some(&shortcut))
}

/// A fully connected layer (`weight` of shape (out, in), `bias` of shape (out)).
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
    kernels::relu(x)
}

/// ReLU of a sum (a residual connection), fused into one op.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    kernels::add_relu(a, b)
}

/// Max pooling with a square window and stride equal to it.
pub fn max_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    kernels::max_pool2d(x, size, size, 0)
}

/// ReLU then max pooling (square window, stride equal to it), fused into one op.
pub fn relu_max_pool2d(x: &Tensor, size: usize) -> Result<Tensor> {
    kernels::max_pool2d_relu(x, size, size, 0)
}

/// Max pooling with a square `kernel`, `stride` and symmetric `padding`, as PyTorch's
/// `MaxPool2d(kernel, stride, padding)` (floor mode): the ResNet stem's 3x3/2/1. Padding
/// never wins a window; the gradient goes to the first maximum, as in PyTorch.
pub fn max_pool2d_padded(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 || padding * 2 > kernel {
        candle_core::bail!("max_pool2d_padded: kernel {kernel}, stride {stride}, padding {padding} is not a valid pooling");
    }
    kernels::max_pool2d(x, kernel, stride, padding)
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
    kernels::avg_pool2d(x, size)
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
