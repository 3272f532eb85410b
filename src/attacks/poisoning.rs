//! Poisoning attacks as one runner: poison a training set (BadNets patch, Blended noise,
//! SIG's sinusoid, FTrojan's frequency trigger; clean-label, all-to-one or all-to-all, fixed or
//! random placement) or compromise the training loss (WaNet's noise mode, BppAttack's negative
//! samples, Blind backdoors),
//! train a victim and the same-seed clean reference, and report CA / ASR / RA.
//!
//! Gu et al. 2017 (BadNets), Chen et al. 2017 (Blended), Turner et al. 2019 (clean-label),
//! Barni et al. 2019 (SIG), Wang et al. 2022 (FTrojan), Nguyen & Tran 2021 (WaNet),
//! Bagdasaryan & Shmatikov 2021 (Blind); defaults follow BackdoorBench.

use super::metrics::{attack_sentence, evaluate_backdoor, metrics_figure, metrics_table, percent, BackdoorMetrics};
use super::poison::{poison, PoisonConfig, TargetMode};
use super::adversarial_hardening::AdversarialHardening;
use super::blind_loss::BlindLoss;
use super::frequency_trigger::FrequencyTrigger;
use super::squeeze_negatives::SqueezeNegatives;
use super::trigger::{Placement, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network, Norm};
use crate::report::{Figure, Outcome};
use crate::train::{cross_entropy, train, train_with, History, LrSchedule, Objective, OptimizerConfig, Step, TrainConfig};
use candle_core::{Device, Tensor};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// One poisoning attack: what is poisoned, the victim architecture and how it is trained.
///
/// `Default` is BackdoorBench's BadNets: a white 3x3 patch in the bottom-right corner, 10 % of
/// the training set poisoned, all-to-one to class 0. Deviation: BackdoorBench trains a
/// PreAct-ResNet-18 on CIFAR-10 for 100 epochs; the default victim here is a small ConvNet
/// (width 32, depth 2, instance norm) trained for 15 epochs (SGD, momentum 0.9, cosine from 0.05), so that a run on the 8x8 digits
/// takes seconds on 2 CPU cores. Both are plain fields: set `arch`/`train` for the real thing.
///
/// ```
/// use transferlab::attacks::PoisoningAttackConfig;
/// let cfg = PoisoningAttackConfig::default();
/// assert_eq!(cfg.poison.rate, 0.1);
/// assert_eq!(PoisoningAttackConfig::blended().name, "Blended");
/// ```
#[derive(Debug, Clone)]
pub struct PoisoningAttackConfig {
    /// Row label in tables and figures.
    pub name: String,
    /// Trigger, rate, target mode, clean-label flag and the poisoning seed.
    pub poison: PoisonConfig,
    /// The victim's architecture (input shape and classes come from the data).
    pub arch: Arch,
    /// How the victim and the clean reference are trained (same config, same seed).
    pub train: TrainConfig,
    /// Initialisation seed of both models: the clean reference differs only by the poison.
    pub model_seed: u64,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
    /// WaNet's noise mode (warp triggers only): in every training batch, this many times the
    /// poisoning rate of the batch's clean samples (WaNet's cross ratio, 2) are warped with
    /// the trigger's warp plus up to a pixel of random jitter and keep their labels, so that
    /// the victim learns the exact warp rather than "any warp". `None` trains normally.
    pub noise_mode: Option<f64>,
    /// BppAttack's negative samples (colour-depth triggers only): in every training batch this
    /// fraction of the batch (clean samples) carries another training image's squeeze residual
    /// and keeps its label, so that the victim learns an image's own squeeze rather than "any
    /// quantisation noise" (BackdoorBench's `neg_ratio`, 0.1). `None` trains normally.
    pub negatives: Option<f64>,
    /// Label-consistent hardening (clean-label poisons only): each poison is first moved by
    /// PGD away from its true class on a surrogate (the clean reference model), then stamped.
    /// `None` poisons the images as they are.
    pub hardening: Option<AdversarialHardening>,
    /// Blind backdoors' compromised loss: every training batch also gets a copy stamped with
    /// the trigger and relabelled to the target, its loss balanced against the normal one.
    /// The attacker poisons no sample (set `poison.rate` to 0). `None` trains normally.
    pub blind: Option<BlindLoss>,
}

