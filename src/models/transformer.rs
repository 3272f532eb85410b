//! The pre-LayerNorm transformer encoder shared by ViT and CLIP, with candle ops only.
//!
//! Every op here is built from differentiable candle primitives (mean, sqrt, exp, matmul)
//! rather than candle-nn's fused `layer_norm` / `softmax_last_dim` custom ops, which have no
//! backward pass on the CPU: the tiny CLIP that notebook 09 trains runs through this code.
//! Parameter names are passed in ([`BlockNames`]) because HF's ViT and CLIP name the same
//! pieces differently.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` (PyTorch's `nn.GELU()`, HF's `"gelu"`).
    Gelu,
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP's approximation (HF's `"quick_gelu"`).
    QuickGelu,
}

impl Activation {
    /// HF's `hidden_act` name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "quick_gelu" => Some(Self::QuickGelu),
            _ => None,
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        }
    }
}

/// LayerNorm over the last dimension with PyTorch's names (`weight`, `bias`) and biased
/// variance.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension from differentiable primitives (max-shifted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Where a block's parameters live, relative to the block's prefix.
#[derive(Debug, Clone, Copy)]
pub struct BlockNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub ln1: &'static str,
    pub ln2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

/// Sizes of an encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub act: Activation,
}

/// A linear layer on (..., in) inputs as one 2-D matrix product: candle's `Linear` on a
/// 3-D input broadcasts the weight over the batch, a batched product whose backward pass
/// costs several times the flat one on the CPU.
fn flat(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = *dims.last().expect("non-scalar input");
    let rows = x.elem_count() / d;
    let y = x.reshape((rows, d))?.matmul(&l.weight().t()?)?;
    let y = match l.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().expect("non-scalar input") = y.dim(1)?;
    y.reshape(out)
}

/// One pre-LN block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
pub struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln1: LayerNorm,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (i as f64).sqrt();
    let w = vb.get_with_hints((o, i), "weight", Init::Uniform { lo: -bound, up: bound })?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

impl Block {
    pub fn new(s: &EncoderShape, n: &BlockNames, vb: VarBuilder) -> Result<Self> {
        if s.heads == 0 || s.hidden % s.heads != 0 {
            candle_core::bail!("hidden size {} is not divisible by {} heads", s.hidden, s.heads);
        }
        Ok(Self {
            q: linear(s.hidden, s.hidden, vb.pp(n.q))?,
            k: linear(s.hidden, s.hidden, vb.pp(n.k))?,
            v: linear(s.hidden, s.hidden, vb.pp(n.v))?,
            o: linear(s.hidden, s.hidden, vb.pp(n.o))?,
            ln1: LayerNorm::new(s.hidden, s.eps, vb.pp(n.ln1))?,
            ln2: LayerNorm::new(s.hidden, s.eps, vb.pp(n.ln2))?,
            fc1: linear(s.hidden, s.intermediate, vb.pp(n.fc1))?,
            fc2: linear(s.intermediate, s.hidden, vb.pp(n.fc2))?,
            heads: s.heads,
            act: s.act,
        })
    }

    /// `x` (B, T, D); `mask` (T, T) added to the attention scores (causal text attention).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let x = (x + self.attention(&h, mask)?)?;
        let h = self.ln2.forward(&x)?;
        let h = flat(&self.fc2, &self.act.apply(&flat(&self.fc1, &h)?)?)?;
        x + h
    }

    fn attention(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let split = |y: Tensor| -> Result<Tensor> { y.reshape((b, t, self.heads, hd))?.transpose(1, 2)?.contiguous() };
        let q = split(flat(&self.q, x)?)?;
        let k = split(flat(&self.k, x)?)?;
        let v = split(flat(&self.v, x)?)?;
        let mut scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let attn = softmax_last(&scores)?.matmul(&v)?;
        flat(&self.o, &attn.transpose(1, 2)?.contiguous()?.reshape((b, t, d))?)
    }
}

/// An (T, T) additive causal mask: 0 on and below the diagonal, a large negative above.
pub fn causal_mask(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::MIN / 2.0 } else { 0.0 }).collect();
    Tensor::from_vec(v, (t, t), device)
}

/// Build a model from hub-format tensors: every tensor as f32 behind a `VarBuilder`, and a
/// shape or name candle rejects reported as weights that do not fit `what`'s config.json.
pub(crate) fn build_from_tensors<T>(
    what: &str,
    tensors: crate::weights::NamedTensors,
    device: &candle_core::Device,
    build: impl FnOnce(VarBuilder) -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    use crate::error::Error;
    let f32 = candle_core::DType::F32;
    let map: std::collections::HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| Ok((k, v.to_dtype(f32)?))).collect::<crate::error::Result<_>>()?;
    build(VarBuilder::from_tensors(map, f32, device)).map_err(|e| match e {
        Error::Candle(c) => Error::WeightMismatch(format!("{what} weights do not fit its config.json: {c}")),
        other => other,
    })
}
