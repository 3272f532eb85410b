//! Label-consistent hardening (Turner, Tsipras and Madry 2019): before the trigger is stamped,
//! each clean-label poison is pushed by an L-infinity PGD attack away from its own (true) class
//! on a surrogate model. The victim can then no longer fit these images by their natural
//! features and leans on the trigger they carry, so clean-label poisoning, weak without it,
//! implants the backdoor.

use super::poison::{poison, PoisonConfig};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::train::cross_entropy;
use crate::rng::stream;
use candle_core::{Tensor, Var};

/// PGD settings. Defaults are BackdoorBench's `resource/label-consistent/craft_adv_dataset.py`:
/// eps 8/255, step 1.5/255, 100 steps, untargeted (cross-entropy of the true label ascended),
/// no random start, the result stored as 8-bit pixels. Deviation: BackdoorBench (and Turner et
/// al.) attack an adversarially trained ResNet-18; here the surrogate is the model the caller
/// gives (the poisoning runner: the clean reference model, normally trained).
#[derive(Debug, Clone, PartialEq)]
pub struct AdversarialHardening {
    /// L-infinity budget, in pixel units of [0, 1].
    pub eps: f32,
    pub step_size: f32,
    pub steps: usize,
    /// Images per PGD batch.
    pub batch_size: usize,
}

impl Default for AdversarialHardening {
    fn default() -> Self {
        Self { eps: 8.0 / 255.0, step_size: 1.5 / 255.0, steps: 100, batch_size: 128 }
    }
}

impl AdversarialHardening {
    pub fn validate(&self) -> Result<()> {
        if !(self.eps > 0.0 && self.eps <= 1.0 && self.step_size > 0.0) || self.steps == 0 || self.batch_size == 0 {
            return Err(Error::invalid(
                "adversarial hardening",
                format!("eps {} (in (0, 1]), step {} (> 0), {} steps and batch {} (>= 1); BackdoorBench: 8/255, 1.5/255, 100, 128", self.eps, self.step_size, self.steps, self.batch_size),
            ));
        }
        Ok(())
    }

    /// The images of `ds` at `indices`, each moved within `eps` of itself (and within [0, 1])
    /// to raise `surrogate`'s loss on its own label, rounded to 8-bit pixels; returned in
    /// `indices` order, CHW each.
    ///
    /// ```
    /// use transferlab::attacks::AdversarialHardening;
    /// use transferlab::models::{ModelSpec, Network};
    /// let data = transferlab::data::digits()?.per_class_sample(2, 0)?;
    /// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10)?, 0, &candle_core::Device::Cpu)?;
    /// let h = AdversarialHardening { steps: 3, ..Default::default() };
    /// let hard = h.perturb(&net, &data, &[0, 5])?;
    /// let moved = hard[0].iter().zip(data.image(0)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    /// assert!(moved <= h.eps + 0.5 / 255.0 + 1e-6);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn perturb(&self, surrogate: &Network, ds: &Dataset, indices: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.validate()?;
        // A private copy: its tensors get ids from this call's counter (see Neural Cleanse).
        let net = surrogate.duplicate()?;
        let (c, h, w) = ds.shape;
        let len = c * h * w;
        let mut out = Vec::with_capacity(indices.len());
        for chunk in indices.chunks(self.batch_size) {
            let n = chunk.len();
            let mut clean = Vec::with_capacity(n * len);
            for &i in chunk {
                clean.extend_from_slice(ds.try_image(i)?);
            }
            let labels: Vec<u32> = chunk.iter().map(|&i| ds.labels[i]).collect();
            let y = Tensor::from_vec(labels, n, net.device())?;
            let x0 = Tensor::from_vec(clean.clone(), (n, c, h, w), net.device())?;
            let (lo, hi) = ((&x0 - self.eps as f64)?.clamp(0f32, 1f32)?, (&x0 + self.eps as f64)?.clamp(0f32, 1f32)?);
            let mut x = x0.clone();
            for _ in 0..self.steps {
                let var = Var::from_tensor(&x)?;
                let loss = cross_entropy(&net.forward(var.as_tensor(), false)?, &y, 0.0)?;
                let grads = loss.backward()?;
                let g = grads.get(var.as_tensor()).ok_or_else(|| Error::invalid("adversarial hardening", "the surrogate's loss does not depend on its input"))?;
                x = (x + (g.sign()? * self.step_size as f64)?)?.maximum(&lo)?.minimum(&hi)?.detach();
            }
            let pixels: Vec<f32> = x.flatten_all()?.to_vec1()?;
            // Stored as an 8-bit image, as a poisoned dataset is distributed.
            out.extend(pixels.chunks(len).map(|img| img.iter().map(|v| (v * 255.0).round() / 255.0).collect()));
        }
        Ok(out)
    }

    /// `ds` poisoned as `cfg` says (clean-label), each poison the hardened original with the
    /// trigger stamped on it (placements drawn as [`poison`] draws them).
    pub fn poison(&self, ds: &Dataset, cfg: &PoisonConfig, surrogate: &Network) -> Result<Dataset> {
        if !cfg.clean_label {
            return Err(Error::invalid("hardening", "label-consistent hardening is for clean-label poisons; set clean_label"));
        }
        let mut poisoned = poison(ds, cfg)?;
        let chosen: Vec<usize> = poisoned.poisoned_flags().iter().enumerate().filter(|(_, &f)| f).map(|(i, _)| i).collect();
        let hardened = self.perturb(surrogate, ds, &chosen)?;
        let mut rng = stream(cfg.seed, "trigger.placement");
        for (&i, image) in chosen.iter().zip(hardened) {
            let dst = poisoned.image_mut(i);
            dst.copy_from_slice(&image);
            cfg.trigger.apply(dst, ds.shape, Some(&mut rng))?;
        }
        Ok(poisoned)
    }
}
