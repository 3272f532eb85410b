//! I-BAU (Zeng et al. 2022, "Adversarial Unlearning of Backdoors via Implicit Hypergradient"):
//! remove a backdoor by the minimax problem min_theta max_delta of the loss on clean data
//! carrying one universal perturbation delta. Each round finds the perturbation the model is
//! most sensitive to (a stand-in for the unknown trigger), then unlearns it; the unlearning step
//! follows the *implicit hypergradient*: the gradient of the outer loss through the inner
//! maximiser delta*(theta), solved by fixed-point iteration, so that the update accounts for
//! how the worst perturbation moves with the weights.
//!
//! candle differentiates a loss once, not its gradient; the second-order products the
//! hypergradient needs (the inner loss's Hessian in delta times a vector, and its mixed
//! derivative in theta) are taken as central finite differences of first derivatives along that
//! vector (documented on [`IBauConfig::difference_step`]).

use super::neuron_masks::clean_batches;
use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Inference, Network};
use crate::report::{Figure, Outcome};
use crate::rng::{permutation, stream_at};
use crate::train::{cross_entropy, Optimizer, OptimizerConfig, Progress, ProgressMode};
use candle_core::{Tensor, Var};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// I-BAU's settings. Defaults from the authors' code (`defense.py`, which BackdoorBench
/// follows): 5 rounds; in each, the universal perturbation starts at zero and takes one pass of
/// SGD at lr 10 over the clean data, maximising the cross-entropy against the model's own
/// predictions with an L2 penalty of 0.001; then one Adam step (lr 0.001) per batch of 100 on
/// the hypergradient, from 5 fixed-point iterations of the inner gradient-descent map (lr 0.1)
/// on the first batch, with the perturbation added to 1 % of each batch in the outer loss. The
/// model stays in eval mode throughout (batch-norm statistics frozen), as in the authors' code.
///
/// ```
/// use transferlab::defenses::IBauConfig;
/// let cfg = IBauConfig::default();
/// assert_eq!((cfg.rounds, cfg.fixed_point_iterations, cfg.batch_size, cfg.lr), (5, 5, 100, 0.001));
/// assert!(cfg.hypergradient);
/// ```
#[derive(Debug, Clone)]
pub struct IBauConfig {
    pub rounds: usize,
    /// K, the fixed-point iterations that solve for the hypergradient's vector.
    pub fixed_point_iterations: usize,
    pub batch_size: usize,
    /// Adam's learning rate for the weights (the outer minimisation).
    pub lr: f64,
    /// Step of the inner gradient-descent map whose fixed point is the worst perturbation.
    pub inner_lr: f64,
    /// SGD's learning rate for each round's perturbation search.
    pub perturbation_lr: f64,
    /// Weight of the perturbation's squared L2 norm in the inner loss.
    pub perturbation_penalty: f64,
    /// Project each round's perturbation onto the L2 ball of this radius: the paper's
    /// constraint ||delta|| <= C_delta, which the authors' code leaves commented out (radius 10
    /// on 32x32x3 images there). `None`, the default, follows the code.
    pub perturbation_radius: Option<f64>,
    /// Fraction of each outer batch that carries the perturbation (at least one image).
    pub perturbed_fraction: f64,
    /// Follow the implicit hypergradient; `false` drops its second-order term and steps on the
    /// outer loss's own gradient: the paper's point of comparison, and its ablation here.
    pub hypergradient: bool,
    /// Central-difference step (L2 norm, in pixel units) for the second-order products. A
    /// deviation: the authors differentiate through the gradient with autograd.
    pub difference_step: f64,
    /// Seeds the batches and which images carry the perturbation.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for IBauConfig {
    fn default() -> Self {
        Self {
            rounds: 5,
            fixed_point_iterations: 5,
            batch_size: 100,
            lr: 0.001,
            inner_lr: 0.1,
            perturbation_lr: 10.0,
            perturbation_penalty: 0.001,
            perturbation_radius: None,
            perturbed_fraction: 0.01,
            hypergradient: true,
            difference_step: 0.01,
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl IBauConfig {
    fn validate(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.lr) || !positive(self.inner_lr) || !positive(self.perturbation_lr) || !positive(self.difference_step) {
            return Err(Error::invalid(
                "I-BAU",
                format!(
                    "lr {}, inner lr {}, perturbation lr {} and difference step {} must be positive (the paper: 0.001, 0.1, 10; the step 0.01)",
                    self.lr, self.inner_lr, self.perturbation_lr, self.difference_step
                ),
            ));
        }
        if !(self.perturbation_penalty.is_finite() && self.perturbation_penalty >= 0.0) {
            return Err(Error::invalid("I-BAU", format!("perturbation penalty {} must be >= 0 (the paper: 0.001)", self.perturbation_penalty)));
        }
        if let Some(r) = self.perturbation_radius {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::invalid("I-BAU", format!("perturbation radius {r} must be positive (the paper's code: 10 on 32x32x3 images, when enabled)")));
            }
        }
        if !(self.perturbed_fraction > 0.0 && self.perturbed_fraction <= 1.0) {
            return Err(Error::invalid("I-BAU", format!("perturbed fraction {} is outside (0, 1] (the paper: 0.01)", self.perturbed_fraction)));
        }
        if self.rounds == 0 || self.batch_size == 0 {
            return Err(Error::invalid("I-BAU", "rounds and batch size must be at least 1 (the paper: 5 rounds, batches of 100)"));
        }
        if self.hypergradient && self.fixed_point_iterations == 0 {
            return Err(Error::invalid("I-BAU", "the hypergradient needs at least one fixed-point iteration (the paper: 5); or set hypergradient: false"));
        }
        Ok(())
    }
}

