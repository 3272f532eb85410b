//! FT-SAM (Zhu et al. 2023, "Enhancing Fine-Tuning Based Backdoor Defense with
//! Sharpness-Aware Minimization"): fine-tune on the defender's clean data with adaptive
//! sharpness-aware minimisation. The backdoor lives in neurons with large weight norms that
//! plain fine-tuning barely moves; ASAM's weight-scaled ascent step perturbs exactly those, and
//! the descent from the perturbed point shrinks them, so the backdoor is forgotten while the
//! clean task is relearnt.

use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Figure, Outcome};
use crate::train::{cross_entropy, train_with, Objective, ProgressMode, Step, TrainConfig};
use candle_core::{Tensor, Var};
use polars::prelude::DataFrame;

/// FT-SAM's settings. Defaults from BackdoorBench's `ft-sam` (the authors' configuration):
/// adaptive SAM with rho 2.0, label smoothing 0.1, SGD (momentum 0.9, weight decay 5e-4) at
/// 0.01 cosine-annealed to 0, batch 256, 100 epochs on the defender's 5 % of CIFAR-10 (about
/// 1000 steps).
///
/// ```
/// use transferlab::defenses::FtSamConfig;
/// let cfg = FtSamConfig::default();
/// assert_eq!((cfg.rho, cfg.adaptive, cfg.epochs), (2.0, true, 100));
/// ```
#[derive(Debug, Clone)]
pub struct FtSamConfig {
    /// Radius of the ascent step (in ASAM's weight-scaled norm when `adaptive`). 0 is plain
    /// fine-tuning with the same schedule: the defence's ablation.
    pub rho: f64,
    /// ASAM (Kwon et al. 2021): the perturbation of each weight is scaled by its magnitude.
    pub adaptive: bool,
    pub label_smoothing: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub augment: Augment,
    /// Seeds the batches and the augmentation.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for FtSamConfig {
    fn default() -> Self {
        Self {
            rho: 2.0,
            adaptive: true,
            label_smoothing: 0.1,
            epochs: 100,
            batch_size: 256,
            lr: 0.01,
            weight_decay: 5e-4,
            augment: Augment::none(),
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl FtSamConfig {
    fn validate(&self) -> Result<()> {
        let fine = |v: f64| v.is_finite() && v >= 0.0;
        if !fine(self.rho) || !(self.lr.is_finite() && self.lr > 0.0) || !fine(self.weight_decay) {
            return Err(Error::invalid(
                "FT-SAM",
                format!("rho {} and weight decay {} must be >= 0 and lr {} positive (the paper: 2.0, 5e-4, 0.01)", self.rho, self.weight_decay, self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid("FT-SAM", format!("label smoothing {} is outside [0, 1); the paper uses 0.1", self.label_smoothing)));
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::invalid("FT-SAM", "epochs and batch size must be at least 1 (the paper: 100 epochs of 256)"));
        }
        Ok(())
    }

    fn train_config(&self) -> TrainConfig {
        TrainConfig::sgd_cosine(self.epochs, self.batch_size, self.lr, self.weight_decay, self.augment, self.seed, self.progress)
    }
}

/// What FT-SAM did: the backdoor before and after.
#[derive(Debug, Clone)]
pub struct FtSamResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    /// The mean norm of the ascent step over training (0 for the ablation): how far SAM
    /// looked around the weights.
    pub mean_perturbation_norm: f64,
}

impl Outcome for FtSamResult {
    fn to_dataframe(&self) -> Result<DataFrame> {
        defence_table(&("no defence".to_string(), self.before), &[("FT-SAM".to_string(), self.after)])
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure("FT-SAM", &[("no defence".to_string(), self.before), ("FT-SAM".to_string(), self.after)]))
    }

    fn summary(&self) -> String {
        let setting = if self.mean_perturbation_norm > 0.0 {
            format!("FT-SAM fine-tuned with sharpness-aware minimisation (mean perturbation norm {:.3})", self.mean_perturbation_norm)
        } else {
            "FT-SAM's ablation (rho 0: plain fine-tuning on the same schedule)".to_string()
        };
        format!(
            "{setting}: {} (DER {:.2}).",
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

/// Sharpness-aware minimisation as an objective: the loss's gradient at the weights moves them
/// to the worst point within rho (scaled by |w| when adaptive); the loss returned is the one
/// there, so the trainer's gradient is SAM's; [`Objective::after_backward`] puts the weights
/// back before the optimiser steps from them.
struct SharpnessAware {
    rho: f64,
    adaptive: bool,
    label_smoothing: f64,
    vars: Vec<Var>,
    saved: Vec<Tensor>,
    perturbation_norms: Vec<f64>,
}

impl Objective for SharpnessAware {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let logits = s.net.forward(s.x, true)?;
        let loss = cross_entropy(&logits, s.y, self.label_smoothing)?;
        if self.rho == 0.0 {
            return Ok((loss, logits));
        }
        let grads = loss.backward()?;
        let mut scaled = Vec::with_capacity(self.vars.len());
        let mut norm_sq = 0f64;
        for var in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                scaled.push(None);
                continue;
            };
            // ASAM's T_w g, with T_w = |w|; its norm normalises the step, and T_w^2 g is the step.
            let t = if self.adaptive { (var.as_tensor().abs()? * g)? } else { g.clone() };
            norm_sq += t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            scaled.push(Some(if self.adaptive { (var.as_tensor().abs()? * t)? } else { t }));
        }
        let scale = self.rho / (norm_sq.sqrt() + 1e-12);
        self.saved.clear();
        let mut step_sq = 0f64;
        for (var, step) in self.vars.iter().zip(scaled) {
            let w = var.as_tensor().copy()?;
            if let Some(step) = step {
                let e = (step * scale)?;
                step_sq += e.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                var.set(&(&w + e)?)?;
            }
            self.saved.push(w);
        }
        self.perturbation_norms.push(step_sq.sqrt());
        let perturbed = s.net.forward(s.x, true)?;
        Ok((cross_entropy(&perturbed, s.y, self.label_smoothing)?, logits))
    }

    fn after_backward(&mut self, _grads: &candle_core::backprop::GradStore) -> Result<()> {
        for (var, w) in self.vars.iter().zip(self.saved.drain(..)) {
            var.set(&w)?;
        }
        Ok(())
    }
}

/// Run FT-SAM on a copy of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{ft_sam, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let r = ft_sam::run(&net, &data, &probe, &ft_sam::FtSamConfig { epochs: 2, ..Default::default() }).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 2);
/// assert!(ft_sam::run(&net, &data, &probe, &ft_sam::FtSamConfig { rho: -1.0, ..Default::default() }).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &FtSamConfig) -> Result<FtSamResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let before = probe.measure(net)?;
    let mut model = net.duplicate()?;
    model.unfreeze_all();
    // The trainer rebuilds a network made elsewhere before it trains; the vars SAM moves
    // must be the ones it trains, so take them after that.
    model.make_local()?;
    let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut objective = SharpnessAware {
        rho: cfg.rho,
        adaptive: cfg.adaptive,
        label_smoothing: cfg.label_smoothing,
        vars,
        saved: Vec::new(),
        perturbation_norms: Vec::new(),
    };
    train_with(&mut model, clean, None, &cfg.train_config(), &mut objective)?;
    let n = objective.perturbation_norms.len().max(1) as f64;
    Ok(FtSamResult { before, after: probe.measure(&model)?, mean_perturbation_norm: objective.perturbation_norms.iter().sum::<f64>() / n })
}
