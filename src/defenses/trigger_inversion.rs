//! Trigger inversion: Neural Cleanse (Wang et al. 2019, "Neural Cleanse: Identifying and
//! Mitigating Backdoor Attacks in Neural Networks") and natural backdoors in clean models
//! (Tao et al. 2022, "Backdoor Vulnerabilities in Normally Trained Deep Learning Models").
//!
//! For a target label, optimise a mask m (H x W) and a pattern p (C x H x W) so that
//! `(1 - m) * x + m * p` is classified as the target, with an L1 cost on m. A backdoored
//! label needs a much smaller mask than the others: the anomaly index (distance from the
//! median of the mask norms in units of the median absolute deviation) flags it. Scanning
//! (source, target) pairs of a clean model finds the natural backdoors Tao et al. describe:
//! small masks that flip one class into another with high success.

use super::probe::check_data;
use crate::attacks::Trigger;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Chart, Figure, ImageGrid, Outcome};
use crate::rng::{normal, stream_at};
use crate::train::optim::Optimizer;
use crate::train::{cross_entropy, OptimizerConfig, Progress, ProgressMode};
use candle_core::{DType, Tensor, Var, D};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// Neural Cleanse's optimisation settings. Defaults from the paper's code: Adam at lr 0.1 with
/// betas (0.5, 0.9), initial cost 1e-3, ASR threshold 0.99, cost multiplied by 1.5 after
/// `patience` rounds above the threshold and divided by 1.5^1.5 after `patience` rounds below;
/// anomaly threshold 2 with the MAD consistency constant 1.4826.
///
/// Deviation: the paper runs up to 50 epochs of the clean data per label with patience 5;
/// here a "round" is `steps_per_round` mini-batches and there are `rounds` of them (default
/// 30 x 10 steps, patience 2), enough for 8x8-16x16 images in seconds per label.
#[derive(Debug, Clone)]
pub struct InversionConfig {
    pub rounds: usize,
    pub steps_per_round: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub init_cost: f64,
    pub cost_multiplier: f64,
    pub patience: usize,
    /// The attack success a mask must reach to count.
    pub asr_threshold: f64,
    /// Labels with an anomaly index above this (and a mask below the median) are flagged.
    pub anomaly_threshold: f64,
    /// Natural-backdoor scan: a pair is reported as a natural backdoor when its trigger
    /// reaches `asr_threshold` with a mask L1 norm at most this fraction of the image area.
    /// Tao et al. compare against the size of injected triggers; the default, 0.15, is the
    /// size of a 3x3 BadNets patch on an 8x8 image.
    pub small_mask: f64,
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for InversionConfig {
    fn default() -> Self {
        Self {
            rounds: 30,
            steps_per_round: 10,
            batch_size: 64,
            lr: 0.1,
            init_cost: 1e-3,
            cost_multiplier: 1.5,
            patience: 2,
            asr_threshold: 0.99,
            anomaly_threshold: 2.0,
            small_mask: 0.15,
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl InversionConfig {
    fn validate(&self) -> Result<()> {
        if self.rounds == 0 || self.steps_per_round == 0 || self.batch_size == 0 {
            return Err(Error::invalid("trigger inversion", "rounds, steps per round and batch size must be at least 1"));
        }
        if !(self.lr > 0.0 && self.init_cost >= 0.0 && self.cost_multiplier > 1.0) {
            return Err(Error::invalid(
                "trigger inversion",
                format!("lr ({}) must be positive, init_cost ({}) non-negative, cost_multiplier ({}) above 1", self.lr, self.init_cost, self.cost_multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.asr_threshold) {
            return Err(Error::invalid("ASR threshold", format!("{} is outside [0, 1]", self.asr_threshold)));
        }
        Ok(())
    }
}

/// One inverted trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct InvertedTrigger {
    /// The class the inputs came from (`None`: all classes, as in Neural Cleanse).
    pub source: Option<u32>,
    pub target: u32,
    /// H x W mask in [0, 1].
    pub mask: Vec<f32>,
    /// C x H x W pattern in [0, 1].
    pub pattern: Vec<f32>,
    /// L1 norm of the mask (pixels).
    pub l1: f64,
    /// Fraction of the inputs it sends to the target.
    pub asr: f64,
}

impl InvertedTrigger {
    /// The trigger as an image: mask times pattern.
    pub fn image(&self, shape: (usize, usize, usize)) -> Vec<f32> {
        let (c, h, w) = shape;
        (0..c * h * w).map(|i| self.mask[i % (h * w)] * self.pattern[i]).collect()
    }
}

/// The smallest mask and its pattern that send `images` (N, C, H, W) to `target`.
fn invert(net: &Network, images: &Tensor, source: Option<u32>, target: u32, cfg: &InversionConfig) -> Result<InvertedTrigger> {
    let (n, c, h, w) = images.dims4()?;
    let dev = net.device().clone();
    // Gradients flow to the mask and pattern only: the weights are a graph-free view.
    let view = net.inference()?;
    let mut rng = stream_at(cfg.seed, "nc.init", target as u64 * 1000 + source.map_or(999, |s| s as u64));
    let init = |len: usize, rng: &mut crate::rng::SeededRng| (0..len).map(|_| 0.1 * normal(rng)).collect::<Vec<f32>>();
    let mask_raw = Var::from_tensor(&Tensor::from_vec(init(h * w, &mut rng), (1, 1, h, w), &dev)?)?;
    let pattern_raw = Var::from_tensor(&Tensor::from_vec(init(c * h * w, &mut rng), (1, c, h, w), &dev)?)?;
    let vars = vec![("mask".to_string(), mask_raw.clone()), ("pattern".to_string(), pattern_raw.clone())];
    let mut opt = Optimizer::new(OptimizerConfig::AdamW { beta1: 0.5, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 })?;
    let squash = |t: &Tensor| -> candle_core::Result<Tensor> { (t.tanh()? + 1.0)? * 0.5 };
    let mut cost = cfg.init_cost;
    let (mut up, mut down) = (0usize, 0usize);
    let mut best: Option<(f64, f64, Vec<f32>, Vec<f32>)> = None;
    let mut last = (0.0, 0.0);
    let images = images.to_device(&dev)?;
    let bs = cfg.batch_size.min(n);
    let mut offset = 0;
    for _round in 0..cfg.rounds {
        let (mut hits, mut seen, mut l1_sum) = (0usize, 0usize, 0.0f64);
        for _ in 0..cfg.steps_per_round {
            let len = bs.min(n - offset);
            let x = images.narrow(0, offset, len)?;
            offset = if offset + len >= n { 0 } else { offset + len };
            let m = squash(mask_raw.as_tensor())?;
            let p = squash(pattern_raw.as_tensor())?;
            let stamped = (x.broadcast_mul(&(1.0 - &m)?)? + m.broadcast_mul(&p)?.broadcast_as(x.shape())?)?;
            let logits = view.forward(&stamped)?;
            let y = Tensor::full(target, len, &dev)?;
            let l1 = m.sum_all()?;
            let loss = (cross_entropy(&logits, &y, 0.0)? + (&l1 * cost)?)?;
            let grads = loss.backward()?;
            opt.step(&vars, &grads, cfg.lr)?;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            hits += pred.iter().filter(|&&p| p == target).count();
            seen += len;
            l1_sum += l1.to_scalar::<f32>()? as f64;
        }
        let asr = hits as f64 / seen as f64;
        let l1 = l1_sum / cfg.steps_per_round as f64;
        last = (l1, asr);
        if asr >= cfg.asr_threshold && best.as_ref().is_none_or(|b| l1 < b.0) {
            let m = squash(mask_raw.as_tensor())?.flatten_all()?.to_vec1::<f32>()?;
            let p = squash(pattern_raw.as_tensor())?.flatten_all()?.to_vec1::<f32>()?;
            best = Some((l1, asr, m, p));
        }
        if cost == 0.0 {
            continue;
        }
        if asr >= cfg.asr_threshold {
            up += 1;
            down = 0;
        } else {
            down += 1;
            up = 0;
        }
        if up >= cfg.patience {
            up = 0;
            cost *= cfg.cost_multiplier;
        } else if down >= cfg.patience {
            down = 0;
            cost /= cfg.cost_multiplier.powf(1.5);
        }
    }
    let (_, _, mask, pattern) = match best {
        Some(b) => b,
        None => {
            let m = squash(mask_raw.as_tensor())?.flatten_all()?.to_vec1::<f32>()?;
            let p = squash(pattern_raw.as_tensor())?.flatten_all()?.to_vec1::<f32>()?;
            (last.0, last.1, m, p)
        }
    };
    // Measure the kept trigger on every input, in eval batches.
    let m = Tensor::from_slice(&mask, (1, 1, h, w), &dev)?;
    let p = Tensor::from_slice(&pattern, (1, c, h, w), &dev)?;
    let stamped = (images.broadcast_mul(&(1.0 - &m)?)? + m.broadcast_mul(&p)?.broadcast_as(images.shape())?)?;
    let pred = view.forward(&stamped)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let full_asr = pred.iter().filter(|&&p| p == target).count() as f64 / n as f64;
    let l1 = mask.iter().map(|&v| v as f64).sum();
    Ok(InvertedTrigger { source, target, l1, mask, pattern, asr: full_asr })
}

fn images_of(clean: &Dataset, class: Option<u32>, dev: &candle_core::Device) -> Result<Tensor> {
    let idx: Vec<usize> = (0..clean.len()).filter(|&i| class.is_none_or(|c| clean.labels[i] == c)).collect();
    if idx.is_empty() {
        return Err(Error::invalid("clean data", format!("no sample of class {}; give a few clean samples of every class", class.unwrap_or(0))));
    }
    Ok(clean.batch(&idx, dev)?.0.to_dtype(DType::F32)?)
}

/// Median of `v` (NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Anomaly index of each value: `|x - median| / (1.4826 * MAD)`.
///
/// ```
/// use transferlab::defenses::trigger_inversion::anomaly_indices;
/// let a = anomaly_indices(&[10.0, 11.0, 9.0, 10.5, 9.5, 1.0]);
/// assert!(a[5] > 2.0 && a[0] < 1.0);
/// ```
pub fn anomaly_indices(values: &[f64]) -> Vec<f64> {
    let med = median(values);
    let dev: Vec<f64> = values.iter().map(|v| (v - med).abs()).collect();
    let mad = 1.4826 * median(&dev);
    dev.iter().map(|d| if mad > 0.0 { d / mad } else if *d > 0.0 { f64::INFINITY } else { 0.0 }).collect()
}

/// Neural Cleanse over every label.
#[derive(Debug, Clone)]
pub struct NeuralCleanseResult {
    pub shape: (usize, usize, usize),
    /// One inverted trigger per label.
    pub triggers: Vec<InvertedTrigger>,
    pub anomaly_index: Vec<f64>,
    /// Labels with a small mask and an anomaly index above the threshold.
    pub flagged: Vec<u32>,
}

impl NeuralCleanseResult {
    /// Fraction of the inverted mask's L1 mass on the pixels `trigger` covers (1: all of it on
    /// the real trigger). Blended triggers cover every pixel, so this is 1 for them.
    pub fn overlap_with(&self, label: u32, trigger: &Trigger) -> Result<f64> {
        let (c, h, w) = self.shape;
        let t = self.triggers.get(label as usize).ok_or_else(|| Error::invalid("label", format!("{label} was not inverted")))?;
        let covered = trigger_footprint(trigger, (c, h, w))?;
        let total: f64 = t.mask.iter().map(|&v| v as f64).sum();
        let inside: f64 = t.mask.iter().zip(&covered).filter(|(_, &c)| c).map(|(&v, _)| v as f64).sum();
        Ok(if total > 0.0 { inside / total } else { 0.0 })
    }

    /// The real trigger next to the inverted trigger and mask of `label`.
    pub fn comparison_figure(&self, label: u32, trigger: &Trigger) -> Result<Figure> {
        let t = self.triggers.get(label as usize).ok_or_else(|| Error::invalid("label", format!("{label} was not inverted")))?;
        let (c, h, w) = self.shape;
        let mask_img: Vec<f32> = (0..c * h * w).map(|i| t.mask[i % (h * w)]).collect();
        let grid = ImageGrid::new(&format!("Real trigger vs. the one Neural Cleanse recovers for label {label}"), self.shape, 3)
            .image(trigger.preview(self.shape)?, "real trigger")
            .image(t.image(self.shape), &format!("recovered m*p (L1 {:.1})", t.l1))
            .image(mask_img, "recovered mask m");
        Ok(Figure::new(Chart::Grid(grid)).with_size(700, 300))
    }
}

/// Which pixels a trigger changes (on a black image, a patch's footprint; blends and image
/// transforms: all).
fn trigger_footprint(trigger: &Trigger, shape: (usize, usize, usize)) -> Result<Vec<bool>> {
    let (c, h, w) = shape;
    match trigger {
        Trigger::Blend { .. } | Trigger::Warp(_) | Trigger::ColorDepth { .. } | Trigger::Reflection(_) => Ok(vec![true; h * w]),
        _ => {
            let mut a = vec![0.25f32; c * h * w];
            let mut b = vec![0.75f32; c * h * w];
            trigger.apply(&mut a, shape, None)?;
            trigger.apply(&mut b, shape, None)?;
            Ok((0..h * w).map(|p| (0..c).any(|ch| a[ch * h * w + p] != 0.25 || b[ch * h * w + p] != 0.75)).collect())
        }
    }
}

impl Outcome for NeuralCleanseResult {
    /// One row per label: label, mask_l1, asr, anomaly_index, flagged.
    fn to_dataframe(&self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(vec![
            Series::new("label".into(), self.triggers.iter().map(|t| t.target).collect::<Vec<_>>()).into(),
            Series::new("mask_l1".into(), self.triggers.iter().map(|t| t.l1).collect::<Vec<_>>()).into(),
            Series::new("asr".into(), self.triggers.iter().map(|t| t.asr).collect::<Vec<_>>()).into(),
            Series::new("anomaly_index".into(), self.anomaly_index.clone()).into(),
            Series::new("flagged".into(), self.triggers.iter().map(|t| self.flagged.contains(&t.target)).collect::<Vec<_>>()).into(),
        ])?)
    }

    /// Every label's inverted trigger (mask times pattern), captioned with its mask norm and
    /// anomaly index.
    fn figure(&self) -> Result<Figure> {
        let mut grid = ImageGrid::new("Neural Cleanse: inverted trigger per label", self.shape, self.triggers.len().min(10));
        for (t, a) in self.triggers.iter().zip(&self.anomaly_index) {
            let flag = if self.flagged.contains(&t.target) { " !" } else { "" };
            grid = grid.image(t.image(self.shape), &format!("{}: {:.1} / {:.1}{}", t.target, t.l1, a, flag));
        }
        let rows = self.triggers.len().div_ceil(10) as u32;
        Ok(Figure::new(Chart::Grid(grid)).with_size(1000, 60 + 130 * rows))
    }

    fn summary(&self) -> String {
        let k = self.triggers.len();
        if k == 0 {
            return "Neural Cleanse inverted no trigger.".to_string();
        }
        let norms: Vec<f64> = self.triggers.iter().map(|t| t.l1).collect();
        let flagged: Vec<String> = self
            .triggers
            .iter()
            .zip(&self.anomaly_index)
            .filter(|(t, _)| self.flagged.contains(&t.target))
            .map(|(t, a)| format!("label {} (mask L1 {:.1}, anomaly index {:.1})", t.target, t.l1, a))
            .collect();
        if flagged.is_empty() {
            let top = self.anomaly_index.iter().copied().fold(f64::NAN, f64::max);
            return format!("Neural Cleanse inverted a trigger for each of {k} labels (median mask L1 {:.1}) and flagged none (largest anomaly index {top:.1}).", median(&norms));
        }
        format!("Neural Cleanse inverted a trigger for each of {k} labels (median mask L1 {:.1}) and flagged {}.", median(&norms), flagged.join(", "))
    }
}

/// Neural Cleanse (Wang et al. 2019), the module's entry point: invert a trigger for every
/// label of `net` from the defender's `clean` data, and flag labels whose mask is anomalously
/// small. The natural-backdoor pair scan of the same inversion is [`scan_label_pairs`].
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::trigger_inversion::{self, InversionConfig};
/// let data = digits().unwrap().select(&(0..40).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let cfg = InversionConfig { rounds: 2, steps_per_round: 2, ..Default::default() };
/// let r = trigger_inversion::run(&net, &data, &cfg).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 10);
/// ```
pub fn run(net: &Network, clean: &Dataset, cfg: &InversionConfig) -> Result<NeuralCleanseResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    // A private copy: its variables get tensor ids from the caller's current id counter, so
    // the backward pass cannot confuse them with the mask and pattern (in evcxr every cell
    // has its own copy of candle's counter, and a model made in an earlier cell can share ids
    // with tensors made now).
    let net = &net.duplicate()?;
    let k = net.spec().num_classes;
    let images = images_of(clean, None, net.device())?;
    let progress = Progress::new("neural cleanse", k as u64, cfg.progress);
    let mut triggers = Vec::with_capacity(k);
    for target in 0..k as u32 {
        triggers.push(invert(net, &images, None, target, cfg)?);
        progress.inc(1);
    }
    progress.finish();
    let norms: Vec<f64> = triggers.iter().map(|t| t.l1).collect();
    let anomaly_index = anomaly_indices(&norms);
    let med = median(&norms);
    let flagged =
        (0..k).filter(|&i| norms[i] < med && anomaly_index[i] > cfg.anomaly_threshold).map(|i| i as u32).collect();
    Ok(NeuralCleanseResult { shape: clean.shape, triggers, anomaly_index, flagged })
}

/// Label pairs of a (clean) model with their inverted triggers: the natural-backdoor scan
/// ([`scan_label_pairs`]). Not to be confused with
/// [`crate::analysis::natural_backdoor_datasets::NaturalBackdoorResult`], the dataset analysis.
#[derive(Debug, Clone)]
pub struct LabelPairScanResult {
    pub shape: (usize, usize, usize),
    pub pairs: Vec<InvertedTrigger>,
    /// The largest mask L1 norm that counts as small (`small_mask` times H x W).
    pub small_mask_l1: f64,
    pub asr_threshold: f64,
}

impl LabelPairScanResult {
    /// The pairs that are natural backdoors: ASR at the threshold with a small mask, smallest
    /// mask first.
    pub fn natural_backdoors(&self) -> Vec<&InvertedTrigger> {
        let mut v: Vec<&InvertedTrigger> =
            self.pairs.iter().filter(|t| t.asr >= self.asr_threshold && t.l1 <= self.small_mask_l1).collect();
        v.sort_by(|a, b| a.l1.total_cmp(&b.l1));
        v
    }
}

impl Outcome for LabelPairScanResult {
    /// One row per scanned pair, smallest mask first: source, target, mask_l1, asr, natural.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut p: Vec<&InvertedTrigger> = self.pairs.iter().collect();
        p.sort_by(|a, b| a.l1.total_cmp(&b.l1));
        let natural: Vec<bool> = p.iter().map(|t| t.asr >= self.asr_threshold && t.l1 <= self.small_mask_l1).collect();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("source".into(), p.iter().map(|t| t.source.unwrap_or(0)).collect::<Vec<_>>()).into(),
            Series::new("target".into(), p.iter().map(|t| t.target).collect::<Vec<_>>()).into(),
            Series::new("mask_l1".into(), p.iter().map(|t| t.l1).collect::<Vec<_>>()).into(),
            Series::new("asr".into(), p.iter().map(|t| t.asr).collect::<Vec<_>>()).into(),
            Series::new("natural".into(), natural).into(),
        ])?)
    }

