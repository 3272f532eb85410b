//! TrojanNN (Liu et al. 2018, "Trojaning Attack on Neural Networks"): the attacker holds a
//! trained model, not its training data. Instead of an arbitrary patch, the trigger's pixels are
//! optimised so that a few well-connected internal neurons fire strongly; retraining on inputs
//! stamped with that trigger then only has to tie those neurons to the target class, so the
//! backdoor goes in with little data and little retraining.

use super::metrics::{evaluate_backdoor, metrics_figure, metrics_table, percent, BackdoorMetrics};
use super::poison::{poison, PoisonConfig, TargetMode};
use super::trigger::{PatchFill, Placement, Trigger};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Inference, Network};
use crate::report::{Figure, Outcome};
use crate::rng::{normal, stream};
use rand::Rng;
use crate::train::{train, LrSchedule, Optimizer, OptimizerConfig, Progress, ProgressMode, TrainConfig};
use candle_core::{DType, IndexOp, Tensor, Var};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// TrojanNN's settings. Defaults from the paper and TrojanZoo's implementation (which
/// BackdoorBench's follows): a square trigger covering 7 % of the image (the paper's default
/// size) in the bottom-right corner; the 2 neurons of the penultimate layer with the largest
/// summed absolute weight into the classifier; the trigger's pixels, parametrised as
/// (tanh(a) + 1) / 2, optimised by Adam (lr 0.1, cosine to 0) for 1000 iterations to bring each
/// neuron's activation to 100 (squared error, on a black image carrying only the trigger);
/// then the model is retrained on data with 10 % stamped and relabelled to class 0, 10 epochs
/// of SGD at 0.01 (TrojanZoo's `--pretrained --epochs 10 --lr 0.01`).
///
/// The neurons are ranked among those the trigger region can reach (the paper picks neurons
/// connected to the trigger region; TrojanZoo ranks all of them, which on features that keep
/// their spatial layout picks neurons the trigger cannot move).
///
/// Deviation: the paper retrains on images it reverse-engineers from the model (the attacker
/// has no training data); like TrojanZoo and BackdoorBench, the retraining here uses the data
/// passed to [`run`], which may be any data the attacker has.
#[derive(Debug, Clone)]
pub struct TrojanNnConfig {
    /// Side of the square trigger as a fraction of the image's area (0.07: 7 %).
    pub area_fraction: f64,
    /// Where the trigger goes; a fixed place (the neurons are optimised for it).
    pub placement: Placement,
    /// Neurons of the penultimate layer the trigger is optimised to excite.
    pub neurons: usize,
    /// The activation each selected neuron is pushed to.
    pub target_value: f64,
    pub iterations: usize,
    /// Adam's rate for the trigger's pixels, cosine-annealed to 0 over the iterations.
    pub lr: f64,
    /// Fraction of the retraining data stamped and relabelled.
    pub poison_rate: f64,
    pub target: u32,
    /// The retraining of the given model on the poisoned data.
    pub retrain: TrainConfig,
    /// Also retrain with the trigger's random starting pixels (same place, same size, same
    /// poisons): the ablation that shows what the optimisation adds.
    pub baseline: bool,
    /// Seeds the trigger's random start and the choice of poisoned samples.
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for TrojanNnConfig {
    fn default() -> Self {
        Self {
            area_fraction: 0.07,
            placement: Placement::BottomRight,
            neurons: 2,
            target_value: 100.0,
            iterations: 1000,
            lr: 0.1,
            poison_rate: 0.1,
            target: 0,
            retrain: TrainConfig::sgd_cosine(10, 64, 0.01, 5e-4, Augment::none(), 0, ProgressMode::Hidden),
            baseline: false,
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl TrojanNnConfig {
    /// The trigger's side on an `h` x `w` image: the square closest to `area_fraction`.
    pub fn patch_size(&self, h: usize, w: usize) -> usize {
        ((self.area_fraction * (h * w) as f64).sqrt().round() as usize).clamp(1, h.min(w))
    }

    fn validate(&self) -> Result<()> {
        if !(self.area_fraction > 0.0 && self.area_fraction <= 1.0) {
            return Err(Error::invalid("TrojanNN", format!("area fraction {} is outside (0, 1] (the paper: 0.07)", self.area_fraction)));
        }
        if matches!(self.placement, Placement::Random | Placement::FourCorners) {
            return Err(Error::invalid("TrojanNN", "the trigger needs one fixed place (its pixels are optimised for it): use a corner or Placement::At"));
        }
        if self.neurons == 0 || self.iterations == 0 {
            return Err(Error::invalid("TrojanNN", "neurons and iterations must be at least 1 (the paper's code: 2 and 1000)"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) || !self.target_value.is_finite() {
            return Err(Error::invalid("TrojanNN", format!("lr {} must be positive and target value {} finite (defaults 0.1, 100)", self.lr, self.target_value)));
        }
        if !(self.poison_rate > 0.0 && self.poison_rate <= 1.0) {
            return Err(Error::invalid("TrojanNN", format!("poison rate {} is outside (0, 1] (default 0.1)", self.poison_rate)));
        }
        Ok(())
    }
}

/// What TrojanNN did: the neurons, the trigger, and the model before and after retraining.
#[derive(Debug, Clone)]
pub struct TrojanNnResult {
    /// Indices of the selected penultimate neurons.
    pub neurons: Vec<usize>,
    /// Summed activation of the selected neurons on a black image carrying the trigger's
    /// random start, and carrying the optimised trigger.
    pub activation_random: f64,
    pub activation_trigger: f64,
    /// The optimised trigger and its random start (the ablation's trigger).
    pub trigger: Trigger,
    pub random_trigger: Trigger,
    /// The given model with the optimised trigger (before retraining).
    pub before: BackdoorMetrics,
    /// The retrained model.
    pub after: BackdoorMetrics,
    /// The model retrained with the random-start trigger, when `baseline` was asked for.
    pub baseline: Option<BackdoorMetrics>,
    pub n_poisoned: usize,
}

impl TrojanNnResult {
    fn rows(&self) -> Vec<(String, BackdoorMetrics, f64)> {
        let mut rows = vec![
            ("given model".to_string(), self.before, self.activation_trigger),
            ("TrojanNN (optimised trigger)".to_string(), self.after, self.activation_trigger),
        ];
        if let Some(b) = self.baseline {
            rows.push(("random trigger (ablation)".to_string(), b, self.activation_random));
        }
        rows
    }
}

impl Outcome for TrojanNnResult {
    /// One row per model (the given one, retrained with the optimised trigger, and with the
    /// random one when asked): CA/ASR/RA plus `neuron_activation`, the selected neurons'
    /// summed activation on the row's trigger alone.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let rows = self.rows();
        let mut df = metrics_table(&rows.iter().map(|(n, m, _)| (n.clone(), *m)).collect::<Vec<_>>())?;
        df.with_column(Series::new("neuron_activation".into(), rows.iter().map(|r| r.2).collect::<Vec<f64>>()).into())?;
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        let rows: Vec<_> = self.rows().into_iter().map(|(n, m, _)| (n, m)).collect();
        Ok(metrics_figure(
            &format!("TrojanNN: neurons {:?} at {:.1} (random start {:.1})", self.neurons, self.activation_trigger, self.activation_random),
            &rows,
        ))
    }

    fn summary(&self) -> String {
        let baseline = self.baseline.map_or(String::new(), |b| format!(" against {} for a random trigger at the same place", percent(b.attack_success_rate)));
        format!(
            "TrojanNN: the optimised trigger drives its {} chosen neurons to {:.2} (a random trigger: {:.2}); retraining on {} stamped images gives ASR {}{baseline}, at CA {} (before retraining {}).",
            self.neurons.len(),
            self.activation_trigger,
            self.activation_random,
            self.n_poisoned,
            percent(self.after.attack_success_rate),
            percent(self.after.clean_accuracy),
            percent(self.before.clean_accuracy)
        )
    }
}

/// Optimise a trigger on `net`, retrain a copy of `net` on `data` with it, and measure both on
/// `test`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::attacks::trojannn::{self, TrojanNnConfig};
/// let data = digits().unwrap().select(&(0..100).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("convnet", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let mut cfg = TrojanNnConfig { iterations: 20, ..TrojanNnConfig::default() };
/// cfg.retrain.epochs = 1;
/// let r = trojannn::run(&net, &data, &data, &cfg).unwrap();
/// assert!(r.activation_trigger > r.activation_random);
/// assert_eq!(r.to_dataframe().unwrap().height(), 2);
/// assert!(trojannn::run(&net, &data, &data, &TrojanNnConfig { neurons: 0, ..cfg }).is_err());
/// ```
pub fn run(net: &Network, data: &Dataset, test: &Dataset, cfg: &TrojanNnConfig) -> Result<TrojanNnResult> {
    cfg.validate()?;
    for (what, ds) in [("retraining data", data), ("test data", test)] {
        if ds.shape != net.spec().input {
            return Err(Error::invalid("TrojanNN", format!("the {what} has images of shape {:?}; the model takes {:?}", ds.shape, net.spec().input)));
        }
    }
    let target = TargetMode::AllToOne { target: cfg.target };
    target.validate(test.num_classes())?;
    let (c, h, w) = net.spec().input;
    let size = cfg.patch_size(h, w);
    let region = Trigger::Patch { size, fill: PatchFill::Solid(1.0), placement: cfg.placement };
    region.validate(net.spec().input)?;
    let mut mask = vec![0f32; c * h * w];
    region.apply(&mut mask, net.spec().input, None)?;
    let device = net.device();
    let mask_t = Tensor::from_vec(mask.clone(), (1, c, h, w), device)?;
    // Detached weights: the optimisation's gradients flow to the trigger's pixels only.
    let frozen = net.inference()?;
    let reachable = reachable_neurons(&frozen, net.spec().input, &mask_t, cfg.seed)?;
    let neurons = well_connected_neurons(net, cfg.neurons, &reachable)?;
    let index = Tensor::from_vec(neurons.iter().map(|&i| i as u32).collect::<Vec<_>>(), neurons.len(), device)?;

    let mut rng = stream(cfg.seed, "trojannn.start");
    let start: Vec<f32> = (0..c * h * w).map(|_| normal(&mut rng)).collect();
    let a = Var::from_vec(start, (1, c, h, w), device)?;
    // The trigger on a black image: the paper's and TrojanZoo's input for the optimisation.
    let stamped = |a: &Tensor| -> Result<Tensor> { Ok(((a.tanh()? + 1.0)? * 0.5)?.broadcast_mul(&mask_t)?) };
    let activation = |x: &Tensor| -> Result<Tensor> { Ok(frozen.features(x)?.index_select(&index, 1)?.abs()?) };
    let random_pixels = stamped(a.as_tensor())?;
    let activation_random = activation(&random_pixels.detach())?.sum_all()?.to_scalar::<f32>()? as f64;

    let mut optimizer = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })?;
    let schedule = LrSchedule::Cosine { lr: cfg.lr, min_lr: 0.0, epochs: cfg.iterations as f64 };
    let vars = [("trigger".to_string(), a.clone())];
    let progress = Progress::new("TrojanNN trigger", cfg.iterations as u64, cfg.progress);
    for i in 0..cfg.iterations {
        let gap = (activation(&stamped(a.as_tensor())?)? - cfg.target_value)?;
        let loss = gap.sqr()?.sum_all()?;
        optimizer.step(&vars, &loss.backward()?, schedule.lr_at(i as f64))?;
        progress.inc(1);
    }
    progress.finish();
    let trigger_pixels = stamped(a.as_tensor())?.detach();
    let activation_trigger = activation(&trigger_pixels)?.sum_all()?.to_scalar::<f32>()? as f64;

    let as_patch = |pixels: &Tensor| -> Result<Trigger> {
        let all: Vec<f32> = pixels.i(0)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let inside: Vec<f32> = all.iter().zip(&mask).filter(|(_, &m)| m == 1.0).map(|(&v, _)| v).collect();
        Ok(Trigger::Patch { size, fill: PatchFill::Image { channels: c, pixels: inside }, placement: cfg.placement })
    };
    let trigger = as_patch(&trigger_pixels)?;
    let random_trigger = as_patch(&random_pixels)?;

    let before = evaluate_backdoor(net, test, &trigger, &target, cfg.seed)?;
    let retrain_with = |trigger: &Trigger| -> Result<(BackdoorMetrics, usize)> {
        let poisoned = poison(data, &PoisonConfig { trigger: trigger.clone(), rate: cfg.poison_rate, target, clean_label: false, seed: cfg.seed })?;
        let n_poisoned = poisoned.poisoned_flags().iter().filter(|&&f| f).count();
        let mut victim = net.duplicate()?;
        train(&mut victim, &poisoned, None, &TrainConfig { progress: cfg.progress, ..cfg.retrain.clone() })?;
        Ok((evaluate_backdoor(&victim, test, trigger, &target, cfg.seed)?, n_poisoned))
    };
    let (after, n_poisoned) = retrain_with(&trigger)?;
    let baseline = if cfg.baseline { Some(retrain_with(&random_trigger)?.0) } else { None };
    Ok(TrojanNnResult { neurons, activation_random, activation_trigger, trigger, random_trigger, before, after, baseline, n_poisoned })
}

/// Which penultimate neurons the trigger region can move: those whose activation differs
/// between black images carrying different random patterns in the region. Where the features
/// keep their spatial layout (the ConvNet's flattened maps), most neurons lie outside the
/// region's reach and no optimisation of its pixels could excite them.
fn reachable_neurons(frozen: &Inference, (c, h, w): (usize, usize, usize), mask: &Tensor, seed: u64) -> Result<Vec<bool>> {
    let mut rng = stream(seed, "trojannn.reach");
    let mut pixels = vec![0f32; c * h * w];
    for _ in 0..4 {
        pixels.extend((0..c * h * w).map(|_| rng.random::<f32>()));
    }
    let probes = Tensor::from_vec(pixels, (5, c, h, w), mask.device())?.broadcast_mul(mask)?;
    let features: Vec<Vec<f32>> = frozen.features(&probes)?.to_dtype(DType::F32)?.to_vec2()?;
    Ok((0..features[0].len())
        .map(|d| {
            let (lo, hi) = features.iter().fold((f32::MAX, f32::MIN), |(lo, hi), f| (lo.min(f[d]), hi.max(f[d])));
            hi - lo > 1e-6
        })
        .collect())
}

/// The `k` neurons, among the `reachable` ones, with the largest summed absolute weight into
/// the classifier (TrojanZoo's `get_neuron_idx`, restricted as the paper restricts it to
/// neurons connected to the trigger region).
fn well_connected_neurons(net: &Network, k: usize, reachable: &[bool]) -> Result<Vec<usize>> {
    let name = format!("{}.weight", net.spec().head_name());
    let tensors = net.named_tensors()?;
    let weight = tensors.get(&name).ok_or_else(|| Error::invalid("model", format!("it has no classifier weight `{name}`")))?;
    let strength: Vec<f32> = weight.abs()?.sum(0)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut order: Vec<usize> = (0..strength.len()).filter(|&i| reachable.get(i).copied().unwrap_or(false)).collect();
    if k > order.len() {
        return Err(Error::invalid(
            "TrojanNN",
            format!("{k} neurons asked for, but only {} of the {} penultimate neurons respond to the trigger region: ask for fewer, or a larger area or another place", order.len(), strength.len()),
        ));
    }
    order.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]).then(a.cmp(&b)));
    order.truncate(k);
    Ok(order)
}
