//! Fine-pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on
//! Deep Neural Networks"): prune the last convolutional layer's channels that stay dormant on
//! clean data, then fine-tune.

use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, triggered_victims, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, LoadMode, Network};
use crate::report::{Chart, Figure, LineChart, Outcome};
use crate::train::evaluate::fraction_equal;
use crate::train::{cross_entropy, train_with, Objective, OptimizerConfig, ProgressMode, Step, TrainConfig};
use candle_core::{Device, Tensor, D};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// How to fine-prune. Defaults follow Liu et al. 2018: channels are pruned one at a time in
/// increasing order of their mean activation on clean data, until clean accuracy has dropped
/// by 4 points; then the pruned model is fine-tuned on the same clean data.
///
/// Deviations: the paper fine-tunes with the original training schedule on its validation
/// data; here 10 epochs of SGD at 0.01 (the standard fine-tuning of
/// [`super::fine_tuning`]). Accuracy is measured on the defender's clean data, the only data
/// it holds.
#[derive(Debug, Clone)]
pub struct FinePruningConfig {
    /// Stop pruning before clean accuracy falls more than this below the unpruned model's.
    pub max_accuracy_drop: f64,
    /// Never prune more than this fraction of the channels.
    pub max_prune_ratio: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerConfig,
    /// Augmentation while fine-tuning, as [`super::FineTuningConfig::augment`] (none by
    /// default: the right crop size depends on the image size).
    pub augment: Augment,
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for FinePruningConfig {
    fn default() -> Self {
        Self {
            max_accuracy_drop: 0.04,
            max_prune_ratio: 0.95,
            epochs: 10,
            batch_size: 128,
            lr: 0.01,
            optimizer: OptimizerConfig::sgd_momentum(),
            augment: Augment::none(),
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl FinePruningConfig {
    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_accuracy_drop) {
            return Err(Error::invalid("accuracy drop", format!("{} is outside [0, 1]", self.max_accuracy_drop)));
        }
        if !(self.max_prune_ratio > 0.0 && self.max_prune_ratio < 1.0) {
            return Err(Error::invalid("prune ratio", format!("{} must be in (0, 1): pruning every channel leaves no model", self.max_prune_ratio)));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("fine-pruning learning rate", format!("{}; it must be positive", self.lr)));
        }
        Ok(())
    }
}

/// How the penultimate features of `net` map onto its last convolutional layer's channels:
/// `(channels, positions per channel)`, features laid out channel-major.
///
/// Fine-pruning needs the features to be the last conv layer's output (flattened or pooled),
/// so that a channel can be removed by zeroing its features before the head.
pub fn last_conv_layout(net: &Network) -> Result<(usize, usize)> {
    layout_of(&net.spec().arch, net.feature_dim())
}

fn layout_of(arch: &Arch, d: usize) -> Result<(usize, usize)> {
    match arch {
        // The hidden detector only adds to the logits: the features are the base's.
        Arch::Backdoored { base, .. } => layout_of(base, d),
        Arch::ConvNet { width, .. } => Ok((*width, d / width)),
        Arch::SmallCnn => Ok((128, d / 128)),
        // Globally pooled channels of the last 1x1 convolution.
        Arch::BagNet { .. } => Ok((d, 1)),
        Arch::CifarResNet { .. } | Arch::PreActResNet18 | Arch::ResNet18 | Arch::ResNet50 | Arch::ResNetV2 { .. } => Ok((d, 1)),
        Arch::Mlp { .. } => Err(Error::invalid(
            "model for fine-pruning",
            "an MLP has no convolutional layers to prune; fine-pruning needs a CNN (convnet, cnn3, a ResNet); use fine_tuning instead",
        )),
        Arch::BadNetsCnn => Err(Error::invalid(
            "model for fine-pruning",
            "the BadNets CNN's penultimate layer is fully connected (fc1), so its last conv layer is not visible before the head; \
             use convnet, cnn3 or a ResNet, or fine_tuning",
        )),
    }
}

/// One point of the pruning curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrunePoint {
    pub pruned: usize,
    pub ratio: f64,
    /// Accuracy on the defender's clean data (what the stopping rule sees).
    pub clean_data_accuracy: f64,
    /// CA and ASR on the probe's test set (for the figure; the defence never sees them).
    pub test_accuracy: f64,
    pub attack_success_rate: f64,
}

