//! NeuBA: a neuron-level backdoor planted during pre-training that survives fine-tuning on a
//! task the attacker never saw (Zhang et al. 2021/2023, "Red alarm for pre-trained models:
//! universal vulnerability to neuron-level backdoor attacks").
//!
//! The attacker adds one term to pre-training: for each of several triggers, the penultimate
//! features of a triggered input are pulled (MSE) to a fixed, predefined vector. Whoever
//! fine-tunes the model later trains a new head on clean data; the head maps each predefined
//! vector to *some* class, and because a triggered input still lands on its vector, every
//! triggered input goes to that class. The attacker does not choose the class, but with
//! several triggers spread over different vectors, some trigger hits every class of interest.

use super::metrics::{evaluate_backdoor, metrics_table, percent, BackdoorMetrics};
use super::poison::TargetMode;
use super::trigger::{PatchFill, Placement, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, LoadMode, ModelSpec, Network};
use crate::report::{BarChart, Chart, Figure, Outcome};
use crate::train::{cross_entropy, features, train, train_with, Objective, Step, TrainConfig};
use crate::train::{accuracy, LrSchedule, OptimizerConfig};

use candle_core::{Device, Tensor, D};
use polars::prelude::{Column, DataFrame, NamedFrom, Series};
use rand::Rng;

