//! BackdoorBench's CIFAR-10 setting: each attack's model trained once, every defence applied to
//! it, one row per (attack, defence, seed), resumable.
//!
//! Durability: each attacked model checkpoints every epoch and is saved (atomically) when
//! trained; each finished cell is appended to its task's log (`cells/{attack}-seed{seed}.jsonl`
//! in the output folder: one task is one attack's model for one seed), keyed by a fingerprint
//! of the data, model, recipe, attack, defence, seed, crate version and numerics version
//! ([`crate::train::NUMERICS_VERSION`]). A rerun after a kill
//! skips finished cells and trained models and resumes a model mid-training; a change to any
//! setting changes the fingerprint, so stale rows are never reused. A task runs in one process
//! at a time (a lock file beside its log), so the grid's tasks can run as separate jobs on a
//! cluster ([`crate::benchmark::grid`]).

use crate::attacks::{defence_effectiveness_rate, poison, AdversarialHardening, BackdoorMetrics, BlindLoss, PoisonConfig, PoisoningAttackConfig, ReflectionTrigger, TargetMode, Trigger};
use crate::attacks::low_frequency::{self, LowFrequencyFit};
use crate::attacks::poisoning::train_on_poisoned;
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::defenses::detection::{activation_clustering, spectral_signatures, strip, ActivationClusteringConfig, DetectionMetrics, SpectralSignaturesConfig, StripConfig};
use crate::defenses::{abl, clp, feature_shift_tuning, fine_pruning, ft_sam, nad, nc_unlearning, rnp, anp, i_bau, sau, AblConfig, AnpConfig, IBauConfig, SauConfig, BackdoorProbe, ClpConfig, FinePruningConfig, FstConfig, FineTuningConfig, FtSamConfig, NadConfig, NcUnlearningConfig, RnpConfig};
use crate::error::{Error, Result};
use crate::fsutil::FileLock;
use crate::hub::{load_dataset, DatasetRequest, Hub};
use crate::models::{InputNorm, ModelSpec, Network};
use crate::progress::{Progress, ProgressMode};
use crate::report::{first_seen, BarChart, Chart, Figure, Heatmap, Outcome, ScatterChart, Sweep, SweepConfig};
use crate::train::{train, History, LrSchedule, OptimizerConfig, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

use super::published::published;

/// One attack of the benchmark: a name and how it poisons the training set. The ASR probe uses
/// the same trigger and target on the test set.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchAttack {
    /// Short lower-case name (`badnets`, `blended`, `clean`), the table's `attack` column.
    pub name: String,
    pub poison: PoisonConfig,
    /// Label-consistent hardening of the (clean-label) poisons, on a surrogate: the grid's
    /// clean model of the same seed (trained once, shared with the `clean` attack's task).
    pub hardening: Option<AdversarialHardening>,
    /// Blind backdoors' compromised training loss (no sample poisoned).
    pub blind: Option<BlindLoss>,
    /// WaNet's noise mode ([`PoisoningAttackConfig::noise_mode`]).
    pub noise_mode: Option<f64>,
    /// BppAttack's negative samples ([`PoisoningAttackConfig::negatives`]).
    pub negatives: Option<f64>,
    /// Low Frequency's trigger, fitted on the grid's clean model of the same seed; it replaces
    /// `poison`'s trigger and target.
    pub low_frequency: Option<LowFrequencyFit>,
    /// ReFool's reflection pool: this many training images (a per-class sample of another
    /// seed), resized to the data; it replaces `poison`'s trigger.
    pub reflections: Option<usize>,
}

impl BenchAttack {
    /// BackdoorBench's BadNets: a 3x3 white patch in the bottom-right corner, 10 % of the
    /// training set relabelled to class 0.
    pub fn badnets() -> Self {
        Self::poison_only("badnets", PoisonConfig::badnets(3, 0.1, 0))
    }

    /// An attack that only poisons the training set: no hardening, no training-time addition.
    fn poison_only(name: &str, poison: PoisonConfig) -> Self {
        Self { name: name.into(), poison, hardening: None, blind: None, noise_mode: None, negatives: None, low_frequency: None, reflections: None }
    }

    /// BackdoorBench's Blended: a full-image pattern blended at alpha 0.2, 10 %, target 0.
    /// BackdoorBench blends a Hello Kitty photograph; we blend uniform noise from a fixed seed
    /// (Chen et al.'s other pattern), which ships with no image licence.
    pub fn blended() -> Self {
        let poison = PoisonConfig { trigger: Trigger::blend_noise(0, 0.2), rate: 0.1, target: TargetMode::AllToOne { target: 0 }, clean_label: false, seed: 0 };
        Self::poison_only("blended", poison)
    }

    /// SIG (Barni et al. 2019) as BackdoorBench runs it: the sinusoid (delta 40/255, f = 6) on
    /// 10 % of the training set, clean-label (every target-class image of CIFAR-10), target 0.
    pub fn sig() -> Self {
        Self::poison_only("sig", PoisoningAttackConfig::sig().poison)
    }

    /// FTrojan (Wang et al. 2022) with BackdoorBench's `ftrojann` defaults: the frequency
    /// trigger in the chrominance channels, 10 % dirty-label to class 0.
    pub fn ftrojan() -> Self {
        Self::poison_only("ftrojan", PoisoningAttackConfig::ftrojan().poison)
    }

    /// WaNet (Nguyen & Tran 2021, [`PoisoningAttackConfig::wanet`]): the k = 4, s = 0.5 warp on
    /// 10 % of the training set, dirty-label to class 0, with its noise-mode samples (cross
    /// ratio 2).
    pub fn wanet() -> Self {
        let cfg = PoisoningAttackConfig::wanet();
        Self { noise_mode: cfg.noise_mode, ..Self::poison_only("wanet", cfg.poison) }
    }

    /// BppAttack (Wang et al. 2022, [`PoisoningAttackConfig::bpp`]): 3-bit dithered colour depth
    /// on 10 %, dirty-label to class 0, with its negative samples (10 % of every batch).
    pub fn bpp() -> Self {
        let cfg = PoisoningAttackConfig::bpp();
        Self { negatives: cfg.negatives, ..Self::poison_only("bpp", cfg.poison) }
    }

    /// Label-consistent (Turner et al. 2019) as BackdoorBench runs it: 10 % of the training set
    /// (every target-class image of CIFAR-10), clean-label, each poison hardened by PGD (8/255,
    /// 100 steps) on the seed's clean model, then Turner's 3x3 checkerboard in all four
    /// corners; target 0 ([`PoisoningAttackConfig::label_consistent`] at BackdoorBench's rate).
    /// Deviation: BackdoorBench's surrogate is an adversarially trained ResNet-18.
    pub fn lc() -> Self {
        let cfg = PoisoningAttackConfig::label_consistent();
        Self { hardening: cfg.hardening, ..Self::poison_only("lc", PoisonConfig { rate: 0.1, ..cfg.poison }) }
    }

    /// Blind backdoors (Bagdasaryan & Shmatikov 2021) as BackdoorBench runs them: no sample
    /// poisoned, the training loss compromised ([`PoisoningAttackConfig::blind`]: the authors'
    /// 5x3 pattern at row 3, column 23, target 0, MGDA from epoch 3 on).
    pub fn blind() -> Self {
        let cfg = PoisoningAttackConfig::blind();
        Self { blind: cfg.blind, ..Self::poison_only("blind", cfg.poison) }
    }

    /// Low Frequency (Zeng et al. 2021) as BackdoorBench runs it: 10 % of the training set
    /// relabelled, all-to-one, carrying a smooth universal adversarial perturbation fitted on
    /// the seed's clean model with the authors' defaults ([`LowFrequencyFit`]); the target is
    /// the class the perturbation pushes images to, starting from class 0. Deviation:
    /// BackdoorBench ships a perturbation fitted once on its own clean model.
    pub fn lf() -> Self {
        // The trigger and target here are placeholders until the fit replaces them.
        let poison = PoisonConfig { trigger: Trigger::Additive { channels: 1, pixels: Vec::new() }, ..PoisonConfig::badnets(3, 0.1, 0) };
        Self { low_frequency: Some(LowFrequencyFit::default()), ..Self::poison_only("lf", poison) }
    }

