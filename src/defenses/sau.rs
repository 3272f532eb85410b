//! SAU (Wei et al. 2023, "Shared Adversarial Unlearning: Backdoor Mitigation by Unlearning
//! Shared Adversarial Examples"): the backdoor risk of the model being purified is bounded by
//! its risk on *shared* adversarial examples, perturbations that send both it and the fixed
//! backdoored model to the same wrong class (a trigger is one). Each step searches, per clean
//! image, an L-inf perturbation that both models misclassify alike, then trains the purified
//! model on the clean images while pushing its probability of the backdoored model's wrong
//! class on the perturbed ones down.

use super::neuron_masks::clean_batches;
use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Inference, Network};
use crate::report::{Figure, Outcome};
use crate::train::{cross_entropy, per_sample_cross_entropy, Optimizer, OptimizerConfig, Progress, ProgressMode};
use candle_core::{Device, Tensor, Var, D};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// SAU's settings. Defaults from the authors' code (`config/defense/sau/cifar10.yaml` and
/// `defense/sau.py`, as merged into BackdoorBench): 100 rounds over the defender's data in
/// batches of 256, Adam at lr 1e-4 without weight decay (the code builds a cosine schedule but
/// never steps it, so the rate stays constant); per batch, 5 steps of signed-gradient PGD at
/// step 0.2 in an L-inf ball of 0.2, starting at +0.2 everywhere (the code's `max` start), on
/// 0.01 x the adversarial loss + 1 x the Jensen-Shannon divergence of the two models; then one
/// step on 1 x the clean loss + 0 x adversarial training + 1 x the shared-adversarial loss.
/// Both models stay in eval mode (batch-norm statistics frozen), as in the code's default.
/// The perturbed images are not clipped to [0, 1], as in the code.
///
/// ```
/// use transferlab::defenses::SauConfig;
/// let cfg = SauConfig::default();
/// assert_eq!((cfg.rounds, cfg.batch_size, cfg.pgd_steps), (100, 256, 5));
/// assert_eq!((cfg.lr, cfg.perturbation_bound, cfg.shared_weight), (1e-4, 0.2, 1.0));
/// ```
#[derive(Debug, Clone)]
pub struct SauConfig {
    pub rounds: usize,
    pub batch_size: usize,
    /// Adam's learning rate for the purified model.
    pub lr: f64,
    /// L-inf radius of the shared adversarial perturbations, in pixel units ([0, 1] images).
    pub perturbation_bound: f64,
    pub pgd_steps: usize,
    /// Step of the signed-gradient PGD.
    pub pgd_lr: f64,
    /// beta_1: weight of the adversarial loss (both models away from the true label) in PGD.
    pub adversarial_weight: f64,
    /// beta_2: weight of the two models' Jensen-Shannon divergence (pulling them to one wrong
    /// class) in PGD.
    pub divergence_weight: f64,
    /// lambda_1: weight of the clean cross-entropy in the unlearning step.
    pub clean_weight: f64,
    /// lambda_2: weight of plain adversarial training (cross-entropy on the perturbed images).
    pub adversarial_training_weight: f64,
    /// lambda_3: weight of the shared-adversarial loss. 0 drops the shared examples and leaves
    /// fine-tuning on the clean loss at the same rate and steps: the ablation.
    pub shared_weight: f64,
    /// Seeds the batches' order.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for SauConfig {
    fn default() -> Self {
        Self {
            rounds: 100,
            batch_size: 256,
            lr: 1e-4,
            perturbation_bound: 0.2,
            pgd_steps: 5,
            pgd_lr: 0.2,
            adversarial_weight: 0.01,
            divergence_weight: 1.0,
            clean_weight: 1.0,
            adversarial_training_weight: 0.0,
            shared_weight: 1.0,
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl SauConfig {
    fn validate(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.lr) || !positive(self.perturbation_bound) || !positive(self.pgd_lr) {
            return Err(Error::invalid(
                "SAU",
                format!(
                    "lr {}, perturbation bound {} and PGD step {} must be positive (the paper: 1e-4, 0.2, 0.2)",
                    self.lr, self.perturbation_bound, self.pgd_lr
                ),
            ));
        }
        let weights = [
            ("adversarial", self.adversarial_weight),
            ("divergence", self.divergence_weight),
            ("clean", self.clean_weight),
            ("adversarial training", self.adversarial_training_weight),
            ("shared", self.shared_weight),
        ];
        if let Some((name, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::invalid("SAU", format!("the {name} weight {w} must be >= 0 (the paper: 0.01, 1, 1, 0, 1)")));
        }
        if self.rounds == 0 || self.batch_size == 0 {
            return Err(Error::invalid("SAU", "rounds and batch size must be at least 1 (the paper: 100 rounds, batches of 256)"));
        }
        if self.pgd_steps == 0 && self.needs_perturbation() {
            return Err(Error::invalid("SAU", "the shared adversarial examples need at least one PGD step (the paper: 5); or set shared_weight and adversarial_training_weight to 0"));
        }
        Ok(())
    }

    fn needs_perturbation(&self) -> bool {
        self.shared_weight > 0.0 || self.adversarial_training_weight > 0.0
    }
}

/// What SAU did.
#[derive(Debug, Clone)]
pub struct SauResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    /// Per round, the fraction of the defender's images whose perturbation both models sent to
    /// the same wrong class at the unlearning step: the shared adversarial examples left to
    /// unlearn (empty when no perturbation is searched).
    pub shared_fraction: Vec<f64>,
}

impl Outcome for SauResult {
    /// The defence table plus the last round's fraction of shared adversarial examples.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&("no defence".to_string(), self.before), &[("SAU".to_string(), self.after)])?;
        let last = self.shared_fraction.last().copied().unwrap_or(f64::NAN);
        df.with_column(Series::new("shared_fraction".into(), vec![f64::NAN, last]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure("SAU", &[("no defence".to_string(), self.before), ("SAU".to_string(), self.after)]))
    }

