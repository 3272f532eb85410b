//! LIRA (Doan et al. 2021, "LIRA: Learnable, Imperceptible and Robust Backdoor Attacks"): the
//! attacker controls training and learns the trigger with the classifier. A generator network
//! turns each image into its own perturbation of at most epsilon per pixel; the generator is
//! trained to send perturbed images to the target, the classifier to keep clean images right
//! and send perturbed ones to the target, in alternation; then the classifier is fine-tuned
//! against the frozen generator.

use super::metrics::{attack_sentence, metrics_figure, metrics_on_triggered, metrics_table, BackdoorMetrics};
use super::trigger_generator::TriggerGenerator;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{Figure, Outcome};
use crate::train::{cross_entropy, train_with, LrSchedule, Objective, Optimizer, OptimizerConfig, Step, TrainConfig};
use candle_core::{Device, Tensor};
use polars::prelude::DataFrame;

/// LIRA's settings. Defaults from the authors' code as merged into BackdoorBench
/// (`config/attack/lira/default.yaml`, `attack/lira.py`): epsilon 0.01, alpha 0.5 (the clean
/// loss's weight; the perturbed images' loss has 1 - alpha); 50 joint epochs in which every
/// batch takes one Adam step (lr 1e-4) of the generator on the perturbed images' loss and then
/// one SGD step (lr 0.01, momentum 0.9) of the classifier against the generator as it was at the
/// end of the previous epoch; then 50 epochs of classifier fine-tuning against the final
/// generator (SGD lr 0.01, momentum 0.9, weight decay 5e-4; BackdoorBench's step decay at
/// epoch 50 falls after them); batch 128; all-to-one to class 0.
///
/// Deviation: BackdoorBench adds epsilon times the generator's output to *normalised* images
/// (on CIFAR-10 about 0.0025 in pixel units); here images stay in [0, 1] and epsilon bounds the
/// perturbation in pixel units. The victim is this crate's small ConvNet unless `arch` says
/// otherwise (BackdoorBench: VGG-11 or PreAct-ResNet-18), trained without augmentation unless
/// the stages' `augment` says otherwise (BackdoorBench: random crop 5, rotation 10, flip).
///
/// ```
/// let cfg = transferlab::attacks::LiraConfig::default();
/// assert_eq!((cfg.epsilon, cfg.alpha, cfg.joint.epochs, cfg.finetune.epochs), (0.01, 0.5, 50, 50));
/// ```
#[derive(Debug, Clone)]
pub struct LiraConfig {
    /// L-inf bound of the perturbation, in pixel units ([0, 1] images).
    pub epsilon: f64,
    /// Weight of the clean loss; the perturbed images' loss has 1 - alpha.
    pub alpha: f64,
    /// Adam learning rate of the generator (joint stage).
    pub generator_lr: f64,
    /// The classifier's recipe while the generator learns with it.
    pub joint: TrainConfig,
    /// The classifier's recipe against the frozen generator (0 epochs skips the stage).
    pub finetune: TrainConfig,
    /// The attack's target class (all-to-one).
    pub target: u32,
    /// Channels of the generator's first stage (doubling at each further stage).
    pub generator_width: usize,
    /// The victim's architecture (input shape and classes come from the data).
    pub arch: Arch,
    /// Initialisation seed of the victim, the clean reference and the generator.
    pub model_seed: u64,
    pub device: Device,
}

impl Default for LiraConfig {
    fn default() -> Self {
        let stage = |weight_decay: f64| TrainConfig {
            epochs: 50,
            batch_size: 128,
            optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay },
            schedule: LrSchedule::Constant { lr: 0.01 },
            ..TrainConfig::default()
        };
        Self {
            epsilon: 0.01,
            alpha: 0.5,
            generator_lr: 1e-4,
            joint: stage(0.0),
            finetune: stage(5e-4),
            target: 0,
            generator_width: 16,
            arch: super::poisoning::victim_arch(),
            model_seed: 0,
            device: Device::Cpu,
        }
    }
}

