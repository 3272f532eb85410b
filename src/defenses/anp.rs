//! Adversarial Neuron Pruning (Wu & Wang 2021, "Adversarial Neuron Perturbation Exposes
//! Backdoors in Pretrained Models"): backdoored neurons are sensitive. Perturb every neuron
//! (batch-norm channel) multiplicatively within eps, adversarially to the clean loss; the
//! backdoored model collapses towards the target under such perturbations where a clean one
//! does not. Learn a mask over the neurons that keeps the clean loss low both with and without
//! the worst perturbation; the neurons whose masks fall are the sensitive ones, and pruning them
//! removes the backdoor.
//!
//! At our miniature scale the claim holds only in part: on the digits' batch-norm ConvNet the
//! 8 lowest of 64 masks carry part of the backdoor (ASR 100 -> 79 %, where the unperturbed
//! ablation's 8 leave 100 %), and the paper's threshold prunes a single neuron (see the test
//! `anp_masks_rank_backdoor_neurons_before_the_unperturbed_ablation`).

use super::neuron_masks::{clean_batches, ChannelMasks, NeuronMasks};
use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Figure, Outcome};
use crate::rng::stream;
use crate::train::{cross_entropy, Optimizer, OptimizerConfig, Progress, ProgressMode};
use candle_core::Tensor;
use polars::prelude::{DataFrame, NamedFrom, Series};
use rand::Rng;

/// ANP's settings. Defaults from the authors' code (as BackdoorBench runs it): perturbation
/// budget eps 0.4 with one signed ascent step of size eps from a uniform random start,
/// trade-off alpha 0.2 (weight of the natural loss; 0.8 on the perturbed one), masks learnt by
/// SGD (lr 0.2, momentum 0.9) for 2000 iterations of batch 128 and clipped to [0, 1], neurons
/// whose mask ends below 0.2 pruned (the paper's threshold; the authors' code can also prune a
/// fixed number of the lowest masks, [`AnpPruning::Count`]).
///
/// Deviations: the perturbation is clipped to [-eps, eps] after its step (the paper's
/// constraint; the authors' code lets a random start plus a step reach 2 eps); the authors
/// sweep the pruning threshold against the backdoored test set, which a defender does not
/// have, so the rule here is fixed in advance.
///
/// ```
/// use transferlab::defenses::AnpConfig;
/// let cfg = AnpConfig::default();
/// assert_eq!((cfg.eps, cfg.alpha, cfg.iterations), (0.4, 0.2, 2000));
/// ```
#[derive(Debug, Clone)]
pub struct AnpConfig {
    /// Bound on each neuron's multiplicative perturbation of its weight and bias.
    pub eps: f64,
    /// Ascent steps on the perturbation per iteration.
    pub steps: usize,
    /// Weight of the natural (unperturbed) loss; 1 - alpha weighs the perturbed one.
    pub alpha: f64,
    pub lr: f64,
    pub iterations: usize,
    /// Which neurons are pruned once the masks are learnt.
    pub pruning: AnpPruning,
    pub batch_size: usize,
    pub augment: Augment,
    /// Seeds the batches, the augmentation and the perturbations' random starts.
    pub seed: u64,
    pub progress: ProgressMode,
}

/// How ANP turns learnt masks into pruned neurons (the authors' `--pruning-by`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnpPruning {
    /// Every neuron whose mask is below this value (the paper: 0.2).
    Threshold(f64),
    /// This many neurons of lowest mask, over all layers.
    Count(usize),
}

impl Default for AnpConfig {
    fn default() -> Self {
        Self {
            eps: 0.4,
            steps: 1,
            alpha: 0.2,
            lr: 0.2,
            iterations: 2000,
            pruning: AnpPruning::Threshold(0.2),
            batch_size: 128,
            augment: Augment::none(),
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl AnpConfig {
    fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps >= 0.0) || !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("ANP", format!("eps {} must be >= 0 and lr {} positive (the paper: 0.4, 0.2)", self.eps, self.lr)));
        }
        let mut bounded = vec![("alpha", self.alpha)];
        if let AnpPruning::Threshold(t) = self.pruning {
            bounded.push(("pruning threshold", t));
        }
        for (what, v) in bounded {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::invalid("ANP", format!("{what} {v} is outside [0, 1] (the paper: 0.2)")));
            }
        }
        if self.iterations == 0 || self.batch_size == 0 || self.steps == 0 {
            return Err(Error::invalid("ANP", "iterations, steps and batch size must be at least 1 (the paper: 2000, 1, 128)"));
        }
        Ok(())
    }
}

/// What ANP did.
#[derive(Debug, Clone)]
pub struct AnpResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    pub masks: Vec<NeuronMasks>,
}