/// The victim the attacks of this crate train by default: a small dataset-distillation ConvNet
/// (width 32, two conv-instancenorm-ReLU-pool blocks), which trains on the embedded digits in
/// seconds on 2 cores. BackdoorBench's default is PreAct-ResNet-18 on CIFAR-10.
pub fn victim_arch() -> Arch {
    Arch::ConvNet { width: 32, depth: 2, norm: Norm::Instance }
}

/// The victim's training recipe: SGD with momentum 0.9 and weight decay 5e-4, batch 64, cosine
/// schedule from 0.05 over 15 epochs (BackdoorBench's optimiser at the miniature's scale).
pub fn victim_training() -> TrainConfig {
    TrainConfig {
        epochs: 15,
        batch_size: 64,
        optimizer: OptimizerConfig::sgd_momentum(),
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 15.0 },
        ..TrainConfig::default()
    }
}

impl Default for PoisoningAttackConfig {
    fn default() -> Self {
        Self {
            name: "BadNets".into(),
            poison: PoisonConfig::badnets(3, 0.10, 0),
            arch: victim_arch(),
            train: victim_training(),
            model_seed: 0,
            device: Device::Cpu,
            noise_mode: None,
            negatives: None,
            hardening: None,
            blind: None,
        }
    }
}

impl PoisoningAttackConfig {
    /// BadNets (Gu et al. 2017) with BackdoorBench's trigger: the default.
    pub fn badnets() -> Self {
        Self::default()
    }

    /// Blended (Chen et al. 2017): a uniform-noise pattern blended into the whole image at
    /// alpha 0.2, 10 % poisoned, all-to-one to class 0.
    pub fn blended() -> Self {
        Self { name: "Blended".into(), poison: PoisonConfig { trigger: Trigger::blend_noise(0, 0.2), ..PoisonConfig::badnets(3, 0.10, 0) }, ..Self::default() }
    }

    /// Clean-label BadNets: the patch on `rate` of the training set, all of them images of
    /// the target class with their true labels. Without Turner et al.'s adversarial or GAN
    /// perturbation of the poisons this is known to be weak. The rate is capped by the size of
    /// the target class (about 10 % of a balanced 10-class set): 5 % poisons about half of it.
    pub fn clean_label() -> Self {
        Self { name: "clean-label".into(), poison: PoisonConfig { clean_label: true, ..PoisonConfig::badnets(3, 0.05, 0) }, ..Self::default() }
    }

    /// Label-consistent (Turner et al. 2019): clean-label like [`Self::clean_label`] (5 %, half
    /// of a balanced 10-class set's target class), each poison first hardened by PGD on the
    /// clean reference model (BackdoorBench's 8/255, 100 steps of 1.5/255; see
    /// [`AdversarialHardening`]), then stamped with Turner et al.'s trigger: a 3x3 checkerboard
    /// in all four corners. The claim: hardening makes clean-label poisoning implant the
    /// backdoor where the plain clean-label attack does not.
    pub fn label_consistent() -> Self {
        Self {
            name: "label-consistent".into(),
            poison: PoisonConfig { trigger: Trigger::checkerboard(3).at(Placement::FourCorners), clean_label: true, ..PoisonConfig::badnets(3, 0.05, 0) },
            hardening: Some(AdversarialHardening::default()),
            ..Self::default()
        }
    }

    /// BadNets all-to-all: a triggered input of class y goes to (y + 1) mod K.
    pub fn all_to_all() -> Self {
        Self { name: "all-to-all".into(), poison: PoisonConfig { target: TargetMode::AllToAll, ..PoisonConfig::badnets(3, 0.10, 0) }, ..Self::default() }
    }

    /// BadNets with the patch at a random location in every poisoned (and every test) image.
    pub fn random_location() -> Self {
        Self {
            name: "random location".into(),
            poison: PoisonConfig { trigger: Trigger::badnets(3).at(Placement::Random), ..PoisonConfig::badnets(3, 0.10, 0) },
            ..Self::default()
        }
    }

