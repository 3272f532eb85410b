//! Forward passes that record no autograd graph.
//!
//! candle records every op whose inputs include a variable, and a recorded op keeps its inputs
//! alive until the output is dropped: evaluating a network built on `Var`s keeps every
//! activation of a batch (and, if outputs are kept, of every batch) in memory. An [`Inference`]
//! is the same network over *detached* views of its weights: the views share the variables'
//! storage (no copy, and later updates to the weights show through), but carry no graph, so
//! each activation is freed as soon as the next layer has consumed it.

use super::layers::Linear;
use super::network::Network;
use super::{build_body, Body};
use crate::error::{Error, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::sync::Arc;

/// A network's eval-mode forward pass without gradients: what every evaluation, feature
/// extraction and measurement uses. Gradients still flow to *inputs* that are variables (a
/// trigger being inverted, a poison being optimised), never to the weights.
///
/// ```
/// use transferlab::models::{ModelSpec, Network};
/// use candle_core::{Device, Tensor, DType};
/// let net = Network::new(&ModelSpec::named("resnet20", (3, 32, 32), 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
/// let logits = net.inference().unwrap().forward(&x).unwrap();
/// assert!(!logits.track_op()); // no graph recorded
/// assert_eq!(logits.dims(), &[2, 10]);
/// ```
pub struct Inference {
    input: (usize, usize, usize),
    body: Arc<dyn Body>,
    head: Linear,
    /// (mean, 1 / std), each (1, C, 1, 1).
    norm: Option<(Tensor, Tensor)>,
}

impl Inference {
    pub(super) fn of(net: &Network) -> Result<Self> {
        let spec = net.spec();
        let tensors: HashMap<String, Tensor> = net.detached_variables();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, net.device());
        let body = build_body(spec, vb.clone())?;
        let head = Linear::new(body.feature_dim(), spec.num_classes, vb.pp(spec.head_name()))?;
        Ok(Self { input: spec.input, body, head, norm: net.input_norm().cloned() })
    }

    /// Eval-mode logits (N, classes) of [0, 1] images (N, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.head.forward(&self.features(x)?)?;
        Ok(match self.body.logit_offset(x)? {
            Some(offset) => (logits + offset)?,
            None => logits,
        })
    }

    /// Eval-mode penultimate features (N, feature_dim).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        check_input(self.input, x)?;
        Ok(self.body.features(&normalize(x, self.norm.as_ref())?, false)?)
    }

    /// The head alone, on features.
    pub fn head_forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(features)?)
    }
}

/// `(x - mean) / std` with the network's statistics; `x` unchanged without them.
pub(super) fn normalize(x: &Tensor, norm: Option<&(Tensor, Tensor)>) -> candle_core::Result<Tensor> {
    match norm {
        None => Ok(x.clone()),
        Some((mean, inv_std)) => x.broadcast_sub(mean)?.broadcast_mul(inv_std),
    }
}

pub(super) fn check_input((c, h, w): (usize, usize, usize), x: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != c || dims[2] != h || dims[3] != w {
        return Err(Error::shape("model input", format!("expected (N, {c}, {h}, {w}) images, got {dims:?}")));
    }
    Ok(())
}
