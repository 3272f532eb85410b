//! Bias transfer (Salman et al. 2022, "When does bias transfer in transfer learning?").
//!
//! A source model is trained on data where a trigger co-occurs with one class; it is then
//! transferred to a target task whose data has no such correlation, by fixed-feature transfer
//! (new head on frozen features) and by full fine-tuning, next to the same target trained from
//! scratch. The bias is measured on the target model: how much adding the trigger to target
//! test images raises the probability of one target class. The paper's finding: transferred
//! models keep a large shift, scratch models have none, and it persists even when the target
//! data is de-biased (the trigger spread evenly over all target classes).

use crate::attacks::{evaluate_backdoor, poison, PoisonConfig, TargetMode, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{first_seen, BarChart, Chart, Figure, LineChart, Outcome};
use crate::rng::{permutation, stream};
use crate::train::{logits, train, LrSchedule, OptimizerConfig, Progress, ProgressMode, TrainConfig};
use candle_core::{Device, D};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// How to run the bias-transfer experiment.
///
/// Defaults follow Salman et al. where they carry over: a source backdoor-style bias (a patch
/// trigger stamped on 10 % of the source images, relabelled to one class), target models by
/// fixed-feature transfer and full fine-tuning against training from scratch, and a de-biased
/// target set with the trigger on 10 % of the images of every class. Deviation: the paper
/// uses ImageNet-scale ResNets; the default model here is an MLP (two hidden layers of 128)
/// with short SGD schedules, so that the whole study (12 trainings) runs on digits-sized data
/// in seconds on two CPU cores. Any [`Arch`] can be set instead.
#[derive(Debug, Clone)]
pub struct BiasTransferConfig {
    /// The trigger that carries the bias (a 3x3 white patch in the bottom-right corner).
    pub trigger: Trigger,
    /// The source class the trigger co-occurs with.
    pub bias_class: u32,
    /// Fraction of the source training set that gets the trigger (and the bias class label).
    pub bias_rate: f64,
    /// Fraction of each target class that gets the trigger in the de-biased target set.
    pub debias_rate: f64,
    /// Architecture of source, transferred and scratch models.
    pub arch: Arch,
    /// Source training.
    pub pretrain: TrainConfig,
    /// Target training (fixed-feature, full fine-tuning and scratch alike).
    pub finetune: TrainConfig,
    pub seed: u64,
    pub progress: ProgressMode,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for BiasTransferConfig {
    fn default() -> Self {
        let sgd = |epochs: usize, lr: f64| TrainConfig {
            epochs,
            batch_size: 64,
            optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
            schedule: LrSchedule::Cosine { lr, min_lr: 0.0, epochs: epochs as f64 },
            progress: ProgressMode::Hidden,
            ..TrainConfig::default()
        };
        Self {
            device: Device::Cpu,
            trigger: Trigger::badnets(3),
            bias_class: 0,
            bias_rate: 0.1,
            debias_rate: 0.1,
            arch: Arch::Mlp { hidden: vec![128, 128] },
            pretrain: sgd(15, 0.05),
            finetune: sgd(10, 0.05),
            seed: 0,
            progress: ProgressMode::Bar,
        }
    }
}

impl BiasTransferConfig {
    fn validate(&self, source: &Dataset, target: &Dataset) -> Result<()> {
        if !(0.0..=1.0).contains(&self.bias_rate) || self.bias_rate == 0.0 {
            return Err(Error::invalid("bias rate", format!("{}; it must be in (0, 1]", self.bias_rate)));
        }
        if !(0.0..1.0).contains(&self.debias_rate) {
            return Err(Error::invalid("de-bias rate", format!("{}; it must be in [0, 1)", self.debias_rate)));
        }
        if self.bias_class as usize >= source.num_classes() {
            return Err(Error::invalid(
                "bias class",
                format!("{} does not exist: the source has {} classes", self.bias_class, source.num_classes()),
            ));
        }
        if source.shape != target.shape {
            return Err(Error::shape(
                "bias transfer",
                format!("source images are {:?} but target images are {:?}; resize one of them", source.shape, target.shape),
            ));
        }
        self.trigger.validate(source.shape)
    }
}

/// One target model of the study.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasTransferRow {
    /// "none" (scratch), "clean" or "biased".
    pub source: String,
    /// "scratch", "fixed-feature" or "full fine-tuning".
    pub mode: String,
    /// Whether the target training set was de-biased (trigger spread over all classes).
    pub debiased_target: bool,
    /// Clean target test accuracy.
    pub accuracy: f64,
    /// The largest shift in P(class) when the trigger is added, averaged over test images of
    /// the other classes: max over k of mean(p_k(x + trigger) - p_k(x)).
    pub shift: f64,
    /// The target class with that largest shift.
    pub shifted_class: u32,
    /// Fraction of test images of other classes not predicted as `shifted_class` before the
    /// trigger and predicted as it after.
    pub flip_rate: f64,
}

impl BiasTransferRow {
    /// A short name: "fixed-feature (biased source)", "scratch", ...
    pub fn condition(&self) -> String {
        if self.mode == "scratch" {
            "scratch".into()
        } else {
            format!("{} ({} source)", self.mode, self.source)
        }
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasTransferResult {
    /// Clean accuracy of the clean and the biased source model.
    pub source_accuracy: (f64, f64),
    /// Attack success rate of the trigger on the biased source model (the bias was learnt).
    pub source_trigger_rate: f64,
    pub rows: Vec<BiasTransferRow>,
}

impl BiasTransferResult {
    /// The row of a condition.
    pub fn row(&self, source: &str, mode: &str, debiased_target: bool) -> Option<&BiasTransferRow> {
        self.rows.iter().find(|r| r.source == source && r.mode == mode && r.debiased_target == debiased_target)
    }
}

impl Outcome for BiasTransferResult {
    /// One row per target model: source, mode, debiased_target, accuracy, shift,
    /// shifted_class, flip_rate.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let r = &self.rows;
        Ok(DataFrame::new_infer_height(vec![
            Series::new("source".into(), r.iter().map(|x| x.source.clone()).collect::<Vec<_>>()).into(),
            Series::new("mode".into(), r.iter().map(|x| x.mode.clone()).collect::<Vec<_>>()).into(),
            Series::new("debiased_target".into(), r.iter().map(|x| x.debiased_target).collect::<Vec<_>>()).into(),
            Series::new("accuracy".into(), r.iter().map(|x| x.accuracy).collect::<Vec<_>>()).into(),
            Series::new("shift".into(), r.iter().map(|x| x.shift).collect::<Vec<_>>()).into(),
            Series::new("shifted_class".into(), r.iter().map(|x| x.shifted_class).collect::<Vec<_>>()).into(),
            Series::new("flip_rate".into(), r.iter().map(|x| x.flip_rate).collect::<Vec<_>>()).into(),
        ])?)
    }

    /// The paper's figure: the shift in P(class) (%) per condition, plain against de-biased
    /// target data.
    fn figure(&self) -> Result<Figure> {
        let conditions = distinct_conditions(self.rows.iter());
        // Short axis labels: the full names overlap under their bars.
        let short: Vec<String> = conditions
            .iter()
            .map(|c| c.replace("fixed-feature", "fixed").replace("full fine-tuning", "full FT").replace(" source)", " src)"))
            .collect();
        let values = |debiased: bool| -> Vec<f64> {
            conditions
                .iter()
                .map(|c| self.rows.iter().find(|r| &r.condition() == c && r.debiased_target == debiased).map_or(0.0, |r| 100.0 * r.shift))
                .collect()
        };
        let chart = BarChart::new("Bias transfer: shift in P(class) when the trigger is added", "shift in P(class) (%)", short)
            .series("target data as is", values(false))
            .series("de-biased target data", values(true));
        Ok(Figure::new(Chart::Bars(chart)).with_size(1000, 500))
    }

    fn summary(&self) -> String {
        let shift = |source: &str, mode: &str, debiased: bool| {
            self.row(source, mode, debiased).map_or("n/a".to_string(), |r| format!("{:.1} points", 100.0 * r.shift))
        };
        format!(
            "Bias transfer: adding the trigger to target test images raised P(class) by {} with fixed-feature transfer from the biased source and {} with full fine-tuning, against {} for a model trained from scratch (the biased source learnt the trigger at {:.1} % success); on de-biased target data the shifts were {} and {} (scratch {}).",
            shift("biased", "fixed-feature", false),
            shift("biased", "full fine-tuning", false),
            shift("none", "scratch", false),
            100.0 * self.source_trigger_rate,
            shift("biased", "fixed-feature", true),
            shift("biased", "full fine-tuning", true),
            shift("none", "scratch", true)
        )
    }
}

/// Run the study: train a clean and a biased source model on `source`, transfer both to
/// `target_train` (fixed-feature and full fine-tuning), train the target from scratch, each
/// on the target data as is and de-biased, and measure on `target_test`.
///
/// ```
/// use transferlab::analysis::bias_transfer::{run, BiasTransferConfig};
/// let d = transferlab::data::digits()?;
/// let source = d.class_subset(&[0, 1, 2], true)?.select(&(0..120).collect::<Vec<_>>())?;
/// let target = d.class_subset(&[5, 6], true)?;
/// let (train, test) = target.split(0.5, 0, true)?;
/// let mut cfg = BiasTransferConfig::default();
/// cfg.arch = transferlab::models::Arch::Mlp { hidden: vec![16] };
/// cfg.pretrain.epochs = 1;
/// cfg.finetune.epochs = 1;
/// cfg.progress = transferlab::train::ProgressMode::Hidden;
/// let result = run(&source, &train.select(&(0..60).collect::<Vec<_>>())?, &test, &cfg)?;
/// assert_eq!(result.rows.len(), 10);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(source: &Dataset, target_train: &Dataset, target_test: &Dataset, cfg: &BiasTransferConfig) -> Result<BiasTransferResult> {
    let progress = Progress::new("bias transfer", 12, cfg.progress);
    let (sources, source_accuracy, source_trigger_rate) = train_sources(source, target_train, target_test, cfg, &progress)?;
    let debiased_target = debias(target_train, &cfg.trigger, cfg.debias_rate, cfg.seed)?;
    let mut rows = Vec::new();
    for (debiased, data) in [(false, target_train), (true, &debiased_target)] {
        rows.extend(target_rows(&sources, data, debiased, target_test, cfg, &progress)?);
    }
    progress.finish();
    Ok(BiasTransferResult { source_accuracy, source_trigger_rate, rows })
}

/// Check the inputs, train the clean and the biased source model, and measure them: the two
/// sources, (clean, biased) source accuracy, and the biased source's trigger success rate.
#[allow(clippy::type_complexity)]
fn train_sources(
    source: &Dataset,
    target_train: &Dataset,
    target_test: &Dataset,
    cfg: &BiasTransferConfig,
    progress: &Progress,
) -> Result<(Vec<(&'static str, Network)>, (f64, f64), f64)> {
    cfg.validate(source, target_train)?;
    if target_test.shape != target_train.shape || target_test.num_classes() != target_train.num_classes() {
        return Err(Error::invalid("target test set", "it must have the target training set's image shape and classes"));
    }
    let (source_train, source_test) = source.split(0.8, cfg.seed, true)?;
    let bias = PoisonConfig {
        trigger: cfg.trigger.clone(),
        rate: cfg.bias_rate,
        target: TargetMode::AllToOne { target: cfg.bias_class },
        clean_label: false,
        seed: cfg.seed,
    };
    let biased_source = poison(&source_train, &bias)?;
    let source_spec = ModelSpec::new(cfg.arch.clone(), source.shape, source.num_classes())?;
    let mut sources = Vec::new();
    for (name, data) in [("clean", &source_train), ("biased", &biased_source)] {
        let mut net = Network::new(&source_spec, cfg.seed, &cfg.device)?;
        train(&mut net, data, None, &TrainConfig { seed: cfg.seed, ..cfg.pretrain.clone() })?;
        progress.inc(1);
        sources.push((name, net));
    }
    let clean_acc = crate::train::accuracy(&sources[0].1, &source_test)?;
    let biased_metrics = evaluate_backdoor(&sources[1].1, &source_test, &cfg.trigger, &bias.target, cfg.seed)?;
    Ok((sources, (clean_acc, biased_metrics.clean_accuracy), biased_metrics.attack_success_rate))
}

/// The target models trained on `data`: scratch, then fixed-feature and full fine-tuning from
/// each of `sources`, each measured on `target_test`.
fn target_rows(
    sources: &[(&str, Network)],
    data: &Dataset,
    debiased: bool,
    target_test: &Dataset,
    cfg: &BiasTransferConfig,
    progress: &Progress,
) -> Result<Vec<BiasTransferRow>> {
    let k = data.num_classes();
    let target_spec = ModelSpec::new(cfg.arch.clone(), data.shape, k)?;
    let tcfg = TrainConfig { seed: cfg.seed.wrapping_add(1), ..cfg.finetune.clone() };
    let mut scratch = Network::new(&target_spec, cfg.seed.wrapping_add(2), &cfg.device)?;
    train(&mut scratch, data, None, &tcfg)?;
    progress.inc(1);
    let mut rows = vec![measure(&scratch, target_test, &cfg.trigger, "none", "scratch", debiased, cfg.seed)?];
    for (name, src) in sources {
        for mode in ["fixed-feature", "full fine-tuning"] {
            let mut net = src.duplicate()?;
            net.replace_head(k, cfg.seed.wrapping_add(3))?;
            if mode == "fixed-feature" {
                net.freeze_body();
            }
            train(&mut net, data, None, &tcfg)?;
            progress.inc(1);
            rows.push(measure(&net, target_test, &cfg.trigger, name, mode, debiased, cfg.seed)?);
        }
    }
    Ok(rows)
}

/// The bias left at each strength of de-biasing: the study re-run with the trigger spread over
/// `rates` of every target class, keeping scratch and the biased source's two transfer modes.
#[derive(Debug, Clone, PartialEq)]
pub struct DebiasSweep {
    /// (de-bias rate, row) for scratch and for the biased source's fixed-feature and full
    /// fine-tuning rows, trained on the target data de-biased at that rate.
    pub rows: Vec<(f64, BiasTransferRow)>,
}

impl DebiasSweep {
    /// The shift of `condition` (as [`BiasTransferRow::condition`] names it) at each rate.
    pub fn shifts(&self, condition: &str) -> Vec<(f64, f64)> {
        self.rows.iter().filter(|(_, r)| r.condition() == condition).map(|(rate, r)| (*rate, r.shift)).collect()
    }
}

/// The rows' conditions, each once, in order of first appearance.
fn distinct_conditions<'a>(rows: impl Iterator<Item = &'a BiasTransferRow>) -> Vec<String> {
    first_seen(rows.map(BiasTransferRow::condition))
}

impl Outcome for DebiasSweep {
    /// One row per (rate, target model): debias_rate, source, mode, accuracy, shift, flip_rate.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let r = &self.rows;
        Ok(DataFrame::new_infer_height(vec![
            Series::new("debias_rate".into(), r.iter().map(|x| x.0).collect::<Vec<_>>()).into(),
            Series::new("source".into(), r.iter().map(|x| x.1.source.clone()).collect::<Vec<_>>()).into(),
            Series::new("mode".into(), r.iter().map(|x| x.1.mode.clone()).collect::<Vec<_>>()).into(),
            Series::new("accuracy".into(), r.iter().map(|x| x.1.accuracy).collect::<Vec<_>>()).into(),
            Series::new("shift".into(), r.iter().map(|x| x.1.shift).collect::<Vec<_>>()).into(),
            Series::new("flip_rate".into(), r.iter().map(|x| x.1.flip_rate).collect::<Vec<_>>()).into(),
        ])?)
    }

    /// The shift in P(class) (%) against the share of each target class carrying the trigger.
    fn figure(&self) -> Result<Figure> {
        let mut chart = LineChart::new("Bias transfer under de-biasing", "target images with the trigger, per class (%)", "shift in P(class) (%)");
        for c in distinct_conditions(self.rows.iter().map(|(_, r)| r)) {
            chart = chart.series(&c, self.shifts(&c).into_iter().map(|(x, y)| (100.0 * x, 100.0 * y)).collect());
        }
        Ok(Figure::new(Chart::Lines(chart)).with_size(900, 550))
    }

    fn summary(&self) -> String {
        let ends = |condition: &str| {
            let s = self.shifts(condition);
            match (s.first(), s.last()) {
                (Some(a), Some(b)) => format!("{:.1} to {:.1} points", 100.0 * a.1, 100.0 * b.1),
                _ => "n/a".to_string(),
            }
        };
        let (lo, hi) = (self.rows.first().map_or(0.0, |r| r.0), self.rows.last().map_or(0.0, |r| r.0));
        format!(
            "Bias transfer under de-biasing (trigger on {:.1} % to {:.1} % of every target class): the trigger's shift in P(class) went from {} with fixed-feature transfer from the biased source and from {} with full fine-tuning, against {} for training from scratch.",
            100.0 * lo,
            100.0 * hi,
            ends("fixed-feature (biased source)"),
            ends("full fine-tuning (biased source)"),
            ends("scratch")
        )
    }
}