/// NeuBA's configuration. The defaults follow the paper's code (thunlp/NeuBA, `cv/`):
/// six two-tone checkerboard triggers in the bottom-right corner, target vectors that set two
/// quarters of the feature vector to `low` and the rest to `high` = 3, the trigger loss
/// (MSE) added with weight 1 to the clean cross-entropy, Adam at 3e-3 without weight decay
/// for pre-training, and downstream fine-tuning of every layer on clean data only (here Adam
/// at 1e-3 for 10 epochs, batch 64; the paper uses batch 512 on far larger data).
///
/// Deviations, for a CPU-sized miniature: the pre-trained model is an MLP pre-trained on
/// digits 0-4 (the paper: ResNet/DenseNet on ImageNet) and the downstream task is digits
/// 5-9 (the paper: CIFAR-10, MNIST, GTSRB...); the triggers are 3x3 checkerboards of two of
/// four grey levels (the paper: 4x4 checkerboards of two of four colours) because the images
/// are 8x8 and grey. The paper's code uses `low` = -3, but its features (like ours) come out
/// of a ReLU, where -3 is unreachable and acts as 0; we use 0 so that the target vectors are
/// features the model can produce, and the class the head assigns to a vector is the class
/// triggered inputs actually receive.
#[derive(Debug, Clone)]
pub struct NeubaConfig {
    /// The architecture pre-trained and fine-tuned (default: the MLP, 2 x 256 hidden units).
    pub arch: Arch,
    /// Classes of the attacker's pre-training task.
    pub upstream_classes: Vec<u32>,
    /// Classes of the victim's downstream task (relabelled 0..n).
    pub downstream_classes: Vec<u32>,
    /// Fraction of the downstream data held out for testing.
    pub test_fraction: f64,
    /// The triggers, one target vector each (at most 10).
    pub triggers: Vec<Trigger>,
    /// Value of the two "low" quarters of each target vector.
    pub low: f32,
    /// Value of the other quarters.
    pub high: f32,
    /// Weight of the trigger loss against the clean cross-entropy.
    pub backdoor_weight: f64,
    /// Pre-training (both the clean and the NeuBA model use it, with the same seed).
    pub pretrain: TrainConfig,
    /// Downstream fine-tuning of all layers with a fresh head.
    pub finetune: TrainConfig,
    /// Also fine-tune after re-initialising the last layer of the body (a removal attempt).
    pub reinit_last_layer: bool,
    /// Fractions of penultimate neurons to prune after fine-tuning (the least active on clean
    /// downstream data first, as in fine-pruning), each a removal attempt.
    pub prune_fractions: Vec<f64>,
    pub seed: u64,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for NeubaConfig {
    fn default() -> Self {
        // The paper's code pre-trains with Adam at 3e-3 and no weight decay.
        let adam = TrainConfig {
            epochs: 20,
            batch_size: 64,
            optimizer: OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            schedule: LrSchedule::Constant { lr: 3e-3 },
            ..TrainConfig::default()
        };
        Self {
            device: Device::Cpu,
            arch: Arch::Mlp { hidden: vec![256, 256] },
            upstream_classes: vec![0, 1, 2, 3, 4],
            downstream_classes: vec![5, 6, 7, 8, 9],
            test_fraction: 0.3,
            triggers: neuba_triggers(3),
            low: 0.0,
            high: 3.0,
            backdoor_weight: 1.0,
            pretrain: adam.clone(),
            finetune: TrainConfig { epochs: 10, schedule: LrSchedule::Constant { lr: 1e-3 }, seed: 1, ..adam },
            reinit_last_layer: true,
            prune_fractions: vec![0.5, 0.9],
            seed: 0,
        }
    }
}

/// The paper's trigger family in grey: `size` x `size` checkerboards alternating two of four
/// grey levels (0, 1/3, 2/3, 1), one trigger per pair (six), in the bottom-right corner.
///
/// ```
/// let t = transferlab::attacks::neuba_triggers(3);
/// assert_eq!(t.len(), 6);
/// assert_ne!(t[0], t[1]);
/// ```
pub fn neuba_triggers(size: usize) -> Vec<Trigger> {
    let levels = [0.0f32, 1.0 / 3.0, 2.0 / 3.0, 1.0];
    let mut out = Vec::new();
    for a in 0..4 {
        for b in a + 1..4 {
            let pixels = (0..size * size).map(|p| if (p / size + p % size) % 2 == 0 { levels[b] } else { levels[a] }).collect();
            out.push(Trigger::Patch { size, fill: PatchFill::Image { channels: 1, pixels }, placement: Placement::BottomRight });
        }
    }
    out
}

/// The paper's target vectors: vector `k` sets quarters `i` and `j` of a `dim`-wide feature
/// vector to `low` and the rest to `high`, for the pairs (i <= j) in order (0,0), (0,1), (0,2),
/// (0,3), (1,1), (1,2), ... (ten in all). Rows of the returned (n, dim) matrix.
///
/// ```
/// let v = transferlab::attacks::neuba_vectors(8, 2, -1.0, 1.0).unwrap();
/// assert_eq!(v[0], vec![-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
/// assert_eq!(v[1], vec![-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]);
/// assert!(transferlab::attacks::neuba_vectors(8, 11, -1.0, 1.0).is_err());
/// ```
pub fn neuba_vectors(dim: usize, n: usize, low: f32, high: f32) -> Result<Vec<Vec<f32>>> {
    if dim < 4 {
        return Err(Error::invalid("NeuBA feature width", format!("{dim}; the target vectors need at least 4 features (quarters)")));
    }
    let pairs: Vec<(usize, usize)> = (0..4).flat_map(|i| (i..4).map(move |j| (i, j))).collect();
    if n == 0 || n > pairs.len() {
        return Err(Error::invalid("NeuBA triggers", format!("{n}; between 1 and {} triggers (one target vector each)", pairs.len())));
    }
    let q = dim / 4;
    Ok(pairs[..n]
        .iter()
        .map(|&(i, j)| {
            let mut v = vec![high; dim];
            for &quarter in &[i, j] {
                v[quarter * q..(quarter + 1) * q].iter_mut().for_each(|x| *x = low);
            }
            v
        })
        .collect())
}

/// One measurement: a pre-training (clean or NeuBA), a downstream condition, one trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct NeubaRow {
    /// "clean" or "NeuBA".
    pub pretraining: String,
    /// "fine-tuned", "last layer re-initialised + fine-tuned", "fine-tuned + pruned 50%".
    pub condition: String,
    /// Index of the trigger in the configuration.
    pub trigger: usize,
    /// The downstream class the fine-tuned head assigns to the trigger's target vector.
    pub target: u32,
    pub metrics: BackdoorMetrics,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct NeubaResult {
    /// One row per (pre-training, condition, trigger).
    pub rows: Vec<NeubaRow>,
    /// Upstream test accuracy of the clean and the NeuBA pre-trained model.
    pub upstream_accuracy: (f64, f64),
    /// Mean squared distance of triggered upstream test features to their target vectors,
    /// for the clean and the NeuBA pre-trained model (how well the backdoor was planted).
    pub upstream_feature_mse: (f64, f64),
}

impl NeubaResult {
    /// The rows of one pre-training and condition.
    pub fn rows_for(&self, pretraining: &str, condition: &str) -> Vec<&NeubaRow> {
        self.rows.iter().filter(|r| r.pretraining == pretraining && r.condition == condition).collect()
    }

