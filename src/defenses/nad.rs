//! Neural Attention Distillation (Li et al. 2021, "Neural Attention Distillation: Erasing
//! Backdoor Triggers from Deep Neural Networks"): fine-tune a copy of the backdoored model on
//! the defender's clean data (the teacher), then fine-tune the backdoored model again (the
//! student) with the teacher's attention maps as a target at the last stages. Fine-tuning alone
//! leaves the trigger's neurons in place; matching the attention of a teacher that has started
//! to forget them erases them.

use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Figure, Outcome};
use crate::train::{cross_entropy, train, train_with, Objective, ProgressMode, Step, TrainConfig};
use candle_core::{Tensor, D};
use polars::prelude::DataFrame;

/// NAD's settings. Defaults: the paper's attention loss (p = 2; betas 500, 1000, 1000 on the
/// last three stages), teacher fine-tuned for 10 epochs and the student trained for 20 (the
/// paper's), both with BackdoorBench's optimiser (SGD, momentum 0.9, weight decay 1e-4, lr 0.01
/// cosine-annealed) and batch 64 (the paper's).
///
/// ```
/// use transferlab::defenses::NadConfig;
/// let cfg = NadConfig::default();
/// assert_eq!((cfg.teacher_epochs, cfg.epochs, cfg.betas.clone()), (10, 20, vec![500.0, 1000.0, 1000.0]));
/// ```
#[derive(Debug, Clone)]
pub struct NadConfig {
    /// Weights of the attention loss at the last `betas.len()` stages, first to last. A model
    /// with fewer stages uses the last of them; all zero is plain fine-tuning of the student
    /// (the defence's ablation).
    pub betas: Vec<f64>,
    /// The attention map is sum over channels of |activation|^p.
    pub p: f64,
    pub teacher_epochs: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub augment: Augment,
    /// Seeds the batches and the augmentation of both phases.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for NadConfig {
    fn default() -> Self {
        Self {
            betas: vec![500.0, 1000.0, 1000.0],
            p: 2.0,
            teacher_epochs: 10,
            epochs: 20,
            batch_size: 64,
            lr: 0.01,
            weight_decay: 1e-4,
            augment: Augment::none(),
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl NadConfig {
    fn validate(&self) -> Result<()> {
        if self.betas.is_empty() || self.betas.iter().any(|b| !(b.is_finite() && *b >= 0.0)) {
            return Err(Error::invalid("NAD betas", format!("{:?}; give one non-negative weight per stage (the paper: 500, 1000, 1000)", self.betas)));
        }
        if !(self.p.is_finite() && self.p > 0.0) || !(self.lr.is_finite() && self.lr > 0.0) || !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid("NAD", format!("p {} and lr {} must be positive, weight decay {} >= 0 (the paper: 2, 0.01, 1e-4)", self.p, self.lr, self.weight_decay)));
        }
        if self.teacher_epochs == 0 || self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::invalid("NAD", "teacher epochs, epochs and batch size must be at least 1 (the paper: 10, 20, 64)"));
        }
        Ok(())
    }

    fn train_config(&self, epochs: usize) -> TrainConfig {
        TrainConfig::sgd_cosine(epochs, self.batch_size, self.lr, self.weight_decay, self.augment, self.seed, self.progress)
    }
}

/// What NAD did: the backdoored model, the fine-tuned teacher and the distilled student.
#[derive(Debug, Clone)]
pub struct NadResult {
    pub before: BackdoorMetrics,
    pub teacher: BackdoorMetrics,
    pub after: BackdoorMetrics,
}

impl NadResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics)> {
        vec![("NAD teacher (fine-tuned)".to_string(), self.teacher), ("NAD".to_string(), self.after)]
    }
}

impl Outcome for NadResult {
    /// The defence table: no defence, the teacher, the student.
    fn to_dataframe(&self) -> Result<DataFrame> {
        defence_table(&("no defence".to_string(), self.before), &self.rows())
    }

    fn figure(&self) -> Result<Figure> {
        let mut rows = vec![("no defence".to_string(), self.before)];
        rows.extend(self.rows());
        Ok(metrics_figure("Neural Attention Distillation", &rows))
    }

    fn summary(&self) -> String {
        format!(
            "NAD distilled a fine-tuned teacher's attention into the backdoored model: {} (DER {:.2}); the teacher alone (plain fine-tuning) reached ASR {:.1} %, CA {:.1} %.",
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after),
            100.0 * self.teacher.attack_success_rate,
            100.0 * self.teacher.clean_accuracy
        )
    }
}

/// An attention map as NAD (after Zagoruyko & Komodakis 2017) computes it: the sum over
/// channels of |a|^p, L2-normalised over the positions of each sample; (N, H*W).
fn attention_map(stage: &Tensor, p: f64) -> Result<Tensor> {
    let am = stage.abs()?.powf(p)?.sum(1)?.flatten_from(1)?;
    let norm = (am.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-6)?;
    Ok(am.broadcast_div(&norm)?)
}

/// Cross-entropy plus, at each of the last stages, beta times the mean squared difference of
/// the student's and the teacher's attention maps.
struct AttentionDistillation {
    teacher: Network,
    betas: Vec<f64>,
    p: f64,
}

impl Objective for AttentionDistillation {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let (logits, student) = s.net.forward_with_stages(s.x, true)?;
        let (_, teacher) = self.teacher.forward_with_stages(s.x, false)?;
        let mut loss = cross_entropy(&logits, s.y, 0.0)?;
        let used = self.betas.len().min(student.len());
        let betas = &self.betas[self.betas.len() - used..];
        let stages = student.len() - used..student.len();
        for (beta, k) in betas.iter().zip(stages) {
            if *beta == 0.0 {
                continue;
            }
            let diff = (attention_map(&student[k], self.p)? - attention_map(&teacher[k].detach(), self.p)?)?;
            loss = (loss + (diff.sqr()?.mean_all()? * *beta)?)?;
        }
        Ok((loss, logits))
    }
}

/// Run NAD on copies of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{nad, BackdoorProbe};
/// use transferlab::models::{Arch, Norm};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let spec = ModelSpec::new(Arch::ConvNet { width: 8, depth: 2, norm: Norm::Instance }, data.shape, 10).unwrap();
/// let net = Network::new(&spec, 0, &Device::Cpu).unwrap();
/// let r = nad::run(&net, &data, &probe, &nad::NadConfig { teacher_epochs: 1, epochs: 1, ..Default::default() }).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 3);
/// // An MLP has no stages to distil.
/// let mlp = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// assert!(nad::run(&mlp, &data, &probe, &Default::default()).unwrap_err().to_string().contains("stages"));
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &NadConfig) -> Result<NadResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    // Refuse a model without stages before any training.
    let (image, _) = clean.batch(&[0], net.device())?;
    net.forward_with_stages(&image, false)?;
    let before = probe.measure(net)?;
    let mut teacher = net.duplicate()?;
    teacher.unfreeze_all();
    train(&mut teacher, clean, None, &cfg.train_config(cfg.teacher_epochs))?;
    let teacher_metrics = probe.measure(&teacher)?;
    let mut student = net.duplicate()?;
    student.unfreeze_all();
    let mut objective = AttentionDistillation { teacher, betas: cfg.betas.clone(), p: cfg.p };
    train_with(&mut student, clean, None, &cfg.train_config(cfg.epochs), &mut objective)?;
    Ok(NadResult { before, teacher: teacher_metrics, after: probe.measure(&student)? })
}