/// Re-run the study at each de-bias rate of `rates` (each in [0, 1); 0 = the target as is)
/// and keep the de-biased rows of scratch and of the biased source's transfers.
///
/// ```
/// use transferlab::analysis::bias_transfer::{debias_sweep, BiasTransferConfig};
/// let d = transferlab::data::digits()?;
/// let source = d.class_subset(&[0, 1, 2], true)?.select(&(0..120).collect::<Vec<_>>())?;
/// let (train, test) = d.class_subset(&[5, 6], true)?.split(0.5, 0, true)?;
/// let mut cfg = BiasTransferConfig::default();
/// cfg.arch = transferlab::models::Arch::Mlp { hidden: vec![16] };
/// cfg.pretrain.epochs = 1;
/// cfg.finetune.epochs = 1;
/// cfg.progress = transferlab::train::ProgressMode::Hidden;
/// let sweep = debias_sweep(&source, &train, &test, &cfg, &[0.0, 0.2])?;
/// assert_eq!(sweep.rows.len(), 6);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn debias_sweep(source: &Dataset, target_train: &Dataset, target_test: &Dataset, cfg: &BiasTransferConfig, rates: &[f64]) -> Result<DebiasSweep> {
    if rates.is_empty() {
        return Err(Error::invalid("de-bias rates", "none given; give rates in [0, 1), e.g. [0.0, 0.05, 0.1]"));
    }
    for &rate in rates {
        BiasTransferConfig { debias_rate: rate, ..cfg.clone() }.validate(source, target_train)?;
    }
    // The sources do not depend on the rate: train them once, and only the biased one is
    // transferred (the sweep keeps scratch and the biased source's rows).
    let progress = Progress::new("de-biasing sweep", 2 + 3 * rates.len() as u64, cfg.progress);
    let (sources, _, _) = train_sources(source, target_train, target_test, cfg, &progress)?;
    let biased = &sources[1..];
    let mut rows = Vec::new();
    for &rate in rates {
        let data = debias(target_train, &cfg.trigger, rate, cfg.seed)?;
        rows.extend(target_rows(biased, &data, true, target_test, cfg, &progress)?.into_iter().map(|r| (rate, r)));
    }
    progress.finish();
    Ok(DebiasSweep { rows })
}

