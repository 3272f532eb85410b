//! Masks over a network's neurons (its batch-norm channels), learnt on the fixed network and
//! used to prune it (RNP; ANP would share it).

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
    /// The channels pruned (mask below the threshold).
    pub pruned: Vec<usize>,
}

/// One mask variable per batch-norm channel of a network, initialised to 1, multiplying the
/// channel's weight.
pub(super) struct ChannelMasks {
    layers: Vec<String>,
    gammas: Vec<Tensor>,
    pub masks: Vec<(String, Var)>,
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
        let (mut gammas, mut masks) = (Vec::new(), Vec::new());
        for layer in &layers {
            let gamma = tensors[&format!("{layer}.weight")].to_device(device)?;
            masks.push((layer.clone(), Var::ones(gamma.dims1()?, DType::F32, device)?));
            gammas.push(gamma);
        }
        Ok(Self { layers, gammas, masks })
    }

    /// `net` with each channel's weight scaled by its mask.
    pub fn apply(&self, net: &Network) -> Result<Inference> {
        let mut overrides = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            overrides.insert(format!("{layer}.weight"), (self.masks[i].1.as_tensor() * &self.gammas[i])?);
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
        let mut tensors = net.named_tensors()?;
        let mut out = Vec::new();
        for (layer, m) in &self.masks {
            let values: Vec<f64> = m.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
            let pruned: Vec<usize> = values.iter().enumerate().filter(|(_, &v)| v < threshold).map(|(i, _)| i).collect();
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