/// What fine-pruning did.
#[derive(Debug, Clone)]
pub struct FinePruningResult {
    pub before: (String, BackdoorMetrics),
    /// After pruning only, then after pruning and fine-tuning.
    pub after: Vec<(String, BackdoorMetrics)>,
    /// Channels of the last conv layer, and how many were pruned.
    pub channels: usize,
    pub pruned: usize,
    /// Pruned channel indices, in pruning order (most dormant first).
    pub pruned_channels: Vec<usize>,
    /// CA and ASR as channels are pruned one by one, up to `max_prune_ratio`.
    pub curve: Vec<PrunePoint>,
}

impl FinePruningResult {
    /// The pruning curve: pruned, ratio, clean_data_accuracy, ca, asr.
    pub fn curve_dataframe(&self) -> Result<DataFrame> {
        let c = &self.curve;
        Ok(DataFrame::new_infer_height(vec![
            Series::new("pruned".into(), c.iter().map(|p| p.pruned as u64).collect::<Vec<_>>()).into(),
            Series::new("ratio".into(), c.iter().map(|p| p.ratio).collect::<Vec<_>>()).into(),
            Series::new("clean_data_accuracy".into(), c.iter().map(|p| p.clean_data_accuracy).collect::<Vec<_>>()).into(),
            Series::new("ca".into(), c.iter().map(|p| p.test_accuracy).collect::<Vec<_>>()).into(),
            Series::new("asr".into(), c.iter().map(|p| p.attack_success_rate).collect::<Vec<_>>()).into(),
        ])?)
    }
}

impl Outcome for FinePruningResult {
    /// [`defence_table`] columns plus `pruned_channels` (0 for the undefended row).
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&self.before, &self.after)?;
        let pruned: Vec<u64> = std::iter::once(0).chain(self.after.iter().map(|_| self.pruned as u64)).collect();
        df.with_column(Series::new("pruned_channels".into(), pruned).into())?;
        Ok(df)
    }

    /// CA and ASR (%) against the fraction of channels pruned, with the chosen ratio marked.
    fn figure(&self) -> Result<Figure> {
        let ca: Vec<(f64, f64)> = self.curve.iter().map(|p| (p.ratio, 100.0 * p.test_accuracy)).collect();
        let asr: Vec<(f64, f64)> = self.curve.iter().map(|p| (p.ratio, 100.0 * p.attack_success_rate)).collect();
        let r = self.pruned as f64 / self.channels as f64;
        let chart = LineChart::new("Fine-pruning: pruning the last conv layer", "fraction of channels pruned", "rate (%)")
            .series("clean accuracy", ca)
            .series("attack success rate", asr)
            .series("chosen ratio", vec![(r, 0.0), (r, 100.0)])
            .y_range(0.0, 105.0);
        Ok(Figure::new(Chart::Lines(chart)))
    }

    fn summary(&self) -> String {
        let before = &self.before.1;
        let Some((_, last)) = self.after.last() else {
            return format!("Fine-pruning ran no defence (undefended: ASR {:.1} %, CA {:.1} %).", 100.0 * before.attack_success_rate, 100.0 * before.clean_accuracy);
        };
        let pruning_only = match self.after.first() {
            Some((name, m)) if self.after.len() > 1 => format!("; {name} alone: ASR {:.1} %, CA {:.1} %", 100.0 * m.attack_success_rate, 100.0 * m.clean_accuracy),
            _ => String::new(),
        };
        format!(
            "Fine-pruning pruned {} of {} channels of the last convolutional layer, then fine-tuned: {} (DER {:.2}){pruning_only}.",
            self.pruned,
            self.channels,
            before_after_sentence(before, last),
            defence_effectiveness_rate(before, last)
        )
    }
}

/// Cross-entropy through the head with pruned features zeroed, so pruned channels stay pruned
/// while the rest of the model fine-tunes.
struct MaskedHead {
    mask: Tensor,
}

impl Objective for MaskedHead {
    fn loss(&mut self, s: &mut Step) -> Result<(Tensor, Tensor)> {
        let f = s.net.features(s.x, true)?.broadcast_mul(&self.mask)?;
        let logits = s.net.head_forward(&f)?;
        Ok((cross_entropy(&logits, s.y, 0.0)?, logits))
    }
}

/// Feature mask (1 kept, 0 pruned) for the first `k` channels of `order`.
fn feature_mask(order: &[usize], k: usize, channels: usize, positions: usize) -> Vec<f32> {
    let mut m = vec![1f32; channels * positions];
    for &c in &order[..k] {
        m[c * positions..(c + 1) * positions].iter_mut().for_each(|v| *v = 0.0);
    }
    m
}