/// A copy of `ds` with the trigger on `rate` of the images of every class (labels kept), so
/// the trigger carries no information about the label.
pub fn debias(ds: &Dataset, trigger: &Trigger, rate: f64, seed: u64) -> Result<Dataset> {
    let mut chosen = Vec::new();
    let mut rng = stream(seed, "bias_transfer.debias");
    for members in ds.indices_by_class() {
        let take = (rate * members.len() as f64).round() as usize;
        let order = permutation(&mut rng, members.len());
        chosen.extend(order[..take].iter().map(|&j| members[j]));
    }
    chosen.sort_unstable();
    trigger.apply_to(ds, &chosen, seed)
}

/// Shift in P(class) when the trigger is added, for the class it favours most.
fn measure(
    net: &Network,
    test: &Dataset,
    trigger: &Trigger,
    source: &str,
    mode: &str,
    debiased_target: bool,
    seed: u64,
) -> Result<BiasTransferRow> {
    let all: Vec<usize> = (0..test.len()).collect();
    let triggered = trigger.apply_to(test, &all, seed)?;
    let p_clean = candle_nn::ops::softmax(&logits(net, test)?, D::Minus1)?.to_vec2::<f32>()?;
    let p_trig = candle_nn::ops::softmax(&logits(net, &triggered)?, D::Minus1)?.to_vec2::<f32>()?;
    let k = test.num_classes();
    let argmax = |p: &[f32]| p.iter().enumerate().fold(0, |b, (i, v)| if *v > p[b] { i } else { b });
    let accuracy = all.iter().filter(|&&i| argmax(&p_clean[i]) == test.labels[i] as usize).count() as f64 / test.len() as f64;
    let mut best = (f64::NEG_INFINITY, 0u32, 0.0);
    for c in 0..k {
        let others: Vec<usize> = all.iter().copied().filter(|&i| test.labels[i] as usize != c).collect();
        if others.is_empty() {
            continue;
        }
        let shift = others.iter().map(|&i| (p_trig[i][c] - p_clean[i][c]) as f64).sum::<f64>() / others.len() as f64;
        if shift > best.0 {
            let flips = others.iter().filter(|&&i| argmax(&p_clean[i]) != c && argmax(&p_trig[i]) == c).count() as f64 / others.len() as f64;
            best = (shift, c as u32, flips);
        }
    }
    Ok(BiasTransferRow {
        source: source.into(),
        mode: mode.into(),
        debiased_target,
        accuracy,
        shift: best.0,
        shifted_class: best.1,
        flip_rate: best.2,
    })
}