    /// ReFool (Liu et al. 2020) as BackdoorBench runs it ([`PoisoningAttackConfig::refool`]):
    /// 10 % dirty-label to class 0, each poisoned image with a reflection of one of 100 other
    /// training photographs. Deviation: BackdoorBench's pool is the authors' 160 selected
    /// PascalVOC reflections.
    pub fn refool() -> Self {
        // The pool is drawn from the training data when the attack runs.
        let placeholder = ReflectionTrigger { pool: Vec::new(), shape: (0, 0, 0), alpha_t: 0.4, ghost_rate: 0.49 };
        Self { reflections: Some(100), ..Self::poison_only("refool", PoisonConfig { trigger: Trigger::Reflection(placeholder), ..PoisonConfig::badnets(3, 0.1, 0) }) }
    }

    /// No poisoning: the clean reference model, probed with BadNets' trigger (its "ASR" is how
    /// often a clean model sends a patched image to class 0 anyway). Defences are not run on it.
    pub fn clean() -> Self {
        Self::poison_only("clean", PoisonConfig { rate: 0.0, ..PoisonConfig::badnets(3, 0.1, 0) })
    }

    /// Every attack's name, as [`Self::by_name`] takes it.
    pub const NAMES: [&'static str; 11] = ["badnets", "blended", "sig", "ftrojan", "wanet", "bpp", "lc", "blind", "lf", "refool", "clean"];

    /// The attack called `name` (see [`Self::NAMES`]) with BackdoorBench's settings.
    ///
    /// ```
    /// use transferlab::benchmark::BenchAttack;
    /// assert_eq!(BenchAttack::by_name("wanet").unwrap(), BenchAttack::wanet());
    /// assert!(BenchAttack::by_name("lira").unwrap_err().to_string().contains("badnets, blended"));
    /// ```
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "badnets" => Self::badnets(),
            "blended" => Self::blended(),
            "sig" => Self::sig(),
            "ftrojan" => Self::ftrojan(),
            "wanet" => Self::wanet(),
            "bpp" => Self::bpp(),
            "lc" => Self::lc(),
            "blind" => Self::blind(),
            "lf" => Self::lf(),
            "refool" => Self::refool(),
            "clean" => Self::clean(),
            other => return Err(Error::invalid("attack", format!("{other:?}; use one of {}", Self::NAMES.join(", ")))),
        })
    }

    /// What the victim's training adds (Blind's loss, WaNet's noise mode, BppAttack's
    /// negatives), as the poisoning runner takes it.
    fn training(&self) -> PoisoningAttackConfig {
        PoisoningAttackConfig {
            poison: self.poison.clone(),
            noise_mode: self.noise_mode,
            negatives: self.negatives,
            blind: self.blind.clone(),
            ..PoisoningAttackConfig::default()
        }
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.poison.rate == 0.0 && self.blind.is_none()
    }

    /// Whether `defence` has a cell against this attack. None against the clean model; none
    /// of the defences that work on the poisoned training set (ABL, Spectral Signatures,
    /// Activation Clustering) against Blind, whose training set holds no poison: its backdoor
    /// is in the training code, which those defences assume is the defender's own.
    fn faces(&self, defence: &BenchDefence) -> bool {
        !self.is_clean() && !(self.blind.is_some() && defence.retrains())
    }
}

/// One defence of the benchmark, with its configuration.
#[derive(Debug, Clone)]
pub enum BenchDefence {
    /// Fine-tuning on the defender's clean data (standard schedule of
    /// [`crate::defenses::fine_tuning`]).
    FineTuning(FineTuningConfig),
    /// Fine-pruning (Liu et al. 2018).
    FinePruning(FinePruningConfig),
    /// Neural Cleanse detection and unlearning (Wang et al. 2019).
    NeuralCleanse(NcUnlearningConfig),
    /// Anti-backdoor learning (Li et al. 2021): trains its own model on the poisoned data.
    Abl(AblConfig),
    /// Channel Lipschitzness-based Pruning (Zheng et al. 2022): data-free.
    Clp(ClpConfig),
    /// Feature Shift Tuning (Min et al. 2023) on the defender's clean data.
    Fst(FstConfig),
    /// FT-SAM (Zhu et al. 2023): fine-tuning with adaptive sharpness-aware minimisation.
    FtSam(FtSamConfig),
    /// Neural Attention Distillation (Li et al. 2021) from a fine-tuned teacher.
    Nad(NadConfig),
    /// Reconstructive Neuron Pruning (Li et al. 2023): unlearn, recover masks, prune.
    Rnp(RnpConfig),
    /// Adversarial Neuron Pruning (Wu & Wang 2021): masks learnt against adversarial neuron
    /// perturbations, the low ones pruned.
    Anp(AnpConfig),
    /// I-BAU (Zeng et al. 2022): minimax unlearning of a universal perturbation along the
    /// implicit hypergradient.
    IBau(IBauConfig),
    /// SAU (Wei et al. 2023): unlearning the adversarial examples that the backdoored model and
    /// the model being purified share.
    Sau(SauConfig),
    /// STRIP (Gao et al. 2019) as an input filter: the model's CA/ASR/RA behind it.
    Strip(StripConfig),
    /// Spectral Signatures (Tran et al. 2018) as a removal defence: the flagged samples
    /// dropped, a model retrained with the benchmark's recipe.
    SpectralSignatures(SpectralSignaturesConfig),
    /// Activation Clustering (Chen et al. 2018) as a removal defence, retrained likewise.
    ActivationClustering(ActivationClusteringConfig),
}