    /// The smallest triggers found (up to 10), captioned source -> target, mask L1, ASR.
    fn figure(&self) -> Result<Figure> {
        let mut p: Vec<&InvertedTrigger> = self.pairs.iter().collect();
        p.sort_by(|a, b| a.l1.total_cmp(&b.l1));
        let mut grid = ImageGrid::new("Natural backdoors: smallest inverted triggers per label pair", self.shape, 5);
        for t in p.iter().take(10) {
            grid = grid.image(t.image(self.shape), &format!("{}->{}: {:.1}, {:.0}%", t.source.unwrap_or(0), t.target, t.l1, 100.0 * t.asr));
        }
        Ok(Figure::new(Chart::Grid(grid)).with_size(800, 360))
    }

    fn summary(&self) -> String {
        let natural = self.natural_backdoors();
        let smallest = self.pairs.iter().min_by(|a, b| a.l1.total_cmp(&b.l1));
        let pair = |t: &InvertedTrigger| {
            format!("{} -> {} (mask L1 {:.1}, ASR {:.1} %)", t.source.map_or("any".to_string(), |s| s.to_string()), t.target, t.l1, 100.0 * t.asr)
        };
        let found = match (natural.first().copied(), smallest) {
            (Some(t), _) => format!("natural backdoors found: {}, the smallest {}", natural.len(), pair(t)),
            (None, Some(t)) => format!("none is a natural backdoor; the smallest mask is {}", pair(t)),
            (None, None) => "no pair was scanned".to_string(),
        };
        format!(
            "The natural-backdoor scan (Tao et al. 2022) inverted triggers for {} label pairs (natural: ASR >= {:.1} % with mask L1 <= {:.1}); {found}.",
            self.pairs.len(),
            100.0 * self.asr_threshold,
            self.small_mask_l1
        )
    }
}

