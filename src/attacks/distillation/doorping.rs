//! DOORPING's trigger update (Liu et al. 2023): during the distillation, the trigger is
//! re-optimised to drive a penultimate-layer neuron (or a few) of the network just trained on
//! the synthetic set, and the poisoned raw images are re-stamped with it, so that the distilled
//! images come to encode a trigger the network already reacts to.

use super::gradient_matching::{IterationHook, MatchNet};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{permutation, stream_at};
use candle_core::{Device, Tensor, Var};

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

/// How DOORPING picks the neuron its trigger drives, among the penultimate-layer neurons the
/// patch can move (at least half as much as the most sensitive one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeuronChoice {
    /// The largest weight into the target class's logit.
    TargetWeight,
    /// The largest L1 norm of incoming weights (Liu et al.'s code, after TrojanNN); for our
    /// convolutional features, the norm of the channel's filter in the last block.
    IncomingWeight,
}

/// The DOORPING hook. At every `every`-th update opportunity (after the network's inner-loop
/// training on the synthetic set, i.e. before every image update but the first of each
/// iteration, as in Liu et al.'s code), choose a neuron and move the patch pixels by Adam so
/// that the neuron's activation approaches `alpha` times its value at the start of the
/// update, stopping once the squared error is below `threshold` or after `steps` steps; then
/// re-stamp every poisoned image with the new patch.
pub struct Doorping {
    pub patch: PatchState,
    pub target: u32,
    pub every: usize,
    pub steps: usize,
    pub lr: f64,
    pub alpha: f64,
    pub threshold: f64,
    /// Clean images the patch is stamped on while it is optimised; 0: the patch alone on a
    /// black image (Liu et al.).
    pub batch: usize,
    pub neuron: NeuronChoice,
    /// How many neurons (the best-scoring ones) are driven together; Liu et al.: 1.
    pub topk: usize,
    /// Keep the patch pixels in [0, 1]; Liu et al. leave them unbounded.
    pub bounded: bool,
    pub seed: u64,
    /// Clean copies of the poisoned images (same order as `poisoned`).
    pub originals: Vec<Vec<f32>>,
    /// Indices of the poisoned images in the real data.
    pub poisoned: Vec<usize>,
    /// Clean (unpoisoned) images the trigger is optimised on.
    pub clean_pool: Vec<usize>,
    /// Update opportunities seen so far.
    pub opportunities: usize,
    /// Updates made, and the chosen neuron and its mean activation before/after each.
    pub log: Vec<TriggerUpdate>,
}

/// One trigger update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerUpdate {
    /// The image update (counted from 0 over the whole distillation) it preceded.
    pub step: usize,
    /// The best-scoring neuron driven (the first of `topk`).
    pub neuron: usize,
    pub activation_before: f64,
    pub activation_after: f64,
    /// Optimisation steps taken (fewer than the maximum when the target was reached).
    pub steps: usize,
}