impl BenchDefence {
    /// Every defence's name, in the benchmark's order.
    pub const NAMES: [&'static str; 15] = ["ft", "fp", "nc", "clp", "fst", "ft-sam", "nad", "rnp", "anp", "i-bau", "sau", "strip", "abl", "spectral", "ac"];

    /// The defence called `name` (see [`Self::NAMES`]) with the benchmark's settings: its
    /// paper's defaults, CIFAR-10's crop and flip where it trains, and ABL's phases shortened
    /// to the benchmark's 20-epoch budget.
    ///
    /// ```
    /// use transferlab::benchmark::BenchDefence;
    /// assert_eq!(BenchDefence::by_name("spectral").unwrap().name(), "spectral");
    /// assert!(BenchDefence::by_name("dbd").unwrap_err().to_string().contains("ft, fp, nc, clp, fst, ft-sam, nad, rnp, anp, i-bau, sau, strip, abl, spectral, ac"));
    /// ```
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "ft" => BenchDefence::FineTuning(FineTuningConfig { augment: Augment::cifar(), ..FineTuningConfig::default() }),
            "fp" => BenchDefence::FinePruning(FinePruningConfig::default()),
            "nc" => BenchDefence::NeuralCleanse(NcUnlearningConfig { augment: Augment::cifar(), ..NcUnlearningConfig::default() }),
            "abl" => BenchDefence::Abl(AblConfig {
                isolation_epochs: 5,
                clean_epochs: 15,
                unlearning_epochs: 5,
                batch_size: 128,
                augment: Augment::cifar(),
                baseline: false,
                ..AblConfig::default()
            }),
            "clp" => BenchDefence::Clp(ClpConfig::default()),
            "fst" => BenchDefence::Fst(FstConfig { augment: Augment::cifar(), ..FstConfig::default() }),
            // 20 epochs of 256 on the defender's 2500 images: 200 SAM steps, the step count of
            // the benchmark's FT (10 epochs of 128) at twice its compute; the authors run 100.
            "ft-sam" => BenchDefence::FtSam(FtSamConfig { epochs: 20, augment: Augment::cifar(), ..FtSamConfig::default() }),
            // Batch 128 (BackdoorBench: 256; the paper: 64): 200 teacher and 400 student steps.
            "nad" => BenchDefence::Nad(NadConfig { batch_size: 128, augment: Augment::cifar(), ..NadConfig::default() }),
            "rnp" => BenchDefence::Rnp(RnpConfig { augment: Augment::cifar(), ..RnpConfig::default() }),
            // The authors' CIFAR-10 setting: 2000 iterations of 128 on the defender's data.
            "anp" => BenchDefence::Anp(AnpConfig::default()),
            // The authors' code: 5 rounds, batches of 100, no bound on the perturbation.
            "i-bau" => BenchDefence::IBau(IBauConfig::default()),
            // 20 rounds of the defender's 2500 images in batches of 256: 200 steps, the step
            // count of the benchmark's FT; the authors run 100 rounds (1000 steps), each step
            // 5 PGD steps through both models, beyond a CPU cell's budget.
            "sau" => BenchDefence::Sau(SauConfig { rounds: 20, ..SauConfig::default() }),
            "strip" => BenchDefence::Strip(StripConfig::default()),
            "spectral" => BenchDefence::SpectralSignatures(SpectralSignaturesConfig::default()),
            "ac" => BenchDefence::ActivationClustering(ActivationClusteringConfig::default()),
            other => return Err(Error::invalid("defence", format!("{other:?}; use one of {}", Self::NAMES.join(", ")))),
        })
    }

    /// The table's `defence` column (BackdoorBench's names).
    pub fn name(&self) -> &'static str {
        match self {
            BenchDefence::FineTuning(_) => "ft",
            BenchDefence::FinePruning(_) => "fp",
            BenchDefence::NeuralCleanse(_) => "nc",
            BenchDefence::Abl(_) => "abl",
            BenchDefence::Clp(_) => "clp",
            BenchDefence::Fst(_) => "fst",
            BenchDefence::FtSam(_) => "ft-sam",
            BenchDefence::Nad(_) => "nad",
            BenchDefence::Rnp(_) => "rnp",
            BenchDefence::Anp(_) => "anp",
            BenchDefence::IBau(_) => "i-bau",
            BenchDefence::Sau(_) => "sau",
            BenchDefence::Strip(_) => "strip",
            BenchDefence::SpectralSignatures(_) => "spectral",
            BenchDefence::ActivationClustering(_) => "ac",
        }
    }

    /// Whether the defence trains a model of its own from the poisoned data (a whole training
    /// run) instead of only working on the trained one.
    pub fn retrains(&self) -> bool {
        matches!(self, BenchDefence::Abl(_) | BenchDefence::SpectralSignatures(_) | BenchDefence::ActivationClustering(_))
    }

    fn settings(&self) -> String {
        // Progress display is not part of what a cell computes.
        match self {
            BenchDefence::FineTuning(c) => format!("{:?}", FineTuningConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::FinePruning(c) => format!("{:?}", FinePruningConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::NeuralCleanse(c) => {
                let mut c = c.clone();
                c.progress = ProgressMode::Hidden;
                c.inversion.progress = ProgressMode::Hidden;
                format!("{c:?}")
            }
            BenchDefence::Abl(c) => format!("{:?}", AblConfig { progress: ProgressMode::Hidden, device: Device::Cpu, ..c.clone() }),
            BenchDefence::Clp(c) => format!("{c:?}"),
            BenchDefence::Fst(c) => format!("{:?}", FstConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::FtSam(c) => format!("{:?}", FtSamConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::Nad(c) => format!("{:?}", NadConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::Rnp(c) => format!("{:?}", RnpConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::Anp(c) => format!("{:?}", AnpConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::IBau(c) => format!("{:?}", IBauConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::Sau(c) => format!("{:?}", SauConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::Strip(c) => format!("{:?}", StripConfig { progress: ProgressMode::Hidden, ..c.clone() }),
            BenchDefence::SpectralSignatures(c) => format!("{c:?}"),
            BenchDefence::ActivationClustering(c) => format!("{c:?}"),
        }
    }
}

/// The benchmark: which data, model, training recipe, attacks and defences.
///
/// [`Default`] is BackdoorBench's CIFAR-10 setting as it fits 2 CPU cores: CIFAR-10 by hub
/// id, CIFAR ResNet-20 (BackdoorBench's PreAct-ResNet-18 is 40x the compute; use it on a GPU)
/// with the CIFAR statistics inside the model, SGD (momentum 0.9, weight decay 5e-4), lr 0.1
/// cosine-annealed over 20 epochs (BackdoorBench: 0.01 over 100 epochs for PreAct-ResNet-18),
/// batch 128, random crop (padding 4) and flip; BadNets and Blended at 10 %, target 0; the
/// defender holds 5 % of the clean training set; FT, FP, NC, CLP, FST and ABL (STRIP, Spectral
/// Signatures and Activation Clustering by [`BenchDefence::by_name`]). ABL trains its own model
/// in the attacked model's budget: 5 LGA isolation epochs, 15 on the rest, 5 unlearning
/// epochs at 5e-4 (BackdoorBench: 10 + 60 + 5 against 100 training epochs).
#[derive(Debug, Clone)]
pub struct BackdoorBenchConfig {
    /// Hub id of an image-classification dataset with `train` and `test` splits.
    pub dataset: String,
    /// Use only this many training images per class (a stratified, seeded sample); all if `None`.
    pub train_per_class: Option<usize>,
    /// Use only this many test images per class; all if `None`.
    pub test_per_class: Option<usize>,
    /// Registry name of the victim architecture (see [`crate::models::MODEL_NAMES`]).
    pub model: String,
    /// The model's input normalisation (data, triggers and budgets stay in [0, 1]).
    pub normalize: Option<InputNorm>,
    pub attacks: Vec<BenchAttack>,
    pub defences: Vec<BenchDefence>,
    /// How every attacked model trains (its `checkpoint` is set by the benchmark).
    pub train: TrainConfig,
    /// Fraction of the clean training set the defender holds (BackdoorBench: 5 %).
    pub defender_fraction: f64,
    /// One grid per seed: each seed draws its own data subset, defender split, poisoning and
    /// initialisation (BackdoorBench reports one seed; more give the spread).
    pub seeds: Vec<u64>,
    pub device: Device,
    /// Models, checkpoints, the cell log, the table (`table.parquet`, `table.csv`) and the figure.
    pub out_dir: PathBuf,
    pub progress: ProgressMode,
}

impl Default for BackdoorBenchConfig {
    fn default() -> Self {
        Self {
            dataset: crate::hub::CIFAR10.into(),
            train_per_class: None,
            test_per_class: None,
            model: "resnet20".into(),
            normalize: Some(InputNorm::parse("cifar10").expect("known statistics")),
            attacks: vec![BenchAttack::badnets(), BenchAttack::blended()],
            defences: ["ft", "fp", "nc", "clp", "fst", "abl"].iter().map(|n| BenchDefence::by_name(n).expect("a known defence")).collect(),
            train: TrainConfig {
                epochs: 20,
                batch_size: 128,
                optimizer: OptimizerConfig::sgd_momentum(),
                schedule: LrSchedule::Cosine { lr: 0.1, min_lr: 0.0, epochs: 20.0 },
                augment: Augment::cifar(),
                ..TrainConfig::default()
            },
            defender_fraction: 0.05,
            seeds: vec![0],
            device: Device::Cpu,
            out_dir: PathBuf::from("runs/backdoorbench"),
            progress: ProgressMode::Bar,
        }
    }
}

/// Whether a cell of the table has a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellStatus {
    Done,
    /// Not (yet) computed: still to run, or running now. Its metrics are empty, never guessed.
    Pending,
}

/// One (attack, defence, seed) cell.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchCell {
    pub attack: String,
    /// `none` for the undefended model.
    pub defence: String,
    pub seed: u64,
    pub status: CellStatus,
    pub metrics: Option<BackdoorMetrics>,
    /// Defence effectiveness rate against the undefended model (defended cells only).
    pub der: Option<f64>,
    /// Wall time of the cell (for `none`: training the model).
    pub seconds: Option<f64>,
    /// For the detectors (STRIP, Spectral Signatures, Activation Clustering): how well they
    /// told poisoned from clean samples. `None` for other defences.
    pub detection: Option<DetectionScores>,
}

/// A detector's quality in a cell: AUROC of its score, the fraction of poisoned samples caught
/// at 5 % false positives, and the recall and false-positive rate of what it flagged (poisoned
/// training samples for the removal defences, triggered test inputs for the input filters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionScores {
    pub auroc: f64,
    /// NaN where it is undefined (see [`DetectionMetrics`]) and for cells logged before the
    /// benchmark recorded it.
    pub tpr_at_5_fpr: f64,
    pub recall: f64,
    pub false_positive_rate: f64,
}

impl From<&DetectionMetrics> for DetectionScores {
    fn from(m: &DetectionMetrics) -> Self {
        Self { auroc: m.auroc, tpr_at_5_fpr: m.tpr_at_5_fpr, recall: m.recall, false_positive_rate: m.false_positive_rate }
    }
}

/// The benchmark table, with BackdoorBench's published numbers beside ours.
#[derive(Debug, Clone)]
pub struct BackdoorBenchResult {
    pub cells: Vec<BenchCell>,
    /// Per attacked model, its training history (empty where the model was trained by an
    /// earlier run and loaded).
    pub histories: Vec<(String, History)>,
}

impl BackdoorBenchConfig {
    fn validate(&self) -> Result<()> {
        if !(self.defender_fraction > 0.0 && self.defender_fraction < 1.0) {
            return Err(Error::invalid("defender fraction", format!("{} must be in (0, 1)", self.defender_fraction)));
        }
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if self.seeds.is_empty() || seeds.len() != self.seeds.len() {
            return Err(Error::invalid("benchmark seeds", format!("{:?}: give one or more distinct seeds (BackdoorBench: one, 0)", self.seeds)));
        }
        if self.train.epochs == 0 || self.train.batch_size == 0 {
            return Err(Error::invalid("benchmark recipe", format!("{} epochs of batch size {}: both must be at least 1", self.train.epochs, self.train.batch_size)));
        }
        if self.attacks.is_empty() {
            return Err(Error::invalid("benchmark", "no attack given; add BenchAttack::badnets() or another"));
        }
        let mut names: Vec<&str> = self.attacks.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != self.attacks.len() {
            return Err(Error::invalid("benchmark", "two attacks share a name; give each a distinct name"));
        }
        // Before hours of training: an attack whose training-time addition cannot run says so now.
        for attack in &self.attacks {
            attack.training().validate_training().map_err(|e| Error::invalid("benchmark", format!("attack {:?}: {e}", attack.name)))?;
        }
        Ok(())
    }

    /// This configuration trained for `epochs` epochs, a cosine schedule stretched to match.
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.train.epochs = epochs;
        if let LrSchedule::Cosine { epochs: e, .. } = &mut self.train.schedule {
            *e = epochs as f64;
        }
        self
    }

    /// This configuration, checked: distinct seeds, attacks and a usable recipe.
    pub(crate) fn validated(self) -> Result<Self> {
        self.validate()?;
        Ok(self)
    }

    /// The seed of a one-seed configuration (the first seed of a grid).
    pub(crate) fn seed(&self) -> u64 {
        self.seeds[0]
    }

    /// This configuration for `seed` alone.
    fn for_seed(&self, seed: u64) -> Self {
        Self { seeds: vec![seed], ..self.clone() }
    }

    /// Everything a trained model depends on, as text (hashed into file names and cell keys).
    fn model_settings(&self, attack: &BenchAttack) -> String {
        let train = TrainConfig { checkpoint: None, progress: ProgressMode::Hidden, ..self.train.clone() };
        format!(
            "v{}|numerics={}|{}|train/class={:?}|test/class={:?}|{}|{:?}|{:?}|{:?}{}{}{}{}{}{}|defender={}|seed={}",
            env!("CARGO_PKG_VERSION"),
            crate::train::NUMERICS_VERSION,
            self.dataset,
            self.train_per_class,
            self.test_per_class,
            self.model,
            self.normalize,
            train,
            attack.poison,
            // Only hardened attacks add to the text, so other models keep their file names.
            attack.hardening.as_ref().map_or(String::new(), |h| format!("|hardening={h:?}")),
            attack.blind.as_ref().map_or(String::new(), |b| format!("|blind={b:?}")),
            attack.noise_mode.map_or(String::new(), |r| format!("|noise_mode={r:?}")),
            attack.negatives.map_or(String::new(), |r| format!("|negatives={r:?}")),
            attack.low_frequency.as_ref().map_or(String::new(), |f| format!("|low_frequency={f:?}")),
            attack.reflections.map_or(String::new(), |n| format!("|reflections={n}")),
            self.defender_fraction,
            self.seed()
        )
    }

    fn cell_key(&self, attack: &BenchAttack, defence: &str, settings: &str) -> SweepConfig {
        let mut c = SweepConfig::new();
        c.insert("attack".into(), Value::from(attack.name.clone()));
        c.insert("defence".into(), Value::from(defence));
        c.insert("seed".into(), Value::from(self.seed()));
        c.insert("fingerprint".into(), Value::from(short_hash(&format!("{}|{defence}|{settings}", self.model_settings(attack)))));
        c
    }

    /// The planned cells: per attack, `none` then each defence (the clean model only `none`).
    fn plan(&self) -> Vec<(usize, String, String)> {
        let mut out = Vec::new();
        for (a, attack) in self.attacks.iter().enumerate() {
            out.push((a, "none".to_string(), String::new()));
            for d in self.defences.iter().filter(|d| attack.faces(d)) {
                out.push((a, d.name().to_string(), d.settings()));
            }
        }
        out
    }

    /// The grid's tasks, seed by seed, attacks in order: the numbering of a cluster's job array.
    pub fn tasks(&self) -> Vec<GridTask> {
        self.seeds.iter().flat_map(|&seed| self.attacks.iter().map(move |a| GridTask { attack: a.name.clone(), seed })).collect()
    }

    /// The planned cells of `task`, as (defence, finished).
    pub fn task_cells(&self, task: &GridTask) -> Result<Vec<(String, bool)>> {
        let one = self.for_seed(task.seed);
        let Some(attack) = one.attacks.iter().find(|a| a.name == task.attack) else {
            return Ok(Vec::new());
        };
        let sweep = one.task_sweep(attack);
        one.plan()
            .into_iter()
            .filter(|c| one.attacks[c.0].name == attack.name)
            .map(|(_, d, s)| Ok((d.clone(), sweep.row_of(&one.cell_key(attack, &d, &s))?.is_some())))
            .collect()
    }

    /// A one-seed configuration's file for `attack`'s task: `cells/{task}.{ext}`. Each task
    /// logs its cells in its own file, so tasks on several machines never write the same file.
    fn task_path(&self, attack: &BenchAttack, ext: &str) -> PathBuf {
        let task = GridTask { attack: attack.name.clone(), seed: self.seed() };
        self.out_dir.join("cells").join(format!("{}.{ext}", task.id()))
    }

    fn task_sweep(&self, attack: &BenchAttack) -> Sweep {
        Sweep::new(self.task_path(attack, "jsonl"))
    }

    fn model_path(&self, attack: &BenchAttack, ext: &str) -> PathBuf {
        let tag = short_hash(&self.model_settings(attack));
        self.out_dir.join("models").join(format!("{}-seed{}-{tag}.{ext}", attack.name, self.seed()))
    }
}

/// Run the benchmark (or resume it): train each attacked model unless already trained, apply
/// every defence not yet logged, and write `table.parquet`, `table.csv` and `figure.png` into
/// `out_dir` after every cell, unfinished cells marked pending.
///
/// ```no_run
/// use transferlab::benchmark::{backdoorbench, BackdoorBenchConfig};
/// use transferlab::report::Outcome;
/// // CIFAR-10 by hub id; hours on 2 CPU cores (`just backdoorbench`), minutes on a GPU.
/// let result = backdoorbench::run(&BackdoorBenchConfig::default()).unwrap();
/// println!("{}", result.to_dataframe().unwrap());
/// ```
pub fn run(cfg: &BackdoorBenchConfig) -> Result<BackdoorBenchResult> {
    cfg.validate()?;
    split_single_log(cfg)?;
    let progress = Progress::new("backdoorbench cells", (cfg.plan().len() * cfg.seeds.len()) as u64, cfg.progress);
    write_outputs(cfg, &collect(cfg)?)?;
    let rewrite_table = || write_outputs(cfg, &collect(cfg)?);
    let mut histories = Vec::new();
    for &seed in &cfg.seeds {
        let one = cfg.for_seed(seed);
        let data = SeedData::load(&one)?;
        // Two passes: first every defence that works on the trained model (cheap), then those
        // that train their own model from the poisoned data (ABL: a whole training run each),
        // so that an interrupted run has the most cells for its time.
        for retrains in [false, true] {
            for attack in &one.attacks {
                if let Some(h) = run_attack(&one, attack, &data, Some(retrains), &progress, &rewrite_table)? {
                    histories.push((attack.name.clone(), h));
                }
            }
        }
    }
    progress.finish();
    let mut result = collect(cfg)?;
    result.histories = histories;
    write_outputs(cfg, &result)?;
    Ok(result)
}

/// One unit of the grid: one attack's model for one seed, trained once, and every defence
/// applied to it. On a cluster each task is one job ([`crate::benchmark::grid`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GridTask {
    pub attack: String,
    pub seed: u64,
}

impl GridTask {
    /// `badnets-seed0`: the stem of the task's files (cell log, lock, failure report).
    pub fn id(&self) -> String {
        format!("{}-seed{}", self.attack, self.seed)
    }
}

/// Run one task of the grid (see [`BackdoorBenchConfig::tasks`]): train or load the attack's
/// model for the seed and apply every defence not yet logged. Writes only the task's own files
/// (its model, checkpoint and cell log), so tasks can run side by side on a shared file system;
/// [`status`] merges the logs into the table. Returns the training history when it trained.
///
/// An error leaves no row for the cell that failed; the cells logged before it stay.
pub fn run_task(cfg: &BackdoorBenchConfig, task: &GridTask) -> Result<Option<History>> {
    cfg.validate()?;
    split_single_log(cfg)?;
    if !cfg.seeds.contains(&task.seed) {
        return Err(Error::invalid("grid task", format!("seed {} is not one of the grid's seeds {:?}", task.seed, cfg.seeds)));
    }
    let one = cfg.for_seed(task.seed);
    let attack = one.attacks.iter().find(|a| a.name == task.attack).ok_or_else(|| {
        let names: Vec<&str> = one.attacks.iter().map(|a| a.name.as_str()).collect();
        Error::invalid("grid task", format!("attack {:?} is not in the grid ({})", task.attack, names.join(", ")))
    })?;
    let cells = one.task_cells(task)?;
    let progress = Progress::new(&format!("task {}", task.id()), cells.len() as u64, cfg.progress);
    if cells.iter().all(|c| c.1) {
        progress.inc(cells.len() as u64);
        progress.finish();
        return Ok(None);
    }
    let data = SeedData::load(&one)?;
    let history = run_attack(&one, attack, &data, None, &progress, &|| Ok(()))?;
    progress.finish();
    Ok(history)
}

/// One seed's data: the (sampled) training and test sets and the defender's share.
struct SeedData {
    train: Dataset,
    test: Dataset,
    defender: Dataset,
}

impl SeedData {
    fn load(cfg: &BackdoorBenchConfig) -> Result<Self> {
        let (train, test) = load_data(cfg)?;
        let defender = cfg.defender_set(&train)?;
        Ok(Self { train, test, defender })
    }
}

/// `attack`'s cells for a one-seed configuration: `none` (training or loading the model) and
/// the defences of the pass (`Some(false)`: those working on the trained model, `Some(true)`:
/// those training their own; `None`: all, cheap ones first). `after_cell` runs after each
/// logged cell.
fn run_attack(
    cfg: &BackdoorBenchConfig,
    attack: &BenchAttack,
    data: &SeedData,
    retraining_pass: Option<bool>,
    progress: &Progress,
    after_cell: &dyn Fn() -> Result<()>,
) -> Result<Option<History>> {
    let sweep = cfg.task_sweep(attack);
    let in_pass = |d: &BenchDefence| retraining_pass.is_none_or(|r| d.retrains() == r);
    let first_pass = retraining_pass != Some(true);
    let mut defences: Vec<&BenchDefence> = cfg.defences.iter().filter(|d| attack.faces(d) && in_pass(d)).collect();
    defences.sort_by_key(|d| d.retrains());
    let mut keys: Vec<SweepConfig> = defences.iter().map(|d| cfg.cell_key(attack, d.name(), &d.settings())).collect();
    if first_pass {
        keys.insert(0, cfg.cell_key(attack, "none", ""));
    }
    let done = |k: &SweepConfig| -> Result<bool> { Ok(sweep.row_of(k)?.is_some()) };
    if keys.iter().map(done).collect::<Result<Vec<bool>>>()?.iter().all(|&d| d) {
        progress.inc(keys.len() as u64);
        return Ok(None);
    }
    let task = GridTask { attack: attack.name.clone(), seed: cfg.seed() };
    let _lock = FileLock::try_acquire(&cfg.task_path(attack, "lock"))?.ok_or_else(|| {
        Error::invalid(
            "grid task",
            format!("{} is running in another process (it holds {}); wait for it to finish, or stop it", task.id(), cfg.task_path(attack, "lock").display()),
        )
    })?;
    let (poisoned, probe) = cfg.attack_inputs(attack, &data.train, &data.test)?;
    let started = Instant::now();
    let (net, history) = train_or_load(cfg, attack, &poisoned, &data.test)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let before_key = cfg.cell_key(attack, "none", "");
    let before = match sweep.row_of(&before_key)? {
        Some(row) => metrics_of(&row)?,
        None => {
            let m = probe.measure(&net)?;
            sweep.run(&[before_key], |_| Ok(metric_values(&m, None, train_seconds)))?;
            m
        }
    };
    if first_pass {
        progress.inc(1);
        after_cell()?;
    }
    for defence in defences {
        let key = cfg.cell_key(attack, defence.name(), &defence.settings());
        progress.message(format!("{} / {}", attack.name, defence.name()));
        sweep.run(&[key], |_| {
            let started = Instant::now();
            let (after, detection) = apply_defence(defence, &net, &data.defender, &poisoned, &probe, cfg)?;
            let der = defence_effectiveness_rate(&before, &after);
            let mut values = metric_values(&after, Some(der), started.elapsed().as_secs_f64());
            if let Some(d) = detection {
                values.extend([
                    ("auroc".to_string(), d.auroc),
                    ("det_tpr5".to_string(), d.tpr_at_5_fpr),
                    ("det_recall".to_string(), d.recall),
                    ("det_fpr".to_string(), d.false_positive_rate),
                ]);
            }
            Ok(values)
        })?;
        progress.inc(1);
        after_cell()?;
    }
    Ok(history)
}

/// What the defences of one attack see, for the first seed: the trained (backdoored) model,
/// the poisoned training set, the defender's clean data and the probe (test set, trigger,
/// target). For methods outside the grid, such as the detectors, run on the grid's models.
#[derive(Debug)]
pub struct AttackCell {
    pub net: Network,
    pub poisoned: Dataset,
    pub defender: Dataset,
    pub probe: BackdoorProbe,
}

impl BackdoorBenchConfig {
    /// The inputs of `attack`'s cells (first seed), with the model [`run`] trained and saved;
    /// an error says so if it has not been trained yet.
    pub fn attack_cell(&self, attack: &BenchAttack) -> Result<AttackCell> {
        self.attack_cell_with(attack, &self.attack_cells_data()?)
    }

    /// The first seed's training and test sets, decoded once for several [`Self::attack_cell_with`].
    pub(crate) fn attack_cells_data(&self) -> Result<(Dataset, Dataset)> {
        load_data(&self.for_seed(self.seed()))
    }

    /// [`Self::attack_cell`] on data already decoded by [`Self::attack_cells_data`].
    pub(crate) fn attack_cell_with(&self, attack: &BenchAttack, (train_set, test_set): &(Dataset, Dataset)) -> Result<AttackCell> {
        let one = self.for_seed(self.seed());
        let weights = one.model_path(attack, "safetensors");
        if !weights.exists() {
            return Err(Error::invalid(
                "benchmark model",
                format!("{} for attack {:?} is not trained yet; run backdoorbench::run with this configuration first", weights.display(), attack.name),
            ));
        }
        let (poisoned, probe) = one.attack_inputs(attack, train_set, test_set)?;
        Ok(AttackCell { net: Network::from_file(&weights, &one.device)?, poisoned, defender: one.defender_set(train_set)?, probe })
    }

    /// The seed's clean model (the `clean` attack's, trained here if its task has not trained
    /// it yet, under that task's lock so that two tasks never train it at once).
    fn clean_model(&self, train_set: &Dataset, test_set: &Dataset) -> Result<Network> {
        let clean = BenchAttack::clean();
        let _lock = FileLock::acquire(&self.task_path(&clean, "lock"))?;
        let unpoisoned = poison(train_set, &PoisonConfig { seed: self.seed(), ..clean.poison.clone() })?;
        Ok(train_or_load(self, &clean, &unpoisoned, test_set)?.0)
    }

    /// The defender's clean share of the training set (one seed's configuration).
    fn defender_set(&self, train_set: &Dataset) -> Result<Dataset> {
        Ok(train_set.split(self.defender_fraction, self.seed(), true)?.0)
    }

    /// `attack`'s poisoned training set and the probe that scores it (one seed's configuration).
    fn attack_inputs(&self, attack: &BenchAttack, train_set: &Dataset, test_set: &Dataset) -> Result<(Dataset, BackdoorProbe)> {
        let mut cfg = PoisonConfig { seed: self.seed(), ..attack.poison.clone() };
        if let Some(fit) = &attack.low_frequency {
            // Refitted on every call: the clean model is on disk and the fit is seeded, so a
            // resumed task gets the trigger its model was trained with.
            let fit = LowFrequencyFit { seed: self.seed(), ..fit.clone() };
            low_frequency::fit_trigger(&self.clean_model(train_set, test_set)?, train_set, &fit, self.progress)?.arm(&mut cfg);
        }
        if let Some(n) = attack.reflections {
            let per_class = (n / train_set.num_classes().max(1)).max(1);
            let pool = train_set.per_class_sample(per_class, self.seed().wrapping_add(1))?;
            cfg.trigger = Trigger::Reflection(ReflectionTrigger::new(&pool, train_set.shape)?);
        }
        let poisoned = match &attack.hardening {
            None => poison(train_set, &cfg)?,
            Some(h) => h.poison(train_set, &cfg, &self.clean_model(train_set, test_set)?)?,
        };
        Ok((poisoned, BackdoorProbe::new(test_set.clone(), cfg.trigger, cfg.target)))
    }
}

/// Results folders written before tasks had their own logs hold one `cells.jsonl`: split its
/// records into the task logs (records a task log already has are not repeated) and keep the
/// old file as `cells.jsonl.split`, so no finished cell is computed twice.
fn split_single_log(cfg: &BackdoorBenchConfig) -> Result<()> {
    let single = cfg.out_dir.join("cells.jsonl");
    if !single.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&single).map_err(|e| Error::io("read", &single, e))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut by_task: Vec<(PathBuf, Vec<&str>)> = Vec::new();
    for line in complete.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).map_err(|e| Error::format(&single, "benchmark log", e.to_string()))?;
        let config = &record["_config"];
        let (Some(attack), Some(seed)) = (config["attack"].as_str(), config["seed"].as_u64()) else {
            return Err(Error::format(&single, "benchmark log", format!("a record without attack and seed: {line}")));
        };
        let path = cfg.out_dir.join("cells").join(format!("{}.jsonl", GridTask { attack: attack.into(), seed }.id()));
        match by_task.iter_mut().find(|(p, _)| *p == path) {
            Some((_, lines)) => lines.push(line),
            None => by_task.push((path, vec![line])),
        }
    }
    for (path, lines) in by_task {
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let mut merged: String = existing.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect();
        for line in lines {
            if !existing.lines().any(|l| l == line) {
                merged.push_str(line);
                merged.push('\n');
            }
        }
        crate::fsutil::write_bytes_atomic(&path, merged.as_bytes())?;
    }
    match std::fs::rename(&single, cfg.out_dir.join("cells.jsonl.split")) {
        // Another task of the grid split it first.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("rename", &single, e)),
        _ => Ok(()),
    }
}