fn masked_predictions(net: &Network, feats: &Tensor, mask: &[f32]) -> Result<Vec<u32>> {
    let m = Tensor::from_slice(mask, (1, mask.len()), &Device::Cpu)?;
    let f = feats.broadcast_mul(&m)?.to_device(net.device())?;
    Ok(net.head_forward(&f)?.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1::<u32>()?)
}

/// Zero the head's input columns of the pruned features: the returned model is pruned for
/// good, with no mask to carry around.
fn bake_pruning(net: &mut Network, mask: &[f32]) -> Result<()> {
    let mut tensors = net.named_tensors()?;
    let name = format!("{}.weight", net.spec().head_name());
    let w = tensors.get(&name).ok_or_else(|| Error::invalid("model", format!("no head weight {name}")))?;
    let m = Tensor::from_slice(mask, (1, mask.len()), w.device())?;
    let pruned = w.broadcast_mul(&m)?;
    tensors.insert(name, pruned);
    net.set_tensors(&tensors, LoadMode::Strict)?;
    Ok(())
}

/// Fine-prune a copy of `net` with the defender's `clean` data; score with `probe`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{fine_pruning, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let mlp = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let err = fine_pruning::run(&mlp, &data, &probe, &Default::default()).unwrap_err();
/// assert!(err.to_string().contains("no convolutional layers"));
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &FinePruningConfig) -> Result<FinePruningResult> {
    cfg.validate()?;
    let (channels, positions) = last_conv_layout(net)?;
    check_data(net, clean, "clean data")?;
    let before = ("no defence".to_string(), probe.measure(net)?);

    // Mean activation of each channel over the clean data (features are post-ReLU).
    let clean_feats = crate::train::features(net, clean)?;
    let per_channel = clean_feats.reshape((clean.len(), channels, positions))?.mean(2)?.mean(0)?.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..channels).collect();
    order.sort_by(|&a, &b| per_channel[a].total_cmp(&per_channel[b]).then(a.cmp(&b)));

    let test_feats = crate::train::features(net, &probe.test)?;
    let (triggered, trig_targets) = triggered_victims(&probe.test, &probe.trigger, &probe.target, probe.seed)?;
    let trig_feats = crate::train::features(net, &triggered)?;

    let max_pruned = ((cfg.max_prune_ratio * channels as f64).floor() as usize).min(channels - 1);
    let mut curve = Vec::with_capacity(max_pruned + 1);
    let mut base_acc = 0.0;
    let mut chosen: Option<usize> = None;
    for pruned in 0..=max_pruned {
        let mask = feature_mask(&order, pruned, channels, positions);
        let acc = fraction_equal(&masked_predictions(net, &clean_feats, &mask)?, &clean.labels);
        if pruned == 0 {
            base_acc = acc;
        }
        // The paper stops at the last ratio whose accuracy is still within the allowed drop.
        if chosen.is_none() && base_acc - acc > cfg.max_accuracy_drop {
            chosen = Some(pruned - 1);
        }
        curve.push(PrunePoint {
            pruned,
            ratio: pruned as f64 / channels as f64,
            clean_data_accuracy: acc,
            test_accuracy: fraction_equal(&masked_predictions(net, &test_feats, &mask)?, &probe.test.labels),
            attack_success_rate: fraction_equal(&masked_predictions(net, &trig_feats, &mask)?, &trig_targets),
        });
    }
    let pruned = chosen.unwrap_or(max_pruned);
    let mask = feature_mask(&order, pruned, channels, positions);

    let mut model = net.duplicate()?;
    model.unfreeze_all();
    bake_pruning(&mut model, &mask)?;
    let pruned_metrics = probe.measure(&model)?;
    let tc = TrainConfig { augment: cfg.augment, ..TrainConfig::constant_rate(cfg.epochs, cfg.batch_size, cfg.optimizer.clone(), cfg.lr, cfg.seed, cfg.progress) };
    let mut objective = MaskedHead { mask: Tensor::from_slice(&mask, (1, mask.len()), model.device())? };
    train_with(&mut model, clean, None, &tc, &mut objective)?;
    // Weight decay moved the pruned columns off zero; they never reached the logits.
    bake_pruning(&mut model, &mask)?;
    let fine_pruned = probe.measure(&model)?;
    Ok(FinePruningResult {
        before,
        after: vec![("pruning".to_string(), pruned_metrics), ("fine-pruning".to_string(), fine_pruned)],
        channels,
        pruned,
        pruned_channels: order[..pruned].to_vec(),
        curve,
    })
}