impl AnpResult {
    /// Neurons pruned over all layers.
    pub fn pruned_neurons(&self) -> usize {
        NeuronMasks::pruned_in(&self.masks)
    }
}

impl Outcome for AnpResult {
    /// The defence table plus `pruned_neurons`.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&("no defence".to_string(), self.before), &[("ANP".to_string(), self.after)])?;
        df.with_column(Series::new("pruned_neurons".into(), vec![0u64, self.pruned_neurons() as u64]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(
            &format!("Adversarial Neuron Pruning: {} neurons pruned", self.pruned_neurons()),
            &[("no defence".to_string(), self.before), ("ANP".to_string(), self.after)],
        ))
    }

    fn summary(&self) -> String {
        let neurons: usize = self.masks.iter().map(|m| m.values.len()).sum();
        format!(
            "ANP pruned {} of {} neurons, those whose masks fell under adversarial neuron perturbation: {} (DER {:.2}).",
            self.pruned_neurons(),
            neurons,
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

/// Run ANP on a copy of `net` with the defender's `clean` data; score the pruned copy with
/// `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{anp, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let net = Network::new(&ModelSpec::named("resnet8", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let r = anp::run(&net, &data, &probe, &anp::AnpConfig { iterations: 2, ..Default::default() }).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 2);
/// assert!(anp::run(&net, &data, &probe, &anp::AnpConfig { alpha: 2.0, ..Default::default() }).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &AnpConfig) -> Result<AnpResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let masks = ChannelMasks::new(net, "ANP")?;
    if let AnpPruning::Count(k) = cfg.pruning {
        let neurons: usize = masks.masks.iter().map(|(_, m)| m.elem_count()).sum();
        if k > neurons {
            return Err(Error::invalid("ANP", format!("pruning {k} neurons asked for; the model has {neurons} batch-norm channels")));
        }
    }
    let before = probe.measure(net)?;
    // The masked forward passes run in training mode and move the running statistics: on a
    // copy, so that the pruned model keeps the original's.
    let work = net.duplicate()?;
    let mut mask_optimizer = Optimizer::new(OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 0.0 })?;
    let noise = masks.zero_noise()?;
    let noise_vars: Vec<_> = noise.weight.iter().chain(&noise.bias).cloned().collect();
    let mut rng = stream(cfg.seed, "anp.noise");
    let progress = Progress::new("ANP", cfg.iterations as u64, cfg.progress);
    let mut done = 0;
    let mut epoch = 0u64;
    while done < cfg.iterations {
        for (x, y) in clean_batches(clean, cfg.batch_size, cfg.augment, cfg.seed, "anp", epoch, work.device())? {
            if done == cfg.iterations {
                break;
            }
            if cfg.eps > 0.0 {
                // A random start within the budget, then ascent on the clean loss.
                for (_, v) in &noise_vars {
                    let n = v.as_tensor().dims1()?;
                    let start: Vec<f32> = (0..n).map(|_| rng.random_range(-cfg.eps..=cfg.eps) as f32).collect();
                    v.set(&Tensor::from_vec(start, n, v.device())?)?;
                }
                for _ in 0..cfg.steps {
                    let logits = masks.apply(&work, Some(&noise))?.forward_train(&x)?;
                    let grads = cross_entropy(&logits, &y, 0.0)?.backward()?;
                    // Signed steps of eps / steps, as the authors' `sign_grad`: the raw
                    // gradients of the loss by a channel's scale are tiny, and a step along them
                    // would leave the perturbation where its random start put it.
                    for (_, v) in &noise_vars {
                        if let Some(g) = grads.get(v.as_tensor()) {
                            let stepped = (v.as_tensor() + (g.sign()? * (cfg.eps / cfg.steps as f64))?)?;
                            v.set(&stepped.clamp(-cfg.eps as f32, cfg.eps as f32)?)?;
                        }
                    }
                }
            }
            let natural = cross_entropy(&masks.apply(&work, None)?.forward_train(&x)?, &y, 0.0)?;
            let loss = if cfg.eps > 0.0 {
                let perturbed = cross_entropy(&masks.apply(&work, Some(&noise))?.forward_train(&x)?, &y, 0.0)?;
                ((natural * cfg.alpha)? + (perturbed * (1.0 - cfg.alpha))?)?
            } else {
                natural
            };
            mask_optimizer.step(&masks.masks, &loss.backward()?, cfg.lr)?;
            masks.clamp()?;
            done += 1;
            progress.inc(1);
        }
        epoch += 1;
    }
    progress.finish();
    let (pruned, masks) = match cfg.pruning {
        AnpPruning::Threshold(t) => masks.prune(net, t)?,
        AnpPruning::Count(k) => masks.prune_lowest(net, k)?,
    };
    Ok(AnpResult { before, after: probe.measure(&pruned)?, masks })
}