/// What I-BAU did.
#[derive(Debug, Clone)]
pub struct IBauResult {
    pub before: BackdoorMetrics,
    pub after: BackdoorMetrics,
    /// L2 norm of each round's universal perturbation (after the ball's projection, if any):
    /// the size of the stand-in trigger each round unlearnt.
    pub perturbation_norms: Vec<f64>,
}

impl Outcome for IBauResult {
    /// The defence table plus the last round's perturbation norm.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&("no defence".to_string(), self.before), &[("I-BAU".to_string(), self.after)])?;
        let last = self.perturbation_norms.last().copied().unwrap_or(0.0);
        df.with_column(Series::new("perturbation_norm".into(), vec![f64::NAN, last]).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        Ok(metrics_figure("I-BAU", &[("no defence".to_string(), self.before), ("I-BAU".to_string(), self.after)]))
    }

    fn summary(&self) -> String {
        let last = self.perturbation_norms.last().map_or(String::new(), |n| format!(" (last universal perturbation L2 norm {n:.2})"));
        format!(
            "I-BAU ran {} rounds of adversarial unlearning on the defender's clean data{last}: {} (DER {:.2}).",
            self.perturbation_norms.len(),
            before_after_sentence(&self.before, &self.after),
            defence_effectiveness_rate(&self.before, &self.after)
        )
    }
}

/// The inner loss without its penalty: minus the mean cross-entropy of `x + delta`.
fn inner_loss(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(cross_entropy(logits, y, 0.0)?.neg()?)
}

/// d/d delta of `inner_loss(f(x + delta), y)` (the penalty's gradient is added by the caller).
fn inner_gradient(eval: &Inference, x: &Tensor, y: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let d = Var::from_tensor(delta)?;
    let loss = inner_loss(&eval.forward(&x.broadcast_add(d.as_tensor())?)?, y)?;
    grad_of(&loss, &d)
}

fn grad_of(loss: &Tensor, var: &Var) -> Result<Tensor> {
    let grads = loss.backward()?;
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(var.as_tensor().zeros_like()?),
    }
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

/// One round's universal perturbation (1, C, H, W): a pass of SGD over the batches that
/// maximises the cross-entropy against the model's own predictions.
fn search_perturbation(eval: &Inference, batches: &[(Tensor, Tensor)], cfg: &IBauConfig) -> Result<Tensor> {
    let (x0, _) = &batches[0];
    let (_, c, h, w) = x0.dims4()?;
    let mut delta = Tensor::zeros((1, c, h, w), candle_core::DType::F32, x0.device())?;
    for (x, _) in batches {
        let predicted = eval.forward(x)?.argmax(1)?;
        let g = (inner_gradient(eval, x, &predicted, &delta)? + (&delta * (2.0 * cfg.perturbation_penalty))?)?;
        delta = (&delta - (g * cfg.perturbation_lr)?)?;
    }
    match cfg.perturbation_radius {
        Some(radius) => {
            let size = norm(&delta)?;
            Ok(if size > radius { (delta * (radius / size))? } else { delta })
        }
        None => Ok(delta),
    }
}

/// A (N, 1, 1, 1) indicator of the seeded `count` images of a batch of `n` that carry the
/// perturbation in the outer loss.
fn carriers(n: usize, count: usize, rng: &mut crate::rng::SeededRng, device: &candle_core::Device) -> Result<Tensor> {
    let mut carries = vec![0f32; n];
    for &i in permutation(rng, n).iter().take(count) {
        carries[i] = 1.0;
    }
    Ok(Tensor::from_vec(carries, (n, 1, 1, 1), device)?)
}