impl LiraConfig {
    /// Refuse settings that cannot run, saying what to change.
    pub fn validate(&self, train: &Dataset) -> Result<()> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0 && self.epsilon <= 1.0) {
            return Err(Error::invalid("LIRA epsilon", format!("{}; use a pixel bound in (0, 1] (BackdoorBench: 0.01)", self.epsilon)));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::invalid("LIRA alpha", format!("{}; use a clean-loss weight in (0, 1): at 1 nothing is poisoned (LIRA: 0.5)", self.alpha)));
        }
        if self.joint.epochs == 0 {
            return Err(Error::invalid("LIRA joint epochs", "0; the generator learns only in the joint stage (LIRA: 50)"));
        }
        if self.target as usize >= train.num_classes() {
            return Err(Error::invalid("LIRA target", format!("class {} of {} classes", self.target, train.num_classes())));
        }
        ModelSpec::new(self.arch.clone(), train.shape, train.num_classes())?;
        Ok(())
    }
}

/// One batch's loss: alpha x clean cross-entropy + (1 - alpha) x cross-entropy of the images
/// perturbed by the frozen generator against the target. In the joint stage the generator
/// first takes its own step, and the frozen copy follows it at every epoch's start.
struct LiraObjective<'a> {
    cfg: &'a LiraConfig,
    /// The stage's label smoothing, on the classifier's two losses.
    label_smoothing: f64,
    frozen: TriggerGenerator,
    /// The generator being trained, its optimiser, the epoch the frozen copy was taken at,
    /// and each epoch's mean generator loss; `None` while fine-tuning.
    learning: Option<(&'a TriggerGenerator, Optimizer, usize, Vec<(f64, usize)>)>,
}

impl Objective for LiraObjective<'_> {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let n = s.x.dim(0)?;
        let target = Tensor::full(self.cfg.target, n, s.x.device())?;
        if let Some((generator, optimizer, synced, losses)) = &mut self.learning {
            if s.epoch != *synced {
                self.frozen = generator.snapshot()?;
                *synced = s.epoch;
            }
            let loss = cross_entropy(&s.net.forward(&generator.perturb(s.x, self.cfg.epsilon, true)?, true)?, &target, 0.0)?;
            optimizer.step(&generator.vars(), &loss.backward()?, self.cfg.generator_lr)?;
            if losses.len() <= s.epoch {
                losses.resize(s.epoch + 1, (0.0, 0));
            }
            losses[s.epoch].0 += loss.to_scalar::<f32>()? as f64;
            losses[s.epoch].1 += 1;
        }
        let perturbed = self.frozen.perturb(s.x, self.cfg.epsilon, false)?.detach();
        let clean = s.net.forward(s.x, true)?;
        let poisoned = s.net.forward(&perturbed, true)?;
        let smoothing = self.label_smoothing;
        let loss = ((cross_entropy(&clean, s.y, smoothing)? * self.cfg.alpha)? + (cross_entropy(&poisoned, &target, smoothing)? * (1.0 - self.cfg.alpha))?)?;
        Ok((loss, clean))
    }
}

/// What LIRA did: the victim and the same-seed clean reference measured on the same learnt
/// trigger, the generator, and its loss per joint epoch.
#[derive(Debug)]
pub struct LiraResult {
    pub config: LiraConfig,
    pub victim: BackdoorMetrics,
    pub clean_reference: BackdoorMetrics,
    /// Largest change of any test pixel by the trigger (at most epsilon).
    pub perturbation_linf: f64,
    /// Mean cross-entropy of the generator's perturbed images against the target, per joint
    /// epoch (falling as the generator and the classifier learn the backdoor together).
    pub generator_loss: Vec<f64>,
    /// The learnt trigger: [`TriggerGenerator::perturb_dataset`] applies it to any images.
    pub generator: TriggerGenerator,
}