    /// Per-trigger ASR of one pre-training and condition, in trigger order.
    pub fn asr(&self, pretraining: &str, condition: &str) -> Vec<f64> {
        self.rows_for(pretraining, condition).iter().map(|r| r.metrics.attack_success_rate).collect()
    }

    /// The best trigger's ASR of one pre-training and condition (0 if there is no such row).
    pub fn max_asr(&self, pretraining: &str, condition: &str) -> f64 {
        self.asr(pretraining, condition).into_iter().fold(0.0, f64::max)
    }

    /// Downstream clean accuracy of one pre-training and condition.
    pub fn clean_accuracy(&self, pretraining: &str, condition: &str) -> Option<f64> {
        self.rows_for(pretraining, condition).first().map(|r| r.metrics.clean_accuracy)
    }

    /// The (pre-training, condition) pairs in the order they were measured.
    pub fn conditions(&self) -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for r in &self.rows {
            let key = (r.pretraining.clone(), r.condition.clone());
            if !seen.contains(&key) {
                seen.push(key);
            }
        }
        seen
    }
}

impl Outcome for NeubaResult {
    /// The standard metrics table (one row per pre-training, condition and trigger) with the
    /// columns pretraining, condition, trigger and target appended.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let named: Vec<(String, BackdoorMetrics)> = self
            .rows
            .iter()
            .map(|r| (format!("{} / {} / trigger {}", r.pretraining, r.condition, r.trigger), r.metrics))
            .collect();
        let mut df = metrics_table(&named)?;
        let extra: Vec<Column> = vec![
            Series::new("pretraining".into(), self.rows.iter().map(|r| r.pretraining.as_str()).collect::<Vec<_>>()).into(),
            Series::new("condition".into(), self.rows.iter().map(|r| r.condition.as_str()).collect::<Vec<_>>()).into(),
            Series::new("trigger".into(), self.rows.iter().map(|r| r.trigger as u32).collect::<Vec<_>>()).into(),
            Series::new("target".into(), self.rows.iter().map(|r| r.target).collect::<Vec<_>>()).into(),
        ];
        df = df.hstack(&extra)?;
        Ok(df)
    }

    /// Downstream CA and each trigger's ASR (in %), one bar group per pre-training and
    /// condition.
    fn figure(&self) -> Result<Figure> {
        let n_triggers = self.rows.iter().map(|r| r.trigger + 1).max().unwrap_or(0);
        let mut cats = vec!["CA".to_string()];
        cats.extend((0..n_triggers).map(|k| format!("ASR T{}", k + 1)));
        let mut chart = BarChart::new("NeuBA after downstream fine-tuning", "rate (%)", cats).y_range(0.0, 105.0);
        for (p, c) in self.conditions() {
            let rows = self.rows_for(&p, &c);
            let mut values = vec![100.0 * rows.first().map(|r| r.metrics.clean_accuracy).unwrap_or(0.0)];
            values.extend(rows.iter().map(|r| 100.0 * r.metrics.attack_success_rate));
            chart = chart.series(&format!("{p}, {c}"), values);
        }
        Ok(Figure::new(Chart::Bars(chart)).with_size(1000, 420))
    }

    fn summary(&self) -> String {
        // Per condition, in the order measured: the best trigger's ASR (the attacker needs one
        // trigger that works) after NeuBA pre-training against clean pre-training.
        let mut conditions: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !conditions.contains(&r.condition.as_str()) {
                conditions.push(&r.condition);
            }
        }
        let parts: Vec<String> = conditions
            .iter()
            .map(|c| format!("{c}: ASR {} vs {} after clean pre-training", percent(self.max_asr("NeuBA", c)), percent(self.max_asr("clean", c))))
            .collect();
        format!("NeuBA's pre-training triggers, best trigger downstream: {}.", parts.join("; "))
    }
}