/// The vector v of the implicit hypergradient, by K iterations of
/// v <- (d Phi / d delta)^T v + d L_outer / d delta, with Phi(delta) = delta - inner_lr * grad
/// of the inner loss; the Hessian-vector product by central differences of the gradient.
fn fixed_point_vector(eval: &Inference, inner: &(Tensor, Tensor), delta: &Tensor, outer_grad: &Tensor, cfg: &IBauConfig) -> Result<Tensor> {
    let (x0, y0) = inner;
    let mut v = outer_grad.zeros_like()?;
    for _ in 0..cfg.fixed_point_iterations {
        let size = norm(&v)?;
        let hessian_v = if size == 0.0 {
            v.zeros_like()?
        } else {
            let step = (&v * (cfg.difference_step / size))?;
            let plus = inner_gradient(eval, x0, y0, &(delta + &step)?)?;
            let minus = inner_gradient(eval, x0, y0, &(delta - &step)?)?;
            (((plus - minus)? * (size / (2.0 * cfg.difference_step)))? + (&v * (2.0 * cfg.perturbation_penalty))?)?
        };
        v = ((&v - (hessian_v * cfg.inner_lr)?)? + outer_grad)?;
    }
    Ok(v)
}

/// Run I-BAU on a copy of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{i_bau, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let r = i_bau::run(&net, &data, &probe, &i_bau::IBauConfig { rounds: 1, ..Default::default() }).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 2);
/// assert!(i_bau::run(&net, &data, &probe, &i_bau::IBauConfig { perturbed_fraction: 0.0, ..Default::default() }).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &IBauConfig) -> Result<IBauResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let before = probe.measure(net)?;
    let mut model = net.duplicate()?;
    model.unfreeze_all();
    let vars = model.trainable_vars();
    // The authors batch the clean data once, in a fixed order, and solve the inner problem on
    // the first batch.
    let batches = clean_batches(clean, cfg.batch_size, Augment::none(), cfg.seed, "i_bau.batches", 0, net.device())?;
    let mut optimizer = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let progress = Progress::new("I-BAU", (cfg.rounds * batches.len()) as u64, cfg.progress);
    let mut perturbation_norms = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        // A detached view of the weights: the Adam steps below show through it.
        let eval = model.inference()?;
        let delta = search_perturbation(&eval, &batches, cfg)?;
        perturbation_norms.push(norm(&delta)?);
        let mut rng = stream_at(cfg.seed, "i_bau.perturbed", round as u64);
        for (x, y) in &batches {
            let n = x.dim(0)?;
            let count = ((n as f64 * cfg.perturbed_fraction).floor() as usize).max(1);
            let carried = carriers(n, count, &mut rng, x.device())?;
            let mut loss = cross_entropy(&model.forward(&x.broadcast_add(&carried.broadcast_mul(&delta)?)?, false)?, y, 0.0)?;
            if cfg.hypergradient {
                // d L_outer / d delta, through the images that carry it.
                let d = Var::from_tensor(&delta)?;
                let outer_grad = grad_of(&cross_entropy(&eval.forward(&x.broadcast_add(&carried.broadcast_mul(d.as_tensor())?)?)?, y, 0.0)?, &d)?;
                let v = fixed_point_vector(&eval, &batches[0], &delta, &outer_grad, cfg)?;
                let size = norm(&v)?;
                if size > 0.0 {
                    // (d Phi / d theta)^T v = -inner_lr * d/d theta of the inner loss's slope
                    // along v, by central differences along v's direction.
                    let step = (&v * (cfg.difference_step / size))?;
                    let (x0, y0) = &batches[0];
                    let plus = inner_loss(&model.forward(&x0.broadcast_add(&(&delta + &step)?)?, false)?, y0)?;
                    let minus = inner_loss(&model.forward(&x0.broadcast_add(&(&delta - &step)?)?, false)?, y0)?;
                    let mixed = ((plus - minus)? * (cfg.inner_lr * size / (2.0 * cfg.difference_step)))?;
                    loss = (loss - mixed)?;
                }
            }
            optimizer.step(&vars, &loss.backward()?, cfg.lr)?;
            progress.inc(1);
        }
    }
    progress.finish();
    Ok(IBauResult { before, after: probe.measure(&model)?, perturbation_norms })
}