    fn summary(&self) -> String {
        let setting = match self.shared_fraction.last() {
            Some(&f) => format!(
                "SAU unlearned shared adversarial examples for {} rounds ({:.1} % of the defender's images still shared in the last)",
                self.shared_fraction.len(),
                100.0 * f
            ),
            None => "SAU without a perturbation search (fine-tuning on the clean loss alone, the ablation)".to_string(),
        };
        format!(
            "{setting}: {} (DER {:.2}).",
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

fn indicator(flags: impl Iterator<Item = bool>, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = flags.map(|f| if f { 1.0 } else { 0.0 }).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, device)?)
}

fn one_hot(labels: &[u32], classes: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), classes), device)?)
}

/// The shared adversarial perturbations (N, C, H, W) of one batch: PGD on
/// beta_1 * (minus the cross-entropy of the images neither model is fooled on yet) + beta_2 *
/// (the models' Jensen-Shannon divergence on the images not yet shared), in the L-inf ball.
fn shared_perturbation(purified: &Inference, reference: &Inference, x: &Tensor, y: &Tensor, cfg: &SauConfig) -> Result<Tensor> {
    let n = x.dim(0)? as f64;
    let device = x.device();
    let (original, original_ref) = (predictions(&purified.forward(x)?)?, predictions(&reference.forward(x)?)?);
    let bound = cfg.perturbation_bound;
    let mut delta = x.ones_like()?.affine(bound, 0.0)?;
    for _ in 0..cfg.pgd_steps {
        let d = Var::from_tensor(&delta)?;
        let perturbed = x.broadcast_add(d.as_tensor())?;
        let (logits, logits_ref) = (purified.forward(&perturbed)?, reference.forward(&perturbed)?);
        let (label, label_ref) = (predictions(&logits)?, predictions(&logits_ref)?);
        let fooled: Vec<bool> = label.iter().zip(&original).map(|(a, b)| a != b).collect();
        let fooled_ref: Vec<bool> = label_ref.iter().zip(&original_ref).map(|(a, b)| a != b).collect();
        let shared: Vec<bool> = (0..label.len()).map(|i| fooled[i] && fooled_ref[i] && label[i] == label_ref[i]).collect();
        let unfooled = indicator(fooled.iter().map(|f| !f), device)?;
        let unfooled_ref = indicator(fooled_ref.iter().map(|f| !f), device)?;
        let adversarial = ((per_sample_cross_entropy(&logits, y)?.mul(&unfooled)?.sum_all()?
            + per_sample_cross_entropy(&logits_ref, y)?.mul(&unfooled_ref)?.sum_all()?)?
            * (-0.5 / n))?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?.clamp(1e-8, 1.0)?;
        let q = candle_nn::ops::softmax(&logits_ref, D::Minus1)?.clamp(1e-8, 1.0)?;
        let log_mix = ((&p + &q)? * 0.5)?.log()?;
        let js = ((p.mul(&(p.log()? - &log_mix)?)? + q.mul(&(q.log()? - &log_mix)?)?)? * 0.5)?.sum(D::Minus1)?;
        let divergence = (js.mul(&indicator(shared.iter().map(|s| !s), device)?)?.sum_all()? / n)?;
        let loss = ((adversarial * cfg.adversarial_weight)? + (divergence * cfg.divergence_weight)?)?;
        let grad = match loss.backward()?.get(d.as_tensor()) {
            Some(g) => g.clone(),
            None => delta.zeros_like()?,
        };
        delta = (&delta - (grad.sign()? * cfg.pgd_lr)?)?.clamp(-bound, bound)?;
        // The authors stop once every image was shared before this step.
        if shared.iter().all(|&s| s) {
            break;
        }
    }
    Ok(delta)
}