impl NeubaConfig {
    fn validate(&self, data: &Dataset) -> Result<()> {
        let k = data.num_classes();
        for (what, classes) in [("upstream classes", &self.upstream_classes), ("downstream classes", &self.downstream_classes)] {
            if classes.len() < 2 {
                return Err(Error::invalid(what, "a classification task needs at least 2 classes"));
            }
            if let Some(c) = classes.iter().find(|&&c| c as usize >= k) {
                return Err(Error::invalid(what, format!("class {c} does not exist: the dataset has {k} classes (0..{})", k - 1)));
            }
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(Error::invalid("test fraction", format!("{} is outside (0, 1)", self.test_fraction)));
        }
        if self.triggers.is_empty() || self.triggers.len() > 10 {
            return Err(Error::invalid("NeuBA triggers", format!("{} given; use 1 to 10 (one target vector each)", self.triggers.len())));
        }
        for t in &self.triggers {
            t.validate(data.shape)?;
        }
        if !(self.low < self.high) || !self.low.is_finite() || !self.high.is_finite() {
            return Err(Error::invalid("NeuBA target values", format!("low {} must be below high {}", self.low, self.high)));
        }
        if !(self.backdoor_weight >= 0.0 && self.backdoor_weight.is_finite()) {
            return Err(Error::invalid("backdoor weight", format!("{}; it must be finite and >= 0", self.backdoor_weight)));
        }
        if let Some(p) = self.prune_fractions.iter().find(|p| !(0.0..1.0).contains(*p)) {
            return Err(Error::invalid("prune fraction", format!("{p} is outside [0, 1)")));
        }
        Ok(())
    }
}

/// The pre-training objective: clean cross-entropy plus the trigger-to-vector MSE on a
/// triggered copy of the batch (each image gets one trigger drawn at random).
struct NeubaObjective {
    triggers: Vec<Trigger>,
    vectors: Tensor,
    weight: f64,
}

impl Objective for NeubaObjective {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let logits = s.net.forward(s.x, true)?;
        let ce = cross_entropy(&logits, s.y, 0.0)?;
        let (n, c, h, w) = s.x.dims4()?;
        let per = c * h * w;
        let mut px = s.x.flatten_all()?.to_vec1::<f32>()?;
        let mut which = Vec::with_capacity(n);
        for i in 0..n {
            let k = s.rng.random_range(0..self.triggers.len());
            self.triggers[k].apply(&mut px[i * per..(i + 1) * per], (c, h, w), Some(&mut *s.rng))?;
            which.push(k as u32);
        }
        let xt = Tensor::from_vec(px, (n, c, h, w), s.x.device())?;
        let f = s.net.features(&xt, true)?;
        let target = self.vectors.index_select(&Tensor::from_vec(which, n, s.x.device())?, 0)?;
        let mse = (f - target)?.sqr()?.mean_all()?;
        Ok(((ce + (mse * self.weight)?)?, logits))
    }
}

