//! Masks over a network's neurons (its batch-norm channels), learnt on the fixed network and
//! used to prune it: what RNP and ANP share.

use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Inference, LoadMode, Network};
use crate::rng::{permutation, stream_at};
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// The learnt mask of one batch-norm layer.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronMasks {
    /// The layer's parameter name prefix (`layer2.0.bn1`).
    pub layer: String,
    /// One value in [0, 1] per channel.
    pub values: Vec<f64>,
    /// The channels pruned (by the method's rule: below a threshold, or among the lowest).
    pub pruned: Vec<usize>,
}

impl NeuronMasks {
    /// Channels pruned over all `layers`.
    pub fn pruned_in(layers: &[NeuronMasks]) -> usize {
        layers.iter().map(|m| m.pruned.len()).sum()
    }
}

/// One mask variable per batch-norm channel of a network, initialised to 1, multiplying the
/// channel's weight.
pub(super) struct ChannelMasks {
    layers: Vec<String>,
    gammas: Vec<Tensor>,
    betas: Vec<Tensor>,
    pub masks: Vec<(String, Var)>,
}

/// Multiplicative perturbations of every channel's weight and bias (ANP's neuron noise).
pub(super) struct ChannelNoise {
    pub weight: Vec<(String, Var)>,
    pub bias: Vec<(String, Var)>,
}

impl ChannelMasks {
    /// Masks for every batch-norm layer of `net` (its layers with running statistics); a
    /// network without batch norm is refused, naming `method`.
    pub fn new(net: &Network, method: &str) -> Result<Self> {
        let layers: Vec<String> = net.parameter_names().iter().filter_map(|n| n.strip_suffix(".running_mean").map(str::to_string)).collect();
        if layers.is_empty() {
            return Err(Error::invalid(
                "model",
                format!("it has no batch-norm layers: {method} masks batch-norm channels; use a ResNet or a ConvNet with batch norm"),
            ));
        }
        let tensors = net.named_tensors()?;
        let device = net.device();
        let (mut gammas, mut betas, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for layer in &layers {
            let gamma = tensors[&format!("{layer}.weight")].to_device(device)?;
            betas.push(tensors[&format!("{layer}.bias")].to_device(device)?);
            masks.push((layer.clone(), Var::ones(gamma.dims1()?, DType::F32, device)?));
            gammas.push(gamma);
        }
        Ok(Self { layers, gammas, betas, masks })
    }

    /// Zero-initialised noise of the masks' shapes.
    pub fn zero_noise(&self) -> Result<ChannelNoise> {
        let zeros = |suffix: &str| -> Result<Vec<(String, Var)>> {
            self.masks.iter().map(|(l, m)| Ok((format!("{l}.{suffix}"), Var::zeros(m.as_tensor().dims1()?, DType::F32, m.device())?))).collect()
        };
        Ok(ChannelNoise { weight: zeros("weight_noise")?, bias: zeros("bias_noise")? })
    }

    /// `net` with each channel's weight scaled by its mask (plus the weight noise) and its
    /// bias by 1 plus the bias noise, when `noise` is given.
    pub fn apply(&self, net: &Network, noise: Option<&ChannelNoise>) -> Result<Inference> {
        let mut overrides = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let m = self.masks[i].1.as_tensor();
            let (w, b) = match noise {
                Some(n) => ((m + n.weight[i].1.as_tensor())?, Some((n.bias[i].1.as_tensor() + 1.0)?)),
                None => (m.clone(), None),
            };
            overrides.insert(format!("{layer}.weight"), (w * &self.gammas[i])?);
            if let Some(b) = b {
                overrides.insert(format!("{layer}.bias"), (b * &self.betas[i])?);
            }
        }
        Inference::with_overrides(net, overrides)
    }

    /// Clip every mask to [0, 1].
    pub fn clamp(&self) -> Result<()> {
        for (_, m) in &self.masks {
            m.set(&m.as_tensor().clamp(0f32, 1f32)?)?;
        }
        Ok(())
    }