/// Run SAU on a copy of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{sau, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let r = sau::run(&net, &data, &probe, &sau::SauConfig { rounds: 2, ..Default::default() }).unwrap();
/// assert_eq!((r.to_dataframe().unwrap().height(), r.shared_fraction.len()), (2, 2));
/// assert!(sau::run(&net, &data, &probe, &sau::SauConfig { perturbation_bound: 0.0, ..Default::default() }).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &SauConfig) -> Result<SauResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let before = probe.measure(net)?;
    let reference = net.inference()?;
    let mut model = net.duplicate()?;
    model.unfreeze_all();
    let vars = model.trainable_vars();
    let classes = model.spec().num_classes;
    let mut optimizer = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let batches_per_round = clean.len().div_ceil(cfg.batch_size);
    let progress = Progress::new("SAU", (cfg.rounds * batches_per_round) as u64, cfg.progress);
    let mut shared_fraction = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        // A detached view of the weights being purified: the Adam steps below show through it.
        let purified = model.inference()?;
        let mut shared_count = 0usize;
        for (x, y) in clean_batches(clean, cfg.batch_size, Augment::none(), cfg.seed, "sau.batches", round as u64, net.device())? {
            let n = x.dim(0)?;
            let labels = y.to_vec1::<u32>()?;
            let mut loss = (cross_entropy(&model.forward(&x, false)?, &y, 0.0)? * cfg.clean_weight)?;
            if cfg.needs_perturbation() {
                let delta = shared_perturbation(&purified, &reference, &x, &y, cfg)?;
                let perturbed = (&x + &delta)?;
                let logits = model.forward(&perturbed, false)?;
                let (clean_ref, perturbed_ref) = (predictions(&reference.forward(&x)?)?, predictions(&reference.forward(&perturbed)?)?);
                let label = predictions(&logits)?;
                // Where the backdoored model is fooled away from both the truth and its own
                // clean prediction, the purified model must not follow it.
                let potential: Vec<bool> = (0..n).map(|i| perturbed_ref[i] != labels[i] && perturbed_ref[i] != clean_ref[i]).collect();
                shared_count += (0..n).filter(|&i| potential[i] && label[i] == perturbed_ref[i]).count();
                if cfg.adversarial_training_weight > 0.0 {
                    loss = (loss + (cross_entropy(&logits, &y, 0.0)? * cfg.adversarial_training_weight)?)?;
                }
                if cfg.shared_weight > 0.0 && potential.iter().any(|&p| p) {
                    let wrong = one_hot(&perturbed_ref, classes, x.device())?;
                    let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
                    let on_wrong = p.mul(&wrong)?.sum(D::Minus1)?;
                    let elsewhere = p.mul(&wrong.affine(-1.0, 1.0)?)?.sum(D::Minus1)?;
                    // Two forms of -log(1 - p_wrong), equal in exact arithmetic, averaged as the
                    // authors do for numerical stability.
                    let a = elsewhere.clamp(0.0, 0.999)?.affine(1.0, 1e-6)?.log()?;
                    let b = on_wrong.clamp(0.001, 1.0)?.affine(-1.0, 1.0 + 1e-6)?.log()?;
                    let mask = indicator(potential.iter().copied(), x.device())?;
                    let shared = ((a + b)?.mul(&mask)?.sum_all()? * (-0.5 / n as f64))?;
                    loss = (loss + (shared * cfg.shared_weight)?)?;
                }
            }
            optimizer.step(&vars, &loss.backward()?, cfg.lr)?;
            progress.inc(1);
        }
        if cfg.needs_perturbation() {
            shared_fraction.push(shared_count as f64 / clean.len() as f64);
        }
    }
    progress.finish();
    Ok(SauResult { before, after: probe.measure(&model)?, shared_fraction })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_rows_pick_the_label_and_per_sample_cross_entropy_agrees_with_the_mean_loss() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.0, 0.0, 3.0]], &device).unwrap();
        let labels = [0u32, 1];
        assert_eq!(one_hot(&labels, 3, &device).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
        let per = per_sample_cross_entropy(&logits, &Tensor::new(&labels, &device).unwrap()).unwrap();
        let mean = cross_entropy(&logits, &Tensor::new(&labels, &device).unwrap(), 0.0).unwrap().to_scalar::<f32>().unwrap();
        let per = per.to_vec1::<f32>().unwrap();
        assert!(((per[0] + per[1]) / 2.0 - mean).abs() < 1e-5, "{per:?} vs {mean}");
        assert!(per[1] > per[0]);
    }
}