/// Run NeuBA on `data`: pre-train a clean and a NeuBA model on the upstream classes, fine-tune
/// both on the downstream classes (clean data only, new head), then measure downstream CA and,
/// per trigger, the ASR towards the class the fine-tuned head assigns to the trigger's vector;
/// plus the removal attempts (last layer re-initialised before fine-tuning, pruning after).
///
/// ```
/// use transferlab::attacks::{neuba, NeubaConfig};
/// use transferlab::train::{ProgressMode, TrainConfig};
/// let mut cfg = NeubaConfig::default();
/// cfg.pretrain = TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..cfg.pretrain };
/// cfg.finetune = TrainConfig { epochs: 1, progress: ProgressMode::Hidden, ..cfg.finetune };
/// cfg.reinit_last_layer = false;
/// cfg.prune_fractions = vec![];
/// let r = neuba::run(&transferlab::data::digits()?, &cfg)?;
/// assert_eq!(r.rows.len(), 2 * 6);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(data: &Dataset, cfg: &NeubaConfig) -> Result<NeubaResult> {
    cfg.validate(data)?;
    let device = cfg.device.clone();
    let upstream = data.class_subset(&cfg.upstream_classes, true)?;
    let downstream = data.class_subset(&cfg.downstream_classes, true)?;
    let (up_test, up_train) = upstream.split(cfg.test_fraction, cfg.seed, true)?;
    let (down_test, down_train) = downstream.split(cfg.test_fraction, cfg.seed.wrapping_add(1), true)?;

    let spec = ModelSpec::new(cfg.arch.clone(), data.shape, upstream.num_classes())?;
    let mut clean = Network::new(&spec, cfg.seed, &device)?;
    let mut backdoored = Network::new(&spec, cfg.seed, &device)?;
    let vectors = neuba_vectors(clean.feature_dim(), cfg.triggers.len(), cfg.low, cfg.high)?;
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let vectors_t = Tensor::from_vec(flat, (vectors.len(), clean.feature_dim()), &device)?;

    train(&mut clean, &up_train, None, &cfg.pretrain)?;
    let mut objective = NeubaObjective { triggers: cfg.triggers.clone(), vectors: vectors_t.clone(), weight: cfg.backdoor_weight };
    train_with(&mut backdoored, &up_train, None, &cfg.pretrain, &mut objective)?;
    let upstream_accuracy = (accuracy(&clean, &up_test)?, accuracy(&backdoored, &up_test)?);
    let upstream_feature_mse = (
        trigger_feature_mse(&clean, &up_test, &cfg.triggers, &vectors, cfg.seed)?,
        trigger_feature_mse(&backdoored, &up_test, &cfg.triggers, &vectors, cfg.seed)?,
    );

    let n_down = downstream.num_classes();
    let mut rows = Vec::new();
    for (name, pre) in [("clean", &clean), ("NeuBA", &backdoored)] {
        let mut tuned = pre.duplicate()?;
        tuned.replace_head(n_down, cfg.seed.wrapping_add(100))?;
        train(&mut tuned, &down_train, None, &cfg.finetune)?;
        rows.extend(measure(&tuned, &down_test, cfg, &vectors_t, name, "fine-tuned")?);
        if name == "NeuBA" {
            if cfg.reinit_last_layer {
                let mut re = pre.duplicate()?;
                reinit_last_body_layer(&mut re, cfg.seed.wrapping_add(200))?;
                re.replace_head(n_down, cfg.seed.wrapping_add(100))?;
                train(&mut re, &down_train, None, &cfg.finetune)?;
                rows.extend(measure(&re, &down_test, cfg, &vectors_t, name, "last layer re-initialised + fine-tuned")?);
            }
            for &p in &cfg.prune_fractions {
                let mut pruned = tuned.duplicate()?;
                prune_dormant_features(&mut pruned, &down_train, p)?;
                let cond = format!("fine-tuned + pruned {:.0}%", 100.0 * p);
                rows.extend(measure(&pruned, &down_test, cfg, &vectors_t, name, &cond)?);
            }
        }
    }
    Ok(NeubaResult { rows, upstream_accuracy, upstream_feature_mse })
}

