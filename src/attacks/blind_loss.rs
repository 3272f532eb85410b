//! Blind backdoors (Bagdasaryan & Shmatikov 2021, "Blind Backdoors in Deep Learning Models"):
//! the attacker changes only the code that computes the training loss. It sees neither the
//! data nor the model: every batch gets a triggered copy labelled with the target, and the
//! loss on it is added to the normal loss, the two balanced per batch by MGDA (the
//! multiple-gradient descent of Sener & Koltun 2018) so that the backdoor costs the main task
//! as little as possible. No training sample is poisoned.

use super::poison::TargetMode;
use super::trigger::Trigger;
use crate::error::{Error, Result};
use crate::data::Dataset;
use crate::models::Network;
use crate::train::{cross_entropy, train_with, History, Objective, Step, TrainConfig};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

/// How the normal and the backdoor loss are weighted in every batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossBalance {
    /// The paper's: the weights of the minimum-norm point of the convex hull of the two
    /// gradients (MGDA), after BackdoorBench's `loss+` normalisation of each gradient by
    /// min(loss x gradient norm, 10).
    Mgda,
    /// Fixed weights (BackdoorBench's `fixed` mode: normal 1.0, backdoor 0.9).
    Fixed { normal: f64, backdoor: f64 },
}

/// The compromised loss: which weighting, and when the backdoor task joins.
///
/// Defaults: MGDA with `loss+` normalisation (the paper and BackdoorBench's `cifar10_mgda`),
/// the backdoor task from epoch 3 on. Deviation: the authors' code adds the backdoor task once
/// the mean normal loss of the last 1000 batches is below 1.0 (about 3 epochs of CIFAR-10 at
/// batch 128); a fixed epoch keeps a run resumed from its checkpoint identical to an
/// uninterrupted one.
///
/// ```
/// use transferlab::attacks::{BlindLoss, LossBalance};
/// assert_eq!(BlindLoss::default().balance, LossBalance::Mgda);
/// assert!(BlindLoss { balance: LossBalance::Fixed { normal: 1.0, backdoor: -1.0 }, ..Default::default() }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlindLoss {
    pub balance: LossBalance,
    /// Epochs of normal training before the backdoor loss is added.
    pub warmup_epochs: usize,
}

impl Default for BlindLoss {
    fn default() -> Self {
        Self { balance: LossBalance::Mgda, warmup_epochs: 2 }
    }
}

impl BlindLoss {
    /// Refuse weights that are not finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if let LossBalance::Fixed { normal, backdoor } = self.balance {
            if !(normal.is_finite() && normal >= 0.0 && backdoor.is_finite() && backdoor > 0.0) {
                return Err(Error::invalid(
                    "blind loss weights",
                    format!("normal {normal} must be >= 0 and backdoor {backdoor} positive; BackdoorBench's fixed mode uses 1.0 and 0.9"),
                ));
            }
        }
        Ok(())
    }

    /// Train `net` on `data` (unpoisoned: the attacker never touches it) with this loss:
    /// `trigger` stamped on a copy of every batch, relabelled by `target`.
    pub fn train_victim(&self, net: &mut Network, data: &Dataset, eval: Option<&Dataset>, cfg: &TrainConfig, trigger: &Trigger, target: TargetMode) -> Result<History> {
        self.validate()?;
        trigger.validate(data.shape)?;
        target.validate(data.num_classes())?;
        // MGDA needs the gradients of the variables the trainer trains: take them after the
        // trainer's own rebuild of a network made on another thread.
        net.make_local()?;
        let vars = net.trainable_vars().into_iter().map(|(_, v)| v).collect();
        let num_classes = net.spec().num_classes;
        let mut objective = BlindObjective { loss: self.clone(), trigger: trigger.clone(), target, num_classes, label_smoothing: cfg.label_smoothing, vars };
        train_with(net, data, eval, cfg, &mut objective)
    }
}

struct BlindObjective {
    loss: BlindLoss,
    trigger: Trigger,
    target: TargetMode,
    num_classes: usize,
    label_smoothing: f64,
    vars: Vec<Var>,
}