/// The table as it stands in `out_dir` (finished cells from the log, the rest pending),
/// without training or defending anything; rewrites the table and figure files from the log.
pub fn status(cfg: &BackdoorBenchConfig) -> Result<BackdoorBenchResult> {
    cfg.validate()?;
    split_single_log(cfg)?;
    let result = collect(cfg)?;
    write_outputs(cfg, &result)?;
    Ok(result)
}

fn collect(cfg: &BackdoorBenchConfig) -> Result<BackdoorBenchResult> {
    let mut cells = Vec::new();
    for &seed in &cfg.seeds {
        let one = cfg.for_seed(seed);
        for (a, defence, settings) in one.plan() {
            let attack = &one.attacks[a];
            let row = one.task_sweep(attack).row_of(&one.cell_key(attack, &defence, &settings))?;
            let (status, metrics, der, seconds) = match &row {
                Some(r) => (CellStatus::Done, Some(metrics_of(r)?), r.get("der").and_then(Value::as_f64), r.get("seconds").and_then(Value::as_f64)),
                None => (CellStatus::Pending, None, None, None),
            };
            let detection = row.as_ref().and_then(|r| {
                let f = |k: &str| r.get(k).and_then(Value::as_f64);
                Some(DetectionScores {
                    auroc: f("auroc")?,
                    tpr_at_5_fpr: f("det_tpr5").unwrap_or(f64::NAN),
                    recall: f("det_recall")?,
                    false_positive_rate: f("det_fpr")?,
                })
            });
            cells.push(BenchCell { attack: attack.name.clone(), defence, seed, status, metrics, der, seconds, detection });
        }
    }
    Ok(BackdoorBenchResult { cells, histories: Vec::new() })
}