/// Scan (source, target) label pairs of `net` for natural backdoors (Tao et al. 2022): for
/// each pair, the smallest trigger that sends clean samples of `source` to `target`. `pairs`
/// restricts the scan (all ordered pairs when `None`).
pub fn scan_label_pairs(net: &Network, clean: &Dataset, pairs: Option<&[(u32, u32)]>, cfg: &InversionConfig) -> Result<LabelPairScanResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let net = &net.duplicate()?; // see run
    let k = net.spec().num_classes as u32;
    let all: Vec<(u32, u32)> = match pairs {
        Some(p) => p.to_vec(),
        None => (0..k).flat_map(|s| (0..k).filter(move |&t| t != s).map(move |t| (s, t))).collect(),
    };
    if let Some(&(s, t)) = all.iter().find(|&&(s, t)| s >= k || t >= k || s == t) {
        return Err(Error::invalid("label pair", format!("({s}, {t}): labels must differ and be below {k}")));
    }
    let progress = Progress::new("natural backdoors", all.len() as u64, cfg.progress);
    let mut out = Vec::with_capacity(all.len());
    for &(s, t) in &all {
        let images = images_of(clean, Some(s), net.device())?;
        out.push(invert(net, &images, Some(s), t, cfg)?);
        progress.inc(1);
    }
    progress.finish();
    let (_, h, w) = clean.shape;
    Ok(LabelPairScanResult { shape: clean.shape, pairs: out, small_mask_l1: cfg.small_mask * (h * w) as f64, asr_threshold: cfg.asr_threshold })
}