    /// A copy of `net` with every channel whose mask is below `threshold` pruned (its
    /// batch-norm weight set to zero, as the authors' code prunes), and the masks.
    pub fn prune(&self, net: &Network, threshold: f64) -> Result<(Network, Vec<NeuronMasks>)> {
        self.prune_chosen(net, |values| values.iter().map(|l| l.iter().map(|&v| v < threshold).collect()).collect())
    }

    /// A copy of `net` with the `count` channels of lowest mask pruned, over all layers (ties
    /// broken by layer, then channel), and the masks.
    pub fn prune_lowest(&self, net: &Network, count: usize) -> Result<(Network, Vec<NeuronMasks>)> {
        self.prune_chosen(net, |values| {
            let mut order: Vec<(usize, usize)> = values.iter().enumerate().flat_map(|(l, v)| (0..v.len()).map(move |c| (l, c))).collect();
            order.sort_by(|a, b| values[a.0][a.1].total_cmp(&values[b.0][b.1]).then(a.cmp(b)));
            let mut chosen: Vec<Vec<bool>> = values.iter().map(|v| vec![false; v.len()]).collect();
            for &(l, c) in order.iter().take(count) {
                chosen[l][c] = true;
            }
            chosen
        })
    }

    fn prune_chosen(&self, net: &Network, choose: impl FnOnce(&[Vec<f64>]) -> Vec<Vec<bool>>) -> Result<(Network, Vec<NeuronMasks>)> {
        let values: Vec<Vec<f64>> = self.masks.iter().map(|(_, m)| Ok(m.as_tensor().to_dtype(DType::F64)?.to_vec1()?)).collect::<Result<_>>()?;
        let chosen = choose(&values);
        let mut tensors = net.named_tensors()?;
        let mut out = Vec::new();
        for (((layer, _), values), chosen) in self.masks.iter().zip(values).zip(chosen) {
            let pruned: Vec<usize> = (0..values.len()).filter(|&i| chosen[i]).collect();
            let name = format!("{layer}.weight");
            let mut gamma: Vec<f32> = tensors[&name].to_vec1()?;
            for &i in &pruned {
                gamma[i] = 0.0;
            }
            let device = tensors[&name].device().clone();
            tensors.insert(name, Tensor::from_vec(gamma, values.len(), &device)?);
            out.push(NeuronMasks { layer: layer.clone(), values, pruned });
        }
        let mut pruned = net.duplicate()?;
        pruned.set_tensors(&tensors, LoadMode::Strict)?;
        Ok((pruned, out))
    }
}

/// One epoch of shuffled, augmented batches (images, labels) of `clean`, drawn from the
/// streams `{name}.shuffle` / `{name}.augment` of `seed` at `epoch`.
pub(super) fn clean_batches(clean: &Dataset, batch_size: usize, augment: Augment, seed: u64, name: &str, epoch: u64, device: &candle_core::Device) -> Result<Vec<(Tensor, Tensor)>> {
    let order = permutation(&mut stream_at(seed, &format!("{name}.shuffle"), epoch), clean.len());
    let mut aug_rng = stream_at(seed, &format!("{name}.augment"), epoch);
    let (c, h, w) = clean.shape;
    order
        .chunks(batch_size)
        .map(|indices| {
            let mut pixels = Vec::with_capacity(indices.len() * clean.image_len());
            for &i in indices {
                pixels.extend_from_slice(clean.image(i));
            }
            augment.apply_batch(&mut pixels, clean.shape, &mut aug_rng)?;
            let x = Tensor::from_vec(pixels, (indices.len(), c, h, w), device)?;
            let y = Tensor::from_vec(indices.iter().map(|&i| clean.labels[i]).collect::<Vec<u32>>(), indices.len(), device)?;
            Ok((x, y))
        })
        .collect()
}