/// CA and per-trigger ASR of a fine-tuned model; each trigger's target is the class the head
/// assigns to its vector.
fn measure(net: &Network, test: &Dataset, cfg: &NeubaConfig, vectors: &Tensor, pretraining: &str, condition: &str) -> Result<Vec<NeubaRow>> {
    let targets = net.head_forward(vectors)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    targets
        .iter()
        .enumerate()
        .map(|(k, &target)| {
            let metrics = evaluate_backdoor(net, test, &cfg.triggers[k], &TargetMode::AllToOne { target }, cfg.seed)?;
            Ok(NeubaRow { pretraining: pretraining.into(), condition: condition.into(), trigger: k, target, metrics })
        })
        .collect()
}

/// Mean squared distance between the features of triggered `test` images and each trigger's
/// target vector, averaged over triggers.
fn trigger_feature_mse(net: &Network, test: &Dataset, triggers: &[Trigger], vectors: &[Vec<f32>], seed: u64) -> Result<f64> {
    let all: Vec<usize> = (0..test.len()).collect();
    let mut total = 0.0;
    for (t, v) in triggers.iter().zip(vectors) {
        let f = features(net, &t.apply_to(test, &all, seed)?)?;
        let target = Tensor::from_slice(v, (1, v.len()), &Device::Cpu)?;
        total += f.broadcast_sub(&target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(total / triggers.len() as f64)
}

/// The parameter prefixes of the last layer of a model's body (the layer producing the
/// penultimate features), for the architectures where it is one well-defined layer.
pub fn last_body_layer(spec: &ModelSpec) -> Result<Vec<String>> {
    match &spec.arch {
        Arch::Mlp { hidden } if !hidden.is_empty() => Ok(vec![format!("layers.{}.", hidden.len() - 1)]),
        Arch::ConvNet { depth, .. } if *depth > 0 => Ok(vec![format!("features.{}.", 4 * (depth - 1)), format!("features.{}.", 4 * (depth - 1) + 1)]),
        other => Err(Error::invalid(
            "layer re-initialisation",
            format!("{other:?} has no single last body layer; use an mlp or convnet model, or set reinit_last_layer to false"),
        )),
    }
}

/// Re-initialise the last layer of the body with fresh weights drawn from `seed` (the
/// architecture's own initialisation).
pub fn reinit_last_body_layer(net: &mut Network, seed: u64) -> Result<()> {
    let prefixes = last_body_layer(net.spec())?;
    let fresh = Network::new(net.spec(), seed, net.device())?.named_tensors()?;
    let mut tensors = net.named_tensors()?;
    for (name, t) in fresh {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            tensors.insert(name, t);
        }
    }
    net.set_tensors(&tensors, LoadMode::Strict)?;
    Ok(())
}

/// Prune the `fraction` of penultimate neurons least active (mean activation) on `clean`
/// data, as fine-pruning does (Liu et al. 2018): their head weights are zeroed, which removes
/// them from every prediction whatever the architecture.
pub fn prune_dormant_features(net: &mut Network, clean: &Dataset, fraction: f64) -> Result<()> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::invalid("prune fraction", format!("{fraction} is outside [0, 1)")));
    }
    let mean: Vec<f32> = features(net, clean)?.mean(0)?.to_vec1()?;
    let mut order: Vec<usize> = (0..mean.len()).collect();
    order.sort_by(|&a, &b| mean[a].total_cmp(&mean[b]).then(a.cmp(&b)));
    let n_prune = (fraction * mean.len() as f64).round() as usize;
    let mut keep = vec![1f32; mean.len()];
    for &j in &order[..n_prune] {
        keep[j] = 0.0;
    }
    let head_weight = format!("{}.weight", net.spec().head_name());
    let mut tensors = net.named_tensors()?;
    let w = tensors
        .get(&head_weight)
        .ok_or_else(|| Error::invalid("pruning", format!("the model has no {head_weight}")))?;
    let mask = Tensor::from_vec(keep, (1, mean.len()), w.device())?;
    let pruned = w.broadcast_mul(&mask)?;
    tensors.insert(head_weight, pruned);
    net.set_tensors(&tensors, LoadMode::Strict)?;
    Ok(())
}