impl BlindObjective {
    /// The batch with the trigger on every image and the target's labels.
    fn backdoor_batch(&self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let (n, c, h, w) = s.x.dims4()?;
        let mut pixels: Vec<f32> = s.x.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        let len = c * h * w;
        for image in pixels.chunks_mut(len) {
            self.trigger.apply(image, (c, h, w), Some(s.rng))?;
        }
        let labels: Vec<u32> = s.y.to_device(&Device::Cpu)?.to_vec1::<u32>()?.iter().map(|&y| self.target.target_for(y, self.num_classes)).collect();
        Ok((Tensor::from_vec(pixels, (n, c, h, w), s.x.device())?, Tensor::from_vec(labels, n, s.x.device())?))
    }

    /// MGDA's two-task weights (normal, backdoor).
    fn mgda_scales(&self, normal: &Tensor, backdoor: &Tensor) -> Result<(f64, f64)> {
        let gn = normal.backward()?;
        let gb = backdoor.backward()?;
        let (nn, nb, dot) = self.gradient_products(&gn, &gb)?;
        // loss+ : each gradient divided by min(loss x its norm, 10).
        let kn = (normal.to_scalar::<f32>()? as f64 * nn.sqrt()).min(10.0) + 1e-5;
        let kb = (backdoor.to_scalar::<f32>()? as f64 * nb.sqrt()).min(10.0) + 1e-5;
        let (v11, v22, v12) = (nn / (kn * kn), nb / (kb * kb), dot / (kn * kb));
        Ok(min_norm_weights(v11, v12, v22))
    }

    /// |g_n|^2, |g_b|^2 and <g_n, g_b> over every trainable variable.
    fn gradient_products(&self, gn: &GradStore, gb: &GradStore) -> Result<(f64, f64, f64)> {
        let (mut nn, mut nb, mut dot) = (0f64, 0f64, 0f64);
        let sum = |t: Tensor| -> Result<f64> { Ok(t.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?) };
        for var in &self.vars {
            let (a, b) = (gn.get(var.as_tensor()), gb.get(var.as_tensor()));
            if let Some(a) = a {
                nn += sum(a.sqr()?)?;
            }
            if let Some(b) = b {
                nb += sum(b.sqr()?)?;
            }
            if let (Some(a), Some(b)) = (a, b) {
                dot += sum((a * b)?)?;
            }
        }
        Ok((nn, nb, dot))
    }
}

/// The weights (c, 1 - c) of the minimum-norm point c x1 + (1 - c) x2 given the inner products
/// of the two vectors, clamped to [0.001, 0.999] as the authors' solver does at the ends.
fn min_norm_weights(v11: f64, v12: f64, v22: f64) -> (f64, f64) {
    let c = if v12 >= v11 {
        0.999
    } else if v12 >= v22 {
        0.001
    } else {
        (v22 - v12) / (v11 + v22 - 2.0 * v12)
    };
    (c, 1.0 - c)
}

impl Objective for BlindObjective {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let logits = s.net.forward(s.x, true)?;
        let normal = cross_entropy(&logits, s.y, self.label_smoothing)?;
        if s.epoch < self.loss.warmup_epochs {
            return Ok((normal, logits));
        }
        let (xb, yb) = self.backdoor_batch(s)?;
        let backdoor = cross_entropy(&s.net.forward(&xb, true)?, &yb, self.label_smoothing)?;
        let (a, b) = match self.loss.balance {
            LossBalance::Fixed { normal, backdoor } => (normal, backdoor),
            LossBalance::Mgda => self.mgda_scales(&normal, &backdoor)?,
        };
        Ok((((normal * a)? + (backdoor * b)?)?, logits))
    }
}

#[cfg(test)]
mod tests {
    use super::min_norm_weights;

    #[test]
    fn min_norm_point_of_two_vectors() {
        // Orthogonal unit vectors: the midpoint.
        assert_eq!(min_norm_weights(1.0, 0.0, 1.0), (0.5, 0.5));
        // x1 = (1, 0), x2 = (0, 2): c = 4 / 5 minimises |(c, 2 - 2c)|.
        let (c, d) = min_norm_weights(1.0, 0.0, 4.0);
        assert!((c - 0.8).abs() < 1e-12 && (d - 0.2).abs() < 1e-12);
        // x2 = 2 x1: x1 itself is the minimum-norm point (clamped end).
        let (c, d) = min_norm_weights(1.0, 2.0, 4.0);
        assert!(c == 0.999 && (d - 0.001).abs() < 1e-12);
    }
}