    /// SIG (Barni et al. 2019): BackdoorBench's sinusoid (delta 40/255, 6 periods) on 10 % of
    /// the training set, clean-label: only target-class images carry it, with their true
    /// labels, and the victim learns "sinusoid means class 0" from them. On a balanced 10-class
    /// set 10 % is every target-class image; a smaller target class needs a lower rate (the
    /// error says how many images are eligible).
    pub fn sig() -> Self {
        Self { name: "SIG".into(), poison: PoisonConfig { trigger: Trigger::sig(), clean_label: true, ..PoisonConfig::badnets(3, 0.10, 0) }, ..Self::default() }
    }

    /// ReFool (Liu et al. 2020) as BackdoorBench runs it: a reflection of an image drawn from
    /// `reflections` (resized to the data's `shape`) on 10 % of the training set, dirty-label
    /// to class 0 (the paper poisons target-class images only; BackdoorBench changed to
    /// dirty-label because the clean-label attack did not reach a useful ASR even with half
    /// the target class poisoned). [`ReflectionTrigger`](super::ReflectionTrigger) has the
    /// reflection model and its defaults.
    pub fn refool(reflections: &Dataset, shape: (usize, usize, usize)) -> Result<Self> {
        let trigger = Trigger::Reflection(super::ReflectionTrigger::new(reflections, shape)?);
        Ok(Self { name: "ReFool".into(), poison: PoisonConfig { trigger, ..PoisonConfig::badnets(3, 0.10, 0) }, ..Self::default() })
    }

    /// FTrojan (Wang et al. 2022) with BackdoorBench's `ftrojann` defaults: magnitude 30 at
    /// DCT coefficients (15, 15) and (31, 31) of the chrominance channels, one 32x32 window,
    /// 10 % dirty-label to class 0. The window fits CIFAR-sized images; for other sizes use
    /// [`PoisoningAttackConfig::ftrojan_scaled`].
    pub fn ftrojan() -> Self {
        Self { name: "FTrojan".into(), poison: PoisonConfig { trigger: Trigger::ftrojan(), ..PoisonConfig::badnets(3, 0.10, 0) }, ..Self::default() }
    }

    /// FTrojan with its window scaled to `window` pixels (coefficients at the same relative
    /// places, [`FrequencyTrigger::scaled_to`]); `yuv: false` for grayscale images.
    pub fn ftrojan_scaled(window: usize, yuv: bool) -> Self {
        let mut cfg = Self::ftrojan();
        cfg.poison.trigger = Trigger::Frequency(FrequencyTrigger::scaled_to(window, yuv));
        cfg
    }

    /// WaNet (Nguyen & Tran 2021): the warp of
    /// [`WarpTrigger::default`](crate::attacks::WarpTrigger::default) (k = 4, s = 0.5) on 10 %
    /// of the samples, dirty-label to class 0, with the noise mode at cross ratio 2
    /// (BackdoorBench's rate, target and ratio). Deviation: WaNet picks the warped 10 % of
    /// every batch afresh; here they are a fixed 10 % of the set (the noise-mode samples are
    /// drawn afresh in every batch, as in the paper).
    pub fn wanet() -> Self {
        Self {
            name: "WaNet".into(),
            poison: PoisonConfig { trigger: Trigger::wanet(), ..PoisonConfig::badnets(3, 0.10, 0) },
            noise_mode: Some(2.0),
            ..Self::default()
        }
    }

    /// BppAttack (Wang et al. 2022): every channel squeezed to 8 levels with Floyd-Steinberg
    /// dithering on 10 % of the samples, dirty-label to class 0 (BackdoorBench's `squeeze_num`
    /// 8 and rate), and in every batch 10 % negative samples (`neg_ratio`): clean images
    /// carrying another image's squeeze residual, keeping their labels (see
    /// [`squeeze_cross_set`](super::squeeze_cross_set)). Deviation: BppAttack squeezes a fresh
    /// 10 % of every batch; here the poisoned 10 % is fixed (the negatives are drawn afresh in
    /// every batch, as in the paper).
    pub fn bpp() -> Self {
        Self {
            name: "BppAttack".into(),
            poison: PoisonConfig { trigger: Trigger::bpp(), ..PoisonConfig::badnets(3, 0.10, 0) },
            negatives: Some(0.1),
            ..Self::default()
        }
    }

