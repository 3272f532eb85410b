//! Architectural backdoors (Bober-Irizar et al. 2022, "Architectural backdoors in neural
//! networks"): the backdoor is in the model definition, not in its weights or data. A
//! parameter-free checkerboard detector ([`crate::models::checkerboard_response`]) hidden in an
//! ordinary ConvNet adds its response to the activations; the victim trains the architecture
//! from scratch on clean data only, and the trigger still works.

use super::poisoning::{victim_arch, victim_training};
use super::metrics::{evaluate_backdoor, metrics_figure, metrics_table, percent, BackdoorMetrics};
use super::poison::TargetMode;
use super::trigger::{Placement, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{checkerboard_response, Arch, Injection, ModelSpec, Network, TriggerDetector};
use crate::report::{Figure, Outcome};
use crate::train::{predict, train, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};

/// The backdoored architecture and how the victim trains it.
///
/// Defaults: a 3x3 1-pixel checkerboard trigger (the detector fires on it anywhere in the
/// image), its response (1 on the trigger, 0 on clean images) times a gain of 50 added to the
/// logit of class 0. Bober-Irizar et al. add the detector's output to activations inside the
/// network and let training decide where triggered inputs go; `Injection::Features` does that
/// (added to every penultimate activation), `Injection::Logits` (the default) makes the attack
/// targeted, the "link between input and output" of the paper's construction principles.
/// The base network is the small ConvNet of the other attacks (width 32, depth 2, instance
/// norm, 15 epochs), not the paper's CIFAR/ImageNet models.
///
/// ```
/// use transferlab::attacks::ArchitecturalBackdoorConfig;
/// assert_eq!(ArchitecturalBackdoorConfig::default().trigger_size, 3);
/// ```
#[derive(Debug, Clone)]
pub struct ArchitecturalBackdoorConfig {
    /// The ordinary architecture the detector hides in.
    pub base: Arch,
    /// Side of the checkerboard trigger.
    pub trigger_size: usize,
    /// How much of the detector's response is added.
    pub gain: u32,
    pub injection: Injection,
    /// The victim's training, on clean data, identical for the plain and backdoored model.
    pub train: TrainConfig,
    pub model_seed: u64,
    /// Seeds the random trigger placements of the location-invariance check.
    pub seed: u64,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for ArchitecturalBackdoorConfig {
    fn default() -> Self {
        Self {
            base: victim_arch(),
            trigger_size: 3,
            gain: 50,
            injection: Injection::Logits { target: 0 },
            train: victim_training(),
            model_seed: 0,
            seed: 1,
            device: Device::Cpu,
        }
    }
}

impl ArchitecturalBackdoorConfig {
    /// The detector this configuration hides.
    pub fn detector(&self) -> TriggerDetector {
        TriggerDetector { size: self.trigger_size, gain: self.gain, injection: self.injection }
    }

    /// The backdoored architecture for `train`'s images and classes (checks size and target).
    pub fn spec(&self, train: &Dataset) -> Result<ModelSpec> {
        if self.gain == 0 {
            return Err(Error::invalid("detector gain", "0 disables the backdoor; use e.g. 50"));
        }
        let arch = Arch::Backdoored { base: Box::new(self.base.clone()), detector: self.detector() };
        ModelSpec::new(arch, train.shape, train.num_classes())
    }

    /// The checkerboard trigger at the bottom-right corner.
    pub fn trigger(&self) -> Trigger {
        Trigger::checkerboard(self.trigger_size)
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct ArchitecturalBackdoorResult {
    pub config: ArchitecturalBackdoorConfig,
    /// The class triggered inputs are measured against: the target for `Logits`, the class
    /// most triggered test images go to for `Features`.
    pub target: u32,
    /// Plain architecture, same seed and training, corner trigger.
    pub plain: BackdoorMetrics,
    /// Backdoored architecture, corner trigger.
    pub backdoored: BackdoorMetrics,
    /// Backdoored architecture, trigger at a random location in each image.
    pub backdoored_random_location: BackdoorMetrics,
    /// Fraction of clean training images on which the detector fires at all.
    pub detector_false_fire_rate: f64,
}

impl ArchitecturalBackdoorResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![
            ("plain architecture".to_string(), self.plain),
            ("backdoored architecture".to_string(), self.backdoored),
            ("backdoored, random location".to_string(), self.backdoored_random_location),
        ]
    }
}

impl Outcome for ArchitecturalBackdoorResult {
    /// The standard metrics table, then `target` and `detector_false_fire_rate`.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let rows = self.rows();
        let mut df = metrics_table(&rows)?;
        df.with_column(Series::new("target".into(), vec![self.target; rows.len()]).into())?;
        df.with_column(Series::new("detector_false_fire_rate".into(), vec![self.detector_false_fire_rate; rows.len()]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure(&format!("Architectural backdoor, trained on clean data only (target {})", self.target), &self.rows()))
    }

    fn summary(&self) -> String {
        format!(
            "A parameter-free trigger detector inside the model sends triggered images to class {}: ASR {} ({} with the trigger at random locations) against {} for the plain model, at CA {} (plain {}); the detector fires on {} of clean images.",
            self.target,
            percent(self.backdoored.attack_success_rate),
            percent(self.backdoored_random_location.attack_success_rate),
            percent(self.plain.attack_success_rate),
            percent(self.backdoored.clean_accuracy),
            percent(self.plain.clean_accuracy),
            percent(self.detector_false_fire_rate)
        )
    }
}

/// Train the plain and the backdoored architecture from scratch on clean `train` (same seed,
/// same batches) and measure CA and the trigger's ASR/RA on `test`.
///
/// ```
/// use transferlab::attacks::{architectural, ArchitecturalBackdoorConfig};
/// use transferlab::train::{ProgressMode, TrainConfig};
/// let data = transferlab::data::digits()?.per_class_sample(20, 0)?;
/// let (test, train) = data.split(0.25, 0, true)?;
/// let mut cfg = ArchitecturalBackdoorConfig::default();
/// cfg.train = TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..cfg.train };
/// let r = architectural::run(&train, &test, &cfg)?;
/// assert!(r.backdoored.attack_success_rate > 0.9);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train_set: &Dataset, test: &Dataset, cfg: &ArchitecturalBackdoorConfig) -> Result<ArchitecturalBackdoorResult> {
    let spec = cfg.spec(train_set)?;
    cfg.trigger().validate(train_set.shape)?;
    if test.shape != train_set.shape || test.num_classes() != train_set.num_classes() {
        return Err(Error::invalid("test set", "its image shape or classes differ from the training set's"));
    }
    let device = cfg.device.clone();
    let plain_spec = ModelSpec::new(cfg.base.clone(), train_set.shape, train_set.num_classes())?;
    let mut plain = Network::new(&plain_spec, cfg.model_seed, &device)?;
    train(&mut plain, train_set, None, &cfg.train)?;
    let mut backdoored = Network::new(&spec, cfg.model_seed, &device)?;
    train(&mut backdoored, train_set, None, &cfg.train)?;

    let trigger = cfg.trigger();
    let target = match cfg.injection {
        Injection::Logits { target } => target,
        Injection::Features => {
            // The attacker does not choose the class: take the one most triggered images go to.
            let all: Vec<usize> = (0..test.len()).collect();
            let pred = predict(&backdoored, &trigger.apply_to(test, &all, cfg.seed)?)?;
            let mut counts = vec![0usize; test.num_classes()];
            for p in pred {
                counts[p as usize] += 1;
            }
            (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0) as u32
        }
    };
    let mode = TargetMode::AllToOne { target };
    let random = trigger.clone().at(Placement::Random);
    let response = checkerboard_response(&train_set.images_tensor(&device)?, cfg.trigger_size)?.to_vec1::<f32>()?;
    Ok(ArchitecturalBackdoorResult {
        config: cfg.clone(),
        target,
        plain: evaluate_backdoor(&plain, test, &trigger, &mode, cfg.seed)?,
        backdoored: evaluate_backdoor(&backdoored, test, &trigger, &mode, cfg.seed)?,
        backdoored_random_location: evaluate_backdoor(&backdoored, test, &random, &mode, cfg.seed)?,
        detector_false_fire_rate: response.iter().filter(|&&r| r > 0.0).count() as f64 / response.len() as f64,
    })
}
