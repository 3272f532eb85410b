//! DOORPING's trigger update (Liu et al. 2023): during the distillation, the trigger is
//! re-optimised to drive one penultimate-layer neuron of the current network, and the
//! poisoned raw images are re-stamped with it, so that the distilled images come to encode a
//! trigger the network already reacts to.

use super::gradient_matching::{IterationHook, MatchNet};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{permutation, stream_at};
use candle_core::{Device, Tensor, Var, D};

/// A patch trigger being optimised: its pixels (C x size x size) and where it goes.
#[derive(Debug, Clone)]
pub struct PatchState {
    pub size: usize,
    pub row: usize,
    pub col: usize,
    /// CHW pixels of the patch, in [0, 1].
    pub pixels: Vec<f32>,
}

impl PatchState {
    /// Stamp the patch into one CHW image in place.
    pub fn stamp(&self, image: &mut [f32], shape: (usize, usize, usize)) {
        let (c, h, w) = shape;
        let s = self.size;
        for ch in 0..c {
            for i in 0..s {
                for j in 0..s {
                    image[(ch * h + self.row + i) * w + self.col + j] = self.pixels[(ch * s + i) * s + j];
                }
            }
        }
    }

    /// The 0/1 mask of the patch region, as a (1, C, H, W) tensor.
    fn mask(&self, shape: (usize, usize, usize)) -> Result<Tensor> {
        let (c, h, w) = shape;
        let mut m = vec![0f32; c * h * w];
        let ones = PatchState { pixels: vec![1.0; self.pixels.len()], ..self.clone() };
        ones.stamp(&mut m, shape);
        Ok(Tensor::from_vec(m, (1, c, h, w), &Device::Cpu)?)
    }
}

/// The DOORPING hook: before every `every`-th image update, choose the penultimate neuron with
/// the largest weight into the target class's logit (among those the patch can move) and take `steps` signed-gradient ascent steps of size
/// `lr` on the patch pixels to raise that neuron's mean activation over `batch` triggered
/// clean training images; then re-stamp every poisoned image with the new patch.
pub struct Doorping {
    pub patch: PatchState,
    pub target: u32,
    pub every: usize,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    pub seed: u64,
    /// Clean copies of the poisoned images (same order as `poisoned`).
    pub originals: Vec<Vec<f32>>,
    /// Indices of the poisoned images in the real data.
    pub poisoned: Vec<usize>,
    /// Clean (unpoisoned) images the trigger is optimised on.
    pub clean_pool: Vec<usize>,
    /// Updates made, and the chosen neuron and its mean activation before/after each.
    pub log: Vec<TriggerUpdate>,
}

/// One trigger update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerUpdate {
    /// The image update (counted from 0 over the whole distillation) it preceded.
    pub step: usize,
    pub neuron: usize,
    pub activation_before: f64,
    pub activation_after: f64,
}

impl Doorping {
    /// Optimise the patch against `net` and return the update made.
    pub fn optimise(&mut self, step: usize, net: &MatchNet, real: &Dataset) -> Result<TriggerUpdate> {
        let dev = Device::Cpu;
        let shape = real.shape;
        let (c, h, w) = shape;
        let head: Vec<Vec<f32>> = net.head_weight().as_tensor().to_vec2()?;
        let row = head.get(self.target as usize).ok_or_else(|| Error::invalid("target class", "outside the network's classes"))?;
        if self.clean_pool.is_empty() {
            return Err(Error::invalid("DOORPING", "no clean image to optimise the trigger on"));
        }
        let order = permutation(&mut stream_at(self.seed, "doorping.batch", step as u64), self.clean_pool.len());
        let idx: Vec<usize> = order[..self.batch.min(order.len())].iter().map(|&j| self.clean_pool[j]).collect();
        let (x, _) = real.batch(&idx, &dev)?;
        let mask = self.patch.mask(shape)?;
        let keep = (1.0 - &mask)?;
        let x_kept = x.broadcast_mul(&keep)?;
        // Only neurons whose receptive field covers the patch can be driven by it (the last
        // layer keeps a spatial grid); among those the patch moves at least half as much as
        // the most sensitive one, take the one with the largest weight into the target logit.
        let white = net.features(&x_kept.broadcast_add(&mask)?)?;
        let black = net.features(&x_kept)?;
        let sensitivity: Vec<f32> = (white - black)?.abs()?.mean(0)?.to_vec1()?;
        let most = sensitivity.iter().copied().fold(0f32, f32::max);
        let neuron = row
            .iter()
            .enumerate()
            .filter(|(j, _)| sensitivity[*j] >= 0.5 * most)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(j, _)| j)
            .unwrap_or(0);
        let mut full = vec![0f32; c * h * w];
        self.patch.stamp(&mut full, shape);
        let t = Var::from_tensor(&Tensor::from_vec(full, (1, c, h, w), &dev)?)?;
        let activation = |t: &Tensor| -> candle_core::Result<Tensor> {
            let xt = x_kept.broadcast_add(&t.broadcast_mul(&mask)?)?;
            net.features(&xt)?.narrow(D::Minus1, neuron, 1)?.mean_all()
        };
        let before = activation(t.as_tensor())?.to_scalar::<f32>()? as f64;
        for _ in 0..self.steps {
            let a = activation(t.as_tensor())?;
            let g = a.backward()?.get(t.as_tensor()).map(|g| g.detach()).ok_or_else(|| Error::invalid("DOORPING", "no gradient reached the trigger"))?;
            // Signed steps: the activation's scale changes with every network, the step should not.
            let next = (t.as_tensor() + (g.sign()?.broadcast_mul(&mask)? * self.lr)?)?.clamp(0f32, 1f32)?.detach();
            t.set(&next)?;
        }
        let after = activation(t.as_tensor())?.to_scalar::<f32>()? as f64;
        let full: Vec<f32> = t.as_tensor().flatten_all()?.to_vec1()?;
        let s = self.patch.size;
        for ch in 0..c {
            for i in 0..s {
                for j in 0..s {
                    self.patch.pixels[(ch * s + i) * s + j] = full[(ch * h + self.patch.row + i) * w + self.patch.col + j];
                }
            }
        }
        Ok(TriggerUpdate { step, neuron, activation_before: before, activation_after: after })
    }

    /// Re-stamp every poisoned image with the current patch.
    pub fn restamp(&self, real: &mut Dataset) {
        let shape = real.shape;
        for (k, &i) in self.poisoned.iter().enumerate() {
            let img = real.image_mut(i);
            img.copy_from_slice(&self.originals[k]);
            self.patch.stamp(img, shape);
        }
    }
}

impl IterationHook for Doorping {
    fn before_update(&mut self, step: usize, net: &MatchNet, real: &mut Dataset) -> Result<bool> {
        if step % self.every != 0 {
            return Ok(false);
        }
        let update = self.optimise(step, net, real)?;
        self.log.push(update);
        self.restamp(real);
        Ok(true)
    }
}