    /// Blind backdoors (Bagdasaryan & Shmatikov 2021): no sample poisoned; the training loss
    /// adds, in every batch, the loss of the batch stamped with the authors' pattern
    /// ([`Trigger::blind_pattern`], for 32x32 images) and relabelled to class 0
    /// (BackdoorBench's all-to-one target), balanced by MGDA ([`BlindLoss::default`]).
    pub fn blind() -> Self {
        Self {
            name: "Blind".into(),
            poison: PoisonConfig { trigger: Trigger::blind_pattern(), ..PoisonConfig::badnets(3, 0.0, 0) },
            blind: Some(BlindLoss::default()),
            ..Self::default()
        }
    }

    /// The same attack under another row label.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Check the configuration against the training data (shape, classes), before any
    /// training: trigger larger than the image, rate outside [0, 1], unknown target class.
    pub fn validate(&self, train: &Dataset) -> Result<()> {
        let rate = self.poison.rate;
        if rate.is_nan() || !(0.0..=1.0).contains(&rate) {
            return Err(Error::invalid("poison rate", format!("{rate} is outside [0, 1]; use a fraction such as 0.1")));
        }
        self.poison.trigger.validate(train.shape)?;
        self.poison.target.validate(train.num_classes())?;
        ModelSpec::new(self.arch.clone(), train.shape, train.num_classes())?;
        if let Some(h) = &self.hardening {
            h.validate()?;
            if !self.poison.clean_label {
                return Err(Error::invalid("hardening", "label-consistent hardening is for clean-label poisons; set poison.clean_label, or hardening to None"));
            }
        }
        self.validate_training()
    }

    /// The training-time additions (Blind's loss, WaNet's noise mode, BppAttack's negatives):
    /// each needs its own trigger, and at most one of them trains the victim.
    pub(crate) fn validate_training(&self) -> Result<()> {
        let rate = self.poison.rate;
        if let Some(b) = &self.blind {
            b.validate()?;
            if self.noise_mode.is_some() || self.negatives.is_some() || self.hardening.is_some() {
                return Err(Error::invalid("blind loss", "it trains with its own loss; set noise_mode, negatives and hardening to None"));
            }
        }
        if let Some(ratio) = self.noise_mode {
            if !matches!(self.poison.trigger, Trigger::Warp(_)) {
                return Err(Error::invalid("noise mode", "it is WaNet's: it needs a warp trigger (Trigger::wanet()); set noise_mode to None for other triggers"));
            }
            if !(ratio.is_finite() && ratio > 0.0 && ratio * rate + rate <= 1.0) {
                return Err(Error::invalid(
                    "noise mode",
                    format!("cross ratio {ratio} at poisoning rate {rate} leaves no clean batch share; WaNet uses 2 at 0.1"),
                ));
            }
        }
        if let Some(share) = self.negatives {
            if !matches!(self.poison.trigger, Trigger::ColorDepth { .. }) {
                return Err(Error::invalid("negative samples", "they are BppAttack's: they need a colour-depth trigger (Trigger::bpp()); set negatives to None for other triggers"));
            }
            if self.noise_mode.is_some() {
                return Err(Error::invalid("negative samples", "WaNet's noise mode and BppAttack's negatives are two training objectives; set one of them to None"));
            }
            if !(share.is_finite() && share > 0.0 && share + rate <= 1.0) {
                return Err(Error::invalid(
                    "negative samples",
                    format!("a batch share of {share} at poisoning rate {rate} leaves no room in the batch; BppAttack uses 0.1 at 0.1"),
                ));
            }
        }
        Ok(())
    }

    fn spec(&self, train: &Dataset) -> Result<ModelSpec> {
        ModelSpec::new(self.arch.clone(), train.shape, train.num_classes())
    }