impl LiraResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![("clean model".to_string(), self.clean_reference), ("LIRA".to_string(), self.victim)]
    }
}

impl Outcome for LiraResult {
    /// The standard metrics table: the clean reference and the victim, on the learnt trigger.
    fn to_dataframe(&self) -> Result<DataFrame> {
        metrics_table(&self.rows())
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(&format!("LIRA (epsilon {})", self.config.epsilon), &self.rows()))
    }

    fn summary(&self) -> String {
        format!(
            "LIRA (epsilon {}, largest pixel change {:.4}): {}.",
            self.config.epsilon,
            self.perturbation_linf,
            attack_sentence(&self.victim, &self.clean_reference)
        )
    }
}

/// Train a LIRA victim on `train` (the generator with it), a clean reference of the same seed
/// and length of training, and measure both on `test` with the learnt trigger.
///
/// ```
/// use transferlab::attacks::{lira, LiraConfig};
/// use transferlab::report::Outcome;
/// use transferlab::train::{ProgressMode, TrainConfig};
/// let data = transferlab::data::digits()?.per_class_sample(20, 0)?;
/// let (test, train) = data.split(0.25, 0, true)?;
/// let quick = |t: TrainConfig| TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..t };
/// let d = LiraConfig::default();
/// let cfg = LiraConfig { joint: quick(d.joint.clone()), finetune: quick(d.finetune.clone()), ..d };
/// let result = lira::run(&train, &test, &cfg)?;
/// assert!(result.perturbation_linf <= cfg.epsilon + 1e-6);
/// assert_eq!(result.to_dataframe()?.height(), 2);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train: &Dataset, test: &Dataset, cfg: &LiraConfig) -> Result<LiraResult> {
    cfg.validate(train)?;
    if test.shape != train.shape {
        return Err(Error::invalid("LIRA test set", format!("images {:?}, the training set's are {:?}", test.shape, train.shape)));
    }
    let spec = ModelSpec::new(cfg.arch.clone(), train.shape, train.num_classes())?;
    let generator = TriggerGenerator::new(train.shape, cfg.generator_width, cfg.model_seed, &cfg.device)?;
    let mut victim = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    let adam = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let mut joint = LiraObjective { cfg, label_smoothing: cfg.joint.label_smoothing, frozen: generator.snapshot()?, learning: Some((&generator, adam, 0, Vec::new())) };
    train_with(&mut victim, train, None, &cfg.joint, &mut joint)?;
    let generator_loss = joint.learning.take().map(|l| l.3.iter().map(|&(sum, n)| sum / n.max(1) as f64).collect()).unwrap_or_default();
    if cfg.finetune.epochs > 0 {
        let mut finetune = LiraObjective { cfg, label_smoothing: cfg.finetune.label_smoothing, frozen: generator.snapshot()?, learning: None };
        train_with(&mut victim, train, None, &cfg.finetune, &mut finetune)?;
    }
    // The clean reference trains as long as the victim, with the fine-tuning recipe.
    let mut reference = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    let clean_recipe = TrainConfig { epochs: cfg.joint.epochs + cfg.finetune.epochs, ..cfg.finetune.clone() };
    crate::train::train(&mut reference, train, None, &clean_recipe)?;
    let victims: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] != cfg.target).collect();
    let chosen = test.select(&victims)?;
    let triggered = generator.perturb_dataset(&chosen, cfg.epsilon, &cfg.device)?;
    let perturbation_linf = triggered.pixels().iter().zip(chosen.pixels()).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    // The trigger is made once, from the test set's non-target images, and measured on both models.
    let (victim_metrics, clean_metrics) = (metrics_on_triggered(&victim, test, &triggered, cfg.target)?, metrics_on_triggered(&reference, test, &triggered, cfg.target)?);
    Ok(LiraResult { config: cfg.clone(), victim: victim_metrics, clean_reference: clean_metrics, perturbation_linf, generator_loss, generator })
}