fn write_outputs(cfg: &BackdoorBenchConfig, result: &BackdoorBenchResult) -> Result<()> {
    let df = result.to_dataframe()?;
    crate::report::save_table(&df, cfg.out_dir.join("table.parquet"))?;
    crate::report::save_table(&df, cfg.out_dir.join("table.csv"))?;
    result.figure()?.save(cfg.out_dir.join("figure.png"))?;
    // The grid views need one finished cell.
    if result.cells.iter().any(|c| c.metrics.is_some()) {
        result.asr_heatmap().save(cfg.out_dir.join("asr_heatmap.png"))?;
        result.ca_asr_scatter().save(cfg.out_dir.join("ca_vs_asr.png"))?;
    }
    Ok(())
}

fn load_data(cfg: &BackdoorBenchConfig) -> Result<(Dataset, Dataset)> {
    let hub = Hub::from_env();
    let load = |split: &str, per_class: Option<usize>| -> Result<Dataset> {
        let ds = load_dataset(&hub, &DatasetRequest::new(&cfg.dataset, split))?;
        match per_class {
            Some(k) => ds.per_class_sample(k, cfg.seed()),
            None => Ok(ds),
        }
    };
    Ok((load("train", cfg.train_per_class)?, load("test", cfg.test_per_class)?))
}

