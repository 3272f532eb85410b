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
        Self::with_tensors(net, net.detached_variables())
    }

    /// `net`'s forward pass with some of its tensors replaced by `overrides` (same names and
    /// shapes): where an override is computed from variables (a mask times a weight), gradients
    /// flow to them, which is how neuron masks are learnt on a fixed network.
    ///
    /// ```
    /// use transferlab::models::{Inference, ModelSpec, Network};
    /// use candle_core::{Device, Tensor, Var, DType};
    /// let net = Network::new(&ModelSpec::named("resnet8", (3, 32, 32), 10).unwrap(), 0, &Device::Cpu).unwrap();
    /// let mask = Var::ones(16, DType::F32, &Device::Cpu).unwrap();
    /// let gamma = net.named_tensors().unwrap()["bn1.weight"].clone();
    /// let masked = Inference::with_overrides(&net, [("bn1.weight".to_string(), (mask.as_tensor() * gamma).unwrap())].into()).unwrap();
    /// let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
    /// let grads = masked.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    /// assert!(grads.get(mask.as_tensor()).is_some());
    /// assert!(Inference::with_overrides(&net, [("bn9.weight".to_string(), mask.as_tensor().clone())].into()).is_err());
    /// ```
    pub fn with_overrides(net: &Network, overrides: HashMap<String, Tensor>) -> Result<Self> {
        let mut tensors = net.detached_variables();
        for (name, t) in overrides {
            let Some(own) = tensors.get(&name) else {
                return Err(Error::invalid("tensor override", format!("the model has no tensor {name}; see Network::parameter_names")));
            };
            if own.dims() != t.dims() {
                return Err(Error::shape("tensor override", format!("{name} is {:?}, the override {:?}", own.dims(), t.dims())));
            }
            tensors.insert(name, t);
        }
        Self::with_tensors(net, tensors)
    }

    fn with_tensors(net: &Network, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let spec = net.spec();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, net.device());
        let body = build_body(spec, vb.clone())?;
        let head = Linear::new(body.feature_dim(), spec.num_classes, vb.pp(spec.head_name()))?;
        Ok(Self { input: spec.input, body, head, norm: net.input_norm().cloned() })
    }

    /// Eval-mode logits (N, classes) of [0, 1] images (N, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.logits(x, false)
    }

    /// Logits with batch norm on the batch's own statistics, the running ones updated, as a
    /// network in training mode computes them (learning masks on a fixed network in training
    /// mode, as RNP does); the weights still receive no gradient.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        self.logits(x, true)
    }

    fn logits(&self, x: &Tensor, batch_statistics: bool) -> Result<Tensor> {
        check_input(self.input, x)?;
        let f = self.body.features(&normalize(x, self.norm.as_ref())?, batch_statistics)?;
        let logits = self.head.forward(&f)?;
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