    /// Seed of the trigger placements on the test set: another stream than the poisoning's,
    /// so random-location ASR is measured on placements the victim never saw.
    fn eval_seed(&self) -> u64 {
        self.poison.seed.wrapping_add(1)
    }

    /// A key identifying the clean reference model (same architecture, training and seed).
    fn reference_key(&self) -> String {
        format!("{:?}|{:?}|{}", self.arch, self.train, self.model_seed)
    }
}

/// The poisoned training set and the victim trained on it.
///
/// Defences reuse this to get a backdoored model to work on.
pub fn train_victim(train_set: &Dataset, cfg: &PoisoningAttackConfig, device: &Device) -> Result<(Network, Dataset)> {
    cfg.validate(train_set)?;
    let surrogate = match cfg.hardening {
        Some(_) => Some(train_clean(train_set, cfg, device)?),
        None => None,
    };
    train_victim_with(train_set, cfg, device, surrogate.as_ref())
}

/// [`train_victim`] with the surrogate for label-consistent hardening already trained.
fn train_victim_with(train_set: &Dataset, cfg: &PoisoningAttackConfig, device: &Device, surrogate: Option<&Network>) -> Result<(Network, Dataset)> {
    cfg.validate(train_set)?;
    let poisoned = poisoned_set(train_set, cfg, surrogate)?;
    let mut net = Network::new(&cfg.spec(train_set)?, cfg.model_seed, device)?;
    train_on_poisoned(&mut net, &poisoned, None, &cfg.train, cfg)?;
    Ok((net, poisoned))
}

/// Train `net` on the already poisoned set with `tc`, adding what `cfg` does at training time
/// (Blind's compromised loss, WaNet's noise mode, BppAttack's negatives); plain training
/// otherwise. The results grid trains its victims through this too.
pub(crate) fn train_on_poisoned(net: &mut Network, poisoned: &Dataset, eval: Option<&Dataset>, tc: &TrainConfig, cfg: &PoisoningAttackConfig) -> Result<History> {
    cfg.validate_training()?;
    if let Some(blind) = &cfg.blind {
        return blind.train_victim(net, poisoned, eval, tc, &cfg.poison.trigger, cfg.poison.target);
    }
    if let Some(share) = cfg.negatives {
        let mut objective = SqueezeNegatives::new(cfg.poison.trigger.clone(), share, poisoned, tc.label_smoothing)?;
        return train_with(net, poisoned, eval, tc, &mut objective);
    }
    match (cfg.noise_mode, &cfg.poison.trigger) {
        (Some(cross_ratio), Trigger::Warp(warp)) => {
            let mut objective = NoiseMode {
                warp: warp.clone(),
                share: cross_ratio * cfg.poison.rate,
                poisoned: poisoned.poisoned_flags(),
                label_smoothing: tc.label_smoothing,
            };
            train_with(net, poisoned, eval, tc, &mut objective)
        }
        _ => train(net, poisoned, eval, tc),
    }
}

/// The poisoned training set, hardened where the configuration asks for it.
fn poisoned_set(train_set: &Dataset, cfg: &PoisoningAttackConfig, surrogate: Option<&Network>) -> Result<Dataset> {
    match (&cfg.hardening, surrogate) {
        (None, _) => poison(train_set, &cfg.poison),
        (Some(h), Some(s)) => h.poison(train_set, &cfg.poison, s),
        (Some(_), None) => Err(Error::invalid("hardening", "label-consistent hardening needs a surrogate model")),
    }
}

/// WaNet's noise mode: cross-entropy on the batch after warping `share` of it (clean samples
/// only) with the trigger's warp plus fresh random jitter, labels kept.
struct NoiseMode {
    warp: crate::attacks::WarpTrigger,
    share: f64,
    poisoned: Vec<bool>,
    label_smoothing: f64,
}

impl Objective for NoiseMode {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let count = (self.share * s.x.dim(0)? as f64).round() as usize;
        let (warp, rng) = (&self.warp, &mut *s.rng);
        let x = edit_clean_samples(s.x, s.indices, &self.poisoned, count, |image, shape, _| warp.warp_with_noise(image, shape, rng))?;
        let logits = s.net.forward(&x, true)?;
        Ok((cross_entropy(&logits, s.y, self.label_smoothing)?, logits))
    }
}