fn train_or_load(cfg: &BackdoorBenchConfig, attack: &BenchAttack, poisoned: &Dataset, test: &Dataset) -> Result<(Network, Option<History>)> {
    let weights = cfg.model_path(attack, "safetensors");
    if weights.exists() {
        return Ok((Network::from_file(&weights, &cfg.device)?, None));
    }
    let mut spec = ModelSpec::named(&cfg.model, poisoned.shape, poisoned.num_classes())?;
    if let Some(n) = &cfg.normalize {
        spec = spec.normalized(n.clone())?;
    }
    let mut net = Network::new(&spec, cfg.seed(), &cfg.device)?;
    let checkpoint = cfg.model_path(attack, "ckpt");
    let tc = TrainConfig { checkpoint: Some(checkpoint.clone()), seed: cfg.seed(), progress: cfg.progress, ..cfg.train.clone() };
    let history = train_on_poisoned(&mut net, poisoned, Some(test), &tc, &attack.training())?;
    net.save(&weights)?;
    crate::report::save_table(&history.to_dataframe()?, cfg.model_path(attack, "history.csv"))?;
    // The weights file now stands for the finished run; the checkpoint is no longer needed.
    std::fs::remove_file(&checkpoint).ok();
    Ok((net, Some(history)))
}

fn apply_defence(
    defence: &BenchDefence,
    net: &Network,
    defender: &Dataset,
    poisoned: &Dataset,
    probe: &BackdoorProbe,
    cfg: &BackdoorBenchConfig,
) -> Result<(BackdoorMetrics, Option<DetectionScores>)> {
    let seed = |s: u64| s.wrapping_add(cfg.seed());
    let detector = |after: BackdoorMetrics, d: &DetectionMetrics| (after, Some(DetectionScores::from(d)));
    Ok(match defence {
        BenchDefence::FineTuning(c) => {
            let mut model = net.duplicate()?;
            model.unfreeze_all();
            train(&mut model, defender, None, &c.train_config(LrSchedule::Constant { lr: c.standard_lr }))?;
            (probe.measure(&model)?, None)
        }
        BenchDefence::FinePruning(c) => {
            let r = fine_pruning::run(net, defender, probe, &FinePruningConfig { seed: seed(c.seed), ..c.clone() })?;
            (last_metrics(&r.after, "fine-pruning")?, None)
        }
        BenchDefence::NeuralCleanse(c) => {
            let (r, _) = nc_unlearning::run(net, defender, probe, &NcUnlearningConfig { seed: seed(c.seed), ..c.clone() })?;
            (last_metrics(&r.after, "neural cleanse")?, None)
        }
        BenchDefence::Abl(c) => {
            let r = abl::run(poisoned, net.spec(), probe, &AblConfig { seed: seed(c.seed), device: cfg.device.clone(), ..c.clone() })?;
            (r.final_metrics(), None)
        }
        BenchDefence::Clp(c) => (clp::run(net, probe, c)?.after, None),
        BenchDefence::Fst(c) => (feature_shift_tuning::run(net, defender, probe, &FstConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::FtSam(c) => (ft_sam::run(net, defender, probe, &FtSamConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::Nad(c) => (nad::run(net, defender, probe, &NadConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::Rnp(c) => (rnp::run(net, defender, probe, &RnpConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::Anp(c) => (anp::run(net, defender, probe, &AnpConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::IBau(c) => (i_bau::run(net, defender, probe, &IBauConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::Sau(c) => (sau::run(net, defender, probe, &SauConfig { seed: seed(c.seed), ..c.clone() })?.after, None),
        BenchDefence::Strip(c) => {
            let r = strip::run(net, defender, probe, &StripConfig { seed: seed(c.seed), progress: cfg.progress, ..c.clone() })?;
            detector(r.behind_filter, &r.detection)
        }
        BenchDefence::SpectralSignatures(c) => {
            let c = SpectralSignaturesConfig { retrain: Some(retrain_recipe(cfg)), seed: seed(c.seed), ..c.clone() };
            let r = spectral_signatures::run(net, poisoned, probe, &c)?;
            detector(retrained(r.retrained, "spectral signatures")?, &r.detection)
        }
        BenchDefence::ActivationClustering(c) => {
            let c = ActivationClusteringConfig { retrain: Some(retrain_recipe(cfg)), seed: seed(c.seed), ..c.clone() };
            let r = activation_clustering::run(net, poisoned, probe, &c)?;
            detector(retrained(r.retrained, "activation clustering")?, &r.detection)
        }
    })
}

/// The victim's own recipe, for removal defences' retraining (no checkpoint: a killed retrain
/// restarts its cell).
fn retrain_recipe(cfg: &BackdoorBenchConfig) -> TrainConfig {
    TrainConfig { seed: cfg.seed(), progress: cfg.progress, checkpoint: None, ..cfg.train.clone() }
}

fn retrained(m: Option<BackdoorMetrics>, what: &str) -> Result<BackdoorMetrics> {
    m.ok_or_else(|| Error::invalid("defence result", format!("{what} was given a recipe but retrained nothing")))
}

fn last_metrics(rows: &[(String, BackdoorMetrics)], what: &str) -> Result<BackdoorMetrics> {
    rows.last().map(|r| r.1).ok_or_else(|| Error::invalid("defence result", format!("{what} returned no metrics")))
}

fn metric_values(m: &BackdoorMetrics, der: Option<f64>, seconds: f64) -> Vec<(String, f64)> {
    let mut v = vec![
        ("ca".to_string(), m.clean_accuracy),
        ("asr".to_string(), m.attack_success_rate),
        ("ra".to_string(), m.robust_accuracy),
        ("n_clean".to_string(), m.n_clean as f64),
        ("n_triggered".to_string(), m.n_triggered as f64),
        ("seconds".to_string(), seconds),
    ];
    if let Some(d) = der {
        v.push(("der".to_string(), d));
    }
    v
}

fn metrics_of(row: &SweepConfig) -> Result<BackdoorMetrics> {
    let f = |k: &str| {
        row.get(k).and_then(Value::as_f64).ok_or_else(|| Error::invalid("benchmark log", format!("a logged cell has no {k}; delete that task's log under cells/ to recompute it")))
    };
    Ok(BackdoorMetrics {
        clean_accuracy: f("ca")?,
        attack_success_rate: f("asr")?,
        robust_accuracy: f("ra")?,
        n_clean: f("n_clean")? as usize,
        n_triggered: f("n_triggered")? as usize,
    })
}

pub(crate) fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl BackdoorBenchResult {
    /// The grid at a glance: ASR (%) per attack (rows) and defence (columns, `none` first),
    /// averaged over seeds; cells with no finished seed are grey `?`.
    pub fn asr_heatmap(&self) -> Figure {
        let attacks = first_seen(self.cells.iter().map(|c| c.attack.clone()));
        let defences = first_seen(self.cells.iter().map(|c| c.defence.clone()));
        let planned = |a: &String, d: &String| self.cells.iter().any(|c| &c.attack == a && &c.defence == d);
        let values = attacks
            .iter()
            .flat_map(|a| defences.iter().map(move |d| (a, d)))
            .map(|(a, d)| {
                let done: Vec<f64> =
                    self.cells.iter().filter(|c| &c.attack == a && &c.defence == d).filter_map(|c| c.metrics.map(|m| 100.0 * m.attack_success_rate)).collect();
                if done.is_empty() { f64::NAN } else { done.iter().sum::<f64>() / done.len() as f64 }
            })
            .collect();
        let mut chart = Heatmap::new("ASR (%) after each defence; ? = still to run, n/a = not planned", attacks.clone(), defences.clone(), values)
            .axes("attack", "defence");
        // Pairs the plan leaves out (Blind faces no data-level defence) are not pending.
        for (r, a) in attacks.iter().enumerate() {
            for (c, d) in defences.iter().enumerate() {
                if !planned(a, d) {
                    chart = chart.note(r, c, "n/a");
                }
            }
        }
        Figure::new(Chart::Heatmap(chart)).with_size(1000, 520)
    }

    /// CA against ASR (%) of every finished cell, labelled attack/defence: a good defence sits
    /// at the bottom right.
    pub fn ca_asr_scatter(&self) -> Figure {
        let done: Vec<&BenchCell> = self.cells.iter().filter(|c| c.metrics.is_some()).collect();
        let points = done.iter().filter_map(|c| c.metrics.map(|m| (100.0 * m.clean_accuracy, 100.0 * m.attack_success_rate))).collect();
        // Colour says the attack, so a label names the defence alone (33 cells' "attack/defence"
        // labels overlapped).
        let labels = done.iter().map(|c| c.defence.clone()).collect();
        let groups = done.iter().map(|c| c.attack.clone()).collect();
        let chart = ScatterChart::new("Clean accuracy vs attack success rate per cell", "CA (%)", "ASR (%)", points).labels(labels).groups(groups);
        Figure::new(Chart::Scatter(chart.without_fit()))
    }
}

impl Outcome for BackdoorBenchResult {
    /// One row per cell: attack, defence, seed, status (`done` / `pending`), ca, asr, ra, der,
    /// seconds (null while pending), the detectors' auroc, det_tpr5 (TPR at 5 % FPR),
    /// det_recall and det_fpr (null for other defences), and BackdoorBench's published `bb_ca`,
    /// `bb_asr` (%, null where it reports none). Our rates are fractions in [0, 1].
    fn to_dataframe(&self) -> Result<DataFrame> {
        let c = &self.cells;
        let m = |f: &dyn Fn(&BackdoorMetrics) -> f64| c.iter().map(|x| x.metrics.as_ref().map(f)).collect::<Vec<Option<f64>>>();
        let bb = |i: usize| c.iter().map(|x| published(&x.attack, &x.defence).map(|p| if i == 0 { p.0 } else { p.1 })).collect::<Vec<_>>();
        let status = c.iter().map(|x| if x.status == CellStatus::Done { "done" } else { "pending" }).collect::<Vec<_>>();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("attack".into(), c.iter().map(|x| x.attack.clone()).collect::<Vec<_>>()).into(),
            Series::new("defence".into(), c.iter().map(|x| x.defence.clone()).collect::<Vec<_>>()).into(),
            Series::new("seed".into(), c.iter().map(|x| x.seed).collect::<Vec<_>>()).into(),
            Series::new("status".into(), status).into(),
            Series::new("ca".into(), m(&|x| x.clean_accuracy)).into(),
            Series::new("asr".into(), m(&|x| x.attack_success_rate)).into(),
            Series::new("ra".into(), m(&|x| x.robust_accuracy)).into(),
            Series::new("der".into(), c.iter().map(|x| x.der).collect::<Vec<_>>()).into(),
            Series::new("seconds".into(), c.iter().map(|x| x.seconds).collect::<Vec<_>>()).into(),
            Series::new("auroc".into(), c.iter().map(|x| x.detection.map(|d| d.auroc)).collect::<Vec<_>>()).into(),
            Series::new("det_tpr5".into(), c.iter().map(|x| x.detection.map(|d| d.tpr_at_5_fpr).filter(|t| !t.is_nan())).collect::<Vec<_>>()).into(),
            Series::new("det_recall".into(), c.iter().map(|x| x.detection.map(|d| d.recall)).collect::<Vec<_>>()).into(),
            Series::new("det_fpr".into(), c.iter().map(|x| x.detection.map(|d| d.false_positive_rate)).collect::<Vec<_>>()).into(),
            Series::new("bb_ca".into(), bb(0)).into(),
            Series::new("bb_asr".into(), bb(1)).into(),
        ])?)
    }

    /// CA and ASR per cell, ours beside BackdoorBench's published PreAct-ResNet-18 numbers;
    /// pending cells are marked `?` and drawn empty.
    fn figure(&self) -> Result<Figure> {
        let several_seeds = self.cells.iter().any(|c| c.seed != self.cells[0].seed);
        let labels: Vec<String> = self
            .cells
            .iter()
            .map(|c| {
                let seed = if several_seeds { format!(" s{}", c.seed) } else { String::new() };
                format!("{}/{}{seed}{}", c.attack, c.defence, if c.status == CellStatus::Pending { " ?" } else { "" })
            })
            .collect();
        let ours = |f: &dyn Fn(&BackdoorMetrics) -> f64| self.cells.iter().map(|c| c.metrics.as_ref().map_or(0.0, |m| 100.0 * f(m))).collect::<Vec<_>>();
        let theirs = |i: usize| {
            self.cells.iter().map(|c| published(&c.attack, &c.defence).map_or(0.0, |p| if i == 0 { p.0 } else { p.1 })).collect::<Vec<_>>()
        };
        let title = if self.cells.iter().any(|c| c.status == CellStatus::Pending) {
            "BackdoorBench setting: ours vs published (PreAct-ResNet-18); ? = still to run"
        } else {
            "BackdoorBench setting: ours vs published (PreAct-ResNet-18)"
        };
        let chart = BarChart::new(title, "%", labels)
            .series("CA (ours)", ours(&|m| m.clean_accuracy))
            .series("CA (BackdoorBench)", theirs(0))
            .series("ASR (ours)", ours(&|m| m.attack_success_rate))
            .series("ASR (BackdoorBench)", theirs(1))
            .y_range(0.0, 105.0);
        // About 110 px per cell, so that the cell labels under the bars do not run into each
        // other (14 cells at 1400 px did); capped where a many-seed grid would make it unwieldy
        // (the heatmap is that grid's figure).
        let width = (300 + 110 * self.cells.len() as u32).clamp(1400, 4000);
        Ok(Figure::new(Chart::Bars(chart)).with_size(width, 560))
    }

    fn summary(&self) -> String {
        let done: Vec<&BenchCell> = self.cells.iter().filter(|c| c.status == CellStatus::Done).collect();
        let distinct = |f: &dyn Fn(&BenchCell) -> String| {
            let mut v: Vec<String> = self.cells.iter().map(f).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        let (attacks, defences, seeds) = (distinct(&|c| c.attack.clone()), distinct(&|c| c.defence.clone()), distinct(&|c| c.seed.to_string()));
        // Per defence over its finished cells: mean ASR after it, the grid's headline.
        let names = first_seen(done.iter().map(|c| c.defence.as_str()));
        let means: Vec<String> = names
            .iter()
            .filter_map(|d| {
                let asr: Vec<f64> = done.iter().filter(|c| c.defence == *d).filter_map(|c| c.metrics.map(|m| m.attack_success_rate)).collect();
                (!asr.is_empty()).then(|| format!("{d} {:.1} %", 100.0 * asr.iter().sum::<f64>() / asr.len() as f64))
            })
            .collect();
        format!(
            "{} of {} cells done ({attacks} attacks x {} defences and none x {seeds} seeds; pending cells are left empty); mean ASR per defence over its finished cells: {}.",
            done.len(),
            self.cells.len(),
            defences.saturating_sub(1),
            if means.is_empty() { "none yet".to_string() } else { means.join(", ") }
        )
    }
}
