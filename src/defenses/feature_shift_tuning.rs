//! Feature Shift Tuning (Min et al. 2023, "Towards Stable Backdoor Purification through
//! Feature Shift Tuning"): fine-tune with a re-initialised linear head that is pushed away from
//! the compromised head (a penalty on their inner product, the head's norm held at the
//! original's), so that the features shift off the backdoor's direction; vanilla fine-tuning
//! leaves them entangled at low poisoning rates.

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

/// FST's settings. Defaults from the authors' code (`fst.py`, as BackdoorBench runs it): alpha
/// 0.2, 15 epochs of SGD (momentum 0.9, no weight decay) at 0.01 cosine-annealed to 0, batch
/// 128 (BackdoorBench's), the new head renormalised to the original head's Frobenius norm
/// after every step.
#[derive(Debug, Clone)]
pub struct FstConfig {
    /// Weight of the inner product between the new and the original head weights.
    pub alpha: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub augment: Augment,
    /// Seeds the new head and the batches.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for FstConfig {
    fn default() -> Self {
        Self { alpha: 0.2, epochs: 15, batch_size: 128, lr: 0.01, augment: Augment::none(), seed: 0, progress: ProgressMode::Hidden }
    }
}

/// What FST did.
#[derive(Debug, Clone)]
pub struct FstResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    /// Cosine similarity of the final head with the compromised one (the penalty drives it
    /// negative).
    pub head_cosine: f64,
}

impl Outcome for FstResult {
    fn to_dataframe(&self) -> Result<DataFrame> {
        defence_table(&("no defence".to_string(), self.before), &[("FST".to_string(), self.after)])
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure("Feature Shift Tuning", &[("no defence".to_string(), self.before), ("FST".to_string(), self.after)]))
    }

    fn summary(&self) -> String {
        format!(
            "FST fine-tuned with a re-initialised head pushed away from the compromised one (final head cosine {:.2}): {} (DER {:.2}).",
            self.head_cosine,
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

/// Cross-entropy plus alpha times the inner product of the head with the compromised head. The
/// renormalisation the authors apply after each optimiser step happens here before the next
/// forward pass (and once more after training), which is the same sequence of weights.
struct FeatureShift {
    head: Var,
    original: Tensor,
    norm: f64,
    alpha: f64,
}

impl FeatureShift {
    fn renormalise(&self) -> Result<()> {
        let w = self.head.as_tensor();
        let current = frobenius_norm(w)?;
        if current > 0.0 {
            self.head.set(&(w * (self.norm / current))?)?;
        }
        Ok(())
    }
}

fn frobenius_norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)
}

impl Objective for FeatureShift {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        self.renormalise()?;
        let logits = s.net.forward(s.x, true)?;
        let inner = (self.head.as_tensor() * &self.original)?.sum_all()?;
        Ok(((cross_entropy(&logits, s.y, 0.0)? + (inner * self.alpha)?)?, logits))
    }
}

/// Run FST on a copy of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{feature_shift_tuning as fst, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let r = fst::run(&net, &data, &probe, &fst::FstConfig { epochs: 1, ..Default::default() }).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 2);
/// assert!(fst::run(&net, &data, &probe, &fst::FstConfig { alpha: -1.0, ..Default::default() }).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &FstConfig) -> Result<FstResult> {
    if !(cfg.alpha.is_finite() && cfg.alpha >= 0.0) || !(cfg.lr.is_finite() && cfg.lr > 0.0) || cfg.epochs == 0 {
        return Err(Error::invalid(
            "FST",
            format!("alpha {} must be >= 0, lr {} positive, epochs {} at least 1 (the paper: 0.2, 0.01, 15)", cfg.alpha, cfg.lr, cfg.epochs),
        ));
    }
    check_data(net, clean, "clean data")?;
    let before = probe.measure(net)?;
    let head_name = format!("{}.weight", net.spec().head_name());
    let original = net.named_tensors()?.remove(&head_name).ok_or_else(|| Error::invalid("model", format!("no head weight {head_name}")))?;
    let norm = frobenius_norm(&original)?;
    let mut model = net.duplicate()?;
    model.unfreeze_all();
    model.replace_head(net.spec().num_classes, cfg.seed)?;
    let head = model.trainable_vars().into_iter().find(|(n, _)| *n == head_name).map(|(_, v)| v);
    let head = head.ok_or_else(|| Error::invalid("model", format!("the new head {head_name} is not trainable")))?;
    let mut objective = FeatureShift { head, original: original.to_device(model.device())?, norm, alpha: cfg.alpha };
    let tc = TrainConfig::sgd_cosine(cfg.epochs, cfg.batch_size, cfg.lr, 0.0, cfg.augment, cfg.seed, cfg.progress);
    train_with(&mut model, clean, None, &tc, &mut objective)?;
    objective.renormalise()?;
    let w = objective.head.as_tensor().flatten_all()?;
    let o = objective.original.flatten_all()?;
    let head_cosine = ((&w * &o)?.sum_all()?.to_scalar::<f32>()? as f64) / (norm * norm).max(f64::MIN_POSITIVE);
    Ok(FstResult { before, after: probe.measure(&model)?, head_cosine })
}