/// The batch `x` with the first `count` of its unpoisoned samples (by `poisoned`, indexed
/// through the batch's dataset `indices`) edited in place by `edit(image, shape, index)`: the
/// batch is already shuffled, so its first clean samples are a random draw. The training-time
/// samples of WaNet's noise mode and BppAttack's negatives are made this way.
pub(super) fn edit_clean_samples(
    x: &Tensor,
    indices: &[usize],
    poisoned: &[bool],
    count: usize,
    mut edit: impl FnMut(&mut [f32], (usize, usize, usize), usize) -> Result<()>,
) -> Result<Tensor> {
    if count == 0 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let mut pixels: Vec<f32> = x.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    let len = c * h * w;
    for b in (0..n).filter(|&b| !poisoned[indices[b]]).take(count) {
        edit(&mut pixels[b * len..(b + 1) * len], (c, h, w), indices[b])?;
    }
    Ok(Tensor::from_vec(pixels, (n, c, h, w), x.device())?)
}

fn train_clean(train_set: &Dataset, cfg: &PoisoningAttackConfig, device: &Device) -> Result<Network> {
    let mut net = Network::new(&cfg.spec(train_set)?, cfg.model_seed, device)?;
    train(&mut net, train_set, None, &cfg.train)?;
    Ok(net)
}

fn check_test(train: &Dataset, test: &Dataset) -> Result<()> {
    if train.shape != test.shape || train.num_classes() != test.num_classes() {
        return Err(Error::invalid(
            "test set",
            format!(
                "images {:?} with {} classes do not match the training set's {:?} with {}",
                test.shape,
                test.num_classes(),
                train.shape,
                train.num_classes()
            ),
        ));
    }
    Ok(())
}

/// One attack's outcome: the victim's and the clean reference's metrics on the same trigger.
#[derive(Debug, Clone)]
pub struct PoisoningAttackResult {
    pub config: PoisoningAttackConfig,
    /// The backdoored model.
    pub victim: BackdoorMetrics,
    /// The same architecture, seed and training on the unpoisoned set.
    pub clean_reference: BackdoorMetrics,
    /// Poisoned training samples.
    pub n_poisoned: usize,
}

impl PoisoningAttackResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![("clean model".to_string(), self.clean_reference), (self.config.name.clone(), self.victim)]
    }
}

impl Outcome for PoisoningAttackResult {
    /// The standard metrics table: the clean reference and the victim.
    fn to_dataframe(&self) -> Result<DataFrame> {
        metrics_table(&self.rows())
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(&format!("{} ({:.0} % poisoned)", self.config.name, 100.0 * self.config.poison.rate), &self.rows()))
    }

    fn summary(&self) -> String {
        format!("{} ({} training images poisoned): {}.", self.config.name, self.n_poisoned, attack_sentence(&self.victim, &self.clean_reference))
    }
}

/// Poison `train` as `cfg` says, train the victim and the clean reference, and measure
/// CA on `test` and ASR/RA on triggered test images.
///
/// ```
/// use transferlab::attacks::{poisoning, PoisoningAttackConfig};
/// use transferlab::report::Outcome;
/// use transferlab::train::{ProgressMode, TrainConfig};
/// let data = transferlab::data::digits()?.per_class_sample(20, 0)?;
/// let (test, train) = data.split(0.25, 0, true)?;
/// let mut cfg = PoisoningAttackConfig::default();
/// cfg.train = TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..cfg.train };
/// let result = poisoning::run(&train, &test, &cfg)?;
/// assert_eq!(result.to_dataframe()?.height(), 2);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train: &Dataset, test: &Dataset, cfg: &PoisoningAttackConfig) -> Result<PoisoningAttackResult> {
    cfg.validate(train)?;
    check_test(train, test)?;
    let device = cfg.device.clone();
    let reference = train_clean(train, cfg, &device)?;
    run_with_reference(train, test, cfg, &reference, &device)
}