impl Doorping {
    /// Optimise the patch against `net` and return the update made.
    pub fn optimise(&mut self, step: usize, net: &MatchNet, real: &Dataset) -> Result<TriggerUpdate> {
        let dev = Device::Cpu;
        let shape = real.shape;
        let (c, h, w) = shape;
        let head: Vec<Vec<f32>> = net.head_weight().as_tensor().to_vec2()?;
        let row = head.get(self.target as usize).ok_or_else(|| Error::invalid("target class", "outside the network's classes"))?;
        let mask = self.patch.mask(shape)?;
        let x_kept = if self.batch == 0 {
            Tensor::zeros((1, c, h, w), candle_core::DType::F32, &dev)?
        } else {
            if self.clean_pool.is_empty() {
                return Err(Error::invalid("DOORPING", "no clean image to optimise the trigger on"));
            }
            let order = permutation(&mut stream_at(self.seed, "doorping.batch", step as u64), self.clean_pool.len());
            let idx: Vec<usize> = order[..self.batch.min(order.len())].iter().map(|&j| self.clean_pool[j]).collect();
            let (x, _) = real.batch(&idx, &dev)?;
            x.broadcast_mul(&(1.0 - &mask)?)?
        };
        // Only neurons whose receptive field covers the patch can be driven by it (the last
        // layer keeps a spatial grid).
        let white = net.features(&x_kept.broadcast_add(&mask)?)?;
        let black = net.features(&x_kept)?;
        let sensitivity: Vec<f32> = (white - black)?.abs()?.mean(0)?.to_vec1()?;
        let most = sensitivity.iter().copied().fold(0f32, f32::max);
        let score: Vec<f32> = match self.neuron {
            NeuronChoice::TargetWeight => row.clone(),
            NeuronChoice::IncomingWeight => {
                // Features are flattened channel-last: neuron j belongs to channel j % width.
                let last = net.last_conv_weight().ok_or_else(|| Error::invalid("ConvNet depth", "0; DOORPING needs at least one block"))?;
                let filters: Vec<Vec<f32>> = last.as_tensor().to_vec2()?;
                let l1: Vec<f32> = filters.iter().map(|f| f.iter().map(|v| v.abs()).sum()).collect();
                (0..sensitivity.len()).map(|j| l1[j % l1.len()]).collect()
            }
        };
        let mut candidates: Vec<usize> = (0..sensitivity.len()).filter(|&j| sensitivity[j] >= 0.5 * most).collect();
        candidates.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        candidates.truncate(self.topk.max(1));
        let neuron = candidates.first().copied().unwrap_or(0);
        let ids = Tensor::from_vec(candidates.iter().map(|&j| j as u32).collect::<Vec<_>>(), candidates.len(), &dev)?;
        let mut full = vec![0f32; c * h * w];
        self.patch.stamp(&mut full, shape);
        let t = Var::from_tensor(&Tensor::from_vec(full, (1, c, h, w), &dev)?)?;
        let activation = |t: &Tensor| -> candle_core::Result<Tensor> {
            let xt = x_kept.broadcast_add(&t.broadcast_mul(&mask)?)?;
            net.features(&xt)?.index_select(&ids, 1)?.mean_all()
        };
        let before = activation(t.as_tensor())?.to_scalar::<f32>()? as f64;
        // A neuron at exactly zero would make the target zero too; aim a little above it.
        let goal = self.alpha * before.max(1e-3);
        let (b1, b2, eps) = (0.9, 0.99, 1e-8);
        let mut m = t.as_tensor().zeros_like()?;
        let mut v = t.as_tensor().zeros_like()?;
        let mut taken = 0;
        for i in 0..self.steps {
            let a = activation(t.as_tensor())?;
            let loss = (a - goal)?.sqr()?;
            if (loss.to_scalar::<f32>()? as f64) < self.threshold {
                break;
            }
            let g = loss.backward()?.get(t.as_tensor()).map(|g| g.detach()).ok_or_else(|| Error::invalid("DOORPING", "no gradient reached the trigger"))?;
            let g = g.broadcast_mul(&mask)?;
            m = ((m * b1)? + (&g * (1.0 - b1))?)?;
            v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let k = (i + 1) as i32;
            let m_hat = (&m / (1.0 - b1.powi(k)))?;
            let v_hat = (&v / (1.0 - b2.powi(k)))?;
            let step_t = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let next = (t.as_tensor() - (step_t * self.lr)?)?;
            let next = if self.bounded { next.clamp(0f32, 1f32)? } else { next }.detach();
            t.set(&next)?;
            taken += 1;
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
        Ok(TriggerUpdate { step, neuron, activation_before: before, activation_after: after, steps: taken })
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
    fn before_update(&mut self, step: usize, outer: usize, net: &MatchNet, real: &mut Dataset) -> Result<bool> {
        // Liu et al. update after the inner loop, against the network trained on the synthetic
        // set; a freshly initialised network (the first update of an iteration) is skipped.
        if outer == 0 {
            return Ok(false);
        }
        let k = self.opportunities;
        self.opportunities += 1;
        if k % self.every != 0 {
            return Ok(false);
        }
        let update = self.optimise(step, net, real)?;
        self.log.push(update);
        self.restamp(real);
        Ok(true)
    }
}