fn run_with_reference(train: &Dataset, test: &Dataset, cfg: &PoisoningAttackConfig, reference: &Network, device: &Device) -> Result<PoisoningAttackResult> {
    let (victim, poisoned) = train_victim_with(train, cfg, device, Some(reference))?;
    let trigger = &cfg.poison.trigger;
    let target = &cfg.poison.target;
    Ok(PoisoningAttackResult {
        config: cfg.clone(),
        victim: evaluate_backdoor(&victim, test, trigger, target, cfg.eval_seed())?,
        clean_reference: evaluate_backdoor(reference, test, trigger, target, cfg.eval_seed())?,
        n_poisoned: poisoned.poisoned_flags().iter().filter(|&&f| f).count(),
    })
}

/// Several attacks against the same data, one row each.
#[derive(Debug, Clone)]
pub struct PoisoningComparison {
    pub runs: Vec<PoisoningAttackResult>,
}

impl Outcome for PoisoningComparison {
    /// The standard metrics table, one row per attack (victim), followed by `clean_ca` and
    /// `clean_asr` (the clean reference on the same trigger: the floor ASR is measured
    /// against) and `n_poisoned`.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let rows: Vec<(String, BackdoorMetrics)> = self.runs.iter().map(|r| (r.config.name.clone(), r.victim)).collect();
        let mut df = metrics_table(&rows)?;
        df.with_column(Series::new("clean_ca".into(), self.runs.iter().map(|r| r.clean_reference.clean_accuracy).collect::<Vec<_>>()).into())?;
        df.with_column(Series::new("clean_asr".into(), self.runs.iter().map(|r| r.clean_reference.attack_success_rate).collect::<Vec<_>>()).into())?;
        df.with_column(Series::new("n_poisoned".into(), self.runs.iter().map(|r| r.n_poisoned as u64).collect::<Vec<_>>()).into())?;
        Ok(df)
    }

    /// CA / ASR / RA bars per attack, with the clean reference first.
    fn figure(&self) -> Result<Figure> {
        let mut rows = Vec::new();
        if let Some(first) = self.runs.first() {
            rows.push((format!("clean model ({} trigger)", first.config.name), first.clean_reference));
        }
        rows.extend(self.runs.iter().map(|r| (r.config.name.clone(), r.victim)));
        Ok(metrics_figure("Poisoning attacks: clean accuracy, attack success, robust accuracy", &rows))
    }

    fn summary(&self) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{} {} (clean model {}, CA {})", r.config.name, percent(r.victim.attack_success_rate), percent(r.clean_reference.attack_success_rate), percent(r.victim.clean_accuracy)))
            .collect();
        format!("ASR of {} attacks against same-seed clean models: {}.", self.runs.len(), runs.join("; "))
    }
}

/// Run every attack in `configs` on the same data. Configurations sharing architecture,
/// training and model seed share one clean reference (trained once).
pub fn compare(train: &Dataset, test: &Dataset, configs: &[PoisoningAttackConfig]) -> Result<PoisoningComparison> {
    if configs.is_empty() {
        return Err(Error::invalid("attacks", "no configuration given; pass at least one PoisoningAttackConfig"));
    }
    check_test(train, test)?;
    // Validate everything first: a typo in the last config should not cost the first runs.
    for cfg in configs {
        cfg.validate(train)?;
    }
    let device = configs[0].device.clone();
    if configs.iter().any(|c| !c.device.same_device(&device)) {
        return Err(Error::invalid("attacks", "the configurations name different devices; compare them on one"));
    }
    let mut references: Vec<(String, Network)> = Vec::new();
    let mut runs = Vec::new();
    for cfg in configs {
        let key = cfg.reference_key();
        if !references.iter().any(|(k, _)| *k == key) {
            references.push((key.clone(), train_clean(train, cfg, &device)?));
        }
        let reference = &references.iter().find(|(k, _)| *k == key).expect("just inserted").1;
        runs.push(run_with_reference(train, test, cfg, reference, &device)?);
    }
    Ok(PoisoningComparison { runs })
}
