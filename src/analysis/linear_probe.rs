//! Linear probes across models (Kornblith et al. 2019, "Do better ImageNet models transfer
//! better?").
//!
//! Several source models of differing source accuracy are trained (different widths, lengths
//! and label smoothing); each is transferred by a linear probe (multinomial L2 logistic
//! regression on frozen penultimate features, the penalty chosen on a validation split from a
//! log-spaced grid, fitted by L-BFGS, then refitted on train + validation) and, as the second
//! protocol, by fine-tuning. The paper's findings: transfer accuracy correlates strongly with
//! source accuracy in log-odds (r = 0.99 for fine-tuning, 0.96 for the probe across 16
//! ImageNet models), except that regularisers such as label smoothing raise source accuracy
//! yet make the penultimate features transfer worse.

use super::logistic::{LbfgsOptions, LogisticRegression};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::charts::fit_line;
use crate::report::{Chart, Figure, Outcome, ScatterChart};
use crate::train::{accuracy, features, train, LrSchedule, OptimizerConfig, Progress, ProgressMode, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};

/// One source model to train: architecture, training length and label smoothing.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecipe {
    pub name: String,
    pub arch: Arch,
    pub epochs: usize,
    pub label_smoothing: f64,
}

impl SourceRecipe {
    /// A recipe named `name`.
    pub fn new(name: &str, arch: Arch, epochs: usize, label_smoothing: f64) -> Self {
        Self { name: name.into(), arch, epochs, label_smoothing }
    }
}

/// How to run the study.
///
/// Defaults from Kornblith et al.: the L2 penalty chosen on a 20 % validation split of the
/// target training set, then refitted on all of it; L-BFGS. Deviations: the penalty grid has
/// 9 values from 1e-6 to 1e2 (the paper searched a wider range with more points, which costs
/// time and changes little on small data); features are standardised before the fit (the
/// penalty then means the same across models whose feature scales differ); the source models
/// are small MLPs on digits-sized data instead of ImageNet networks.
#[derive(Debug, Clone)]
pub struct LinearProbeConfig {
    /// Source models to train and compare.
    pub recipes: Vec<SourceRecipe>,
    /// Source training (epochs and label smoothing come from each recipe).
    pub pretrain: TrainConfig,
    /// L2 penalties to try, on the mean loss.
    pub l2_grid: Vec<f64>,
    /// Fraction of the target training set held out to choose the penalty.
    pub val_fraction: f64,
    pub lbfgs: LbfgsOptions,
    /// Fine-tuning protocol (all layers, new head); `None` skips it.
    pub finetune: Option<TrainConfig>,
    pub seed: u64,
    pub progress: ProgressMode,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

/// `n` values spaced evenly in log10 from `lo` to `hi`.
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    (0..n).map(|i| 10f64.powf(lo.log10() + (hi.log10() - lo.log10()) * i as f64 / (n - 1) as f64)).collect()
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        let mlp = |w: usize| Arch::Mlp { hidden: vec![w, w] };
        let recipes = vec![
            SourceRecipe::new("w16-e1", mlp(16), 1, 0.0),
            SourceRecipe::new("w16-e4", mlp(16), 4, 0.0),
            SourceRecipe::new("w32-e2", mlp(32), 2, 0.0),
            SourceRecipe::new("w64-e3", mlp(64), 3, 0.0),
            SourceRecipe::new("w128", mlp(128), 10, 0.0),
            SourceRecipe::new("w128-ls.1", mlp(128), 10, 0.1),
            SourceRecipe::new("w128-ls.3", mlp(128), 10, 0.3),
        ];
        let sgd = |epochs: usize| TrainConfig {
            epochs,
            batch_size: 64,
            optimizer: OptimizerConfig::Sgd { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
            schedule: LrSchedule::Constant { lr: 0.02 },
            progress: ProgressMode::Hidden,
            ..TrainConfig::default()
        };
        Self {
            device: Device::Cpu,
            recipes,
            pretrain: sgd(10),
            l2_grid: log_grid(1e-6, 1e2, 9),
            val_fraction: 0.2,
            lbfgs: LbfgsOptions::default(),
            finetune: Some(TrainConfig { schedule: LrSchedule::Constant { lr: 0.05 }, ..sgd(10) }),
            seed: 0,
            progress: ProgressMode::Bar,
        }
    }
}

impl LinearProbeConfig {
    fn validate(&self) -> Result<()> {
        if self.recipes.is_empty() {
            return Err(Error::invalid("source recipes", "give at least one source model to train"));
        }
        if self.l2_grid.is_empty() || self.l2_grid.iter().any(|l| !(*l >= 0.0 && l.is_finite())) {
            return Err(Error::invalid("L2 grid", format!("{:?}; give at least one finite penalty >= 0", self.l2_grid)));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::invalid("validation fraction", format!("{}; it must be in (0, 1)", self.val_fraction)));
        }
        if let Some(r) = self.recipes.iter().find(|r| r.epochs == 0 || !(0.0..1.0).contains(&r.label_smoothing)) {
            return Err(Error::invalid("source recipe", format!("{:?}: epochs must be >= 1 and label smoothing in [0, 1)", r.name)));
        }
        Ok(())
    }
}

/// The probe of one feature set: penalty chosen on the validation split, then refitted.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeFit {
    pub l2: f64,
    /// Validation accuracy of each penalty of the grid.
    pub validation: Vec<(f64, f64)>,
    pub model: LogisticRegression,
}

/// Choose the L2 penalty on a validation split of (`train_x`, `train_y`) and refit on all of
/// it (Kornblith et al.'s protocol). Ties go to the larger penalty.
pub fn probe(train_x: &[f32], dim: usize, train_y: &[u32], classes: usize, grid: &[f64], val_fraction: f64, opts: &LbfgsOptions, seed: u64) -> Result<ProbeFit> {
    let n = train_y.len();
    let (val_idx, fit_idx) = stratified_split(train_y, classes, val_fraction, seed);
    if val_idx.is_empty() || fit_idx.is_empty() {
        return Err(Error::invalid("linear probe", format!("{n} training samples are too few to hold out a validation split")));
    }
    let rows = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (idx.iter().flat_map(|&i| train_x[i * dim..(i + 1) * dim].to_vec()).collect(), idx.iter().map(|&i| train_y[i]).collect())
    };
    let (fx, fy) = rows(&fit_idx);
    let (vx, vy) = rows(&val_idx);
    let mut validation = Vec::new();
    for &l2 in grid {
        let m = LogisticRegression::fit(&fx, dim, &fy, classes, l2, opts)?;
        validation.push((l2, m.accuracy(&vx, &vy)));
    }
    let best = validation.iter().fold(validation[0], |b, v| if v.1 > b.1 || (v.1 == b.1 && v.0 > b.0) { *v } else { b });
    let model = LogisticRegression::fit(train_x, dim, train_y, classes, best.0, opts)?;
    Ok(ProbeFit { l2: best.0, validation, model })
}

fn stratified_split(labels: &[u32], classes: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = crate::rng::stream(seed, "linear_probe.val");
    let (mut val, mut fit) = (Vec::new(), Vec::new());
    for c in 0..classes {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] as usize == c).collect();
        let order = crate::rng::permutation(&mut rng, members.len());
        let take = (fraction * members.len() as f64).round() as usize;
        for (j, &o) in order.iter().enumerate() {
            if j < take { val.push(members[o]) } else { fit.push(members[o]) }
        }
    }
    val.sort_unstable();
    fit.sort_unstable();
    (val, fit)
}

/// One source model's row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub name: String,
    pub label_smoothing: f64,
    pub source_accuracy: f64,
    /// Linear-probe accuracy on the target test set.
    pub probe_accuracy: f64,
    /// The penalty chosen on the validation split.
    pub l2: f64,
    /// Fine-tuning accuracy on the target test set, when fine-tuning was run.
    pub finetune_accuracy: Option<f64>,
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeResult {
    pub rows: Vec<ProbeRow>,
    /// Pearson r between source and probe accuracy, both in log-odds.
    pub probe_r: Option<f64>,
    /// Pearson r between source and fine-tuning accuracy, both in log-odds.
    pub finetune_r: Option<f64>,
    /// Test-set sizes (source, target): accuracies are clamped to [0.5/n, 1 - 0.5/n] before
    /// taking log-odds, so a perfect score stays finite.
    pub test_sizes: (usize, usize),
}

/// log(p / (1 - p)) with p clamped half a sample away from 0 and 1.
pub fn log_odds(p: f64, n: usize) -> f64 {
    let eps = 0.5 / n.max(1) as f64;
    let p = p.clamp(eps, 1.0 - eps);
    (p / (1.0 - p)).ln()
}

impl LinearProbeResult {
    fn new(rows: Vec<ProbeRow>, test_sizes: (usize, usize)) -> Self {
        let mut result = LinearProbeResult { rows, probe_r: None, finetune_r: None, test_sizes };
        result.probe_r = fit_line(&result.points(false)).map(|f| f.2);
        result.finetune_r = fit_line(&result.points(true)).map(|f| f.2);
        result
    }

    fn points(&self, finetune: bool) -> Vec<(f64, f64)> {
        let (ns, nt) = self.test_sizes;
        self.rows
            .iter()
            .filter_map(|r| {
                let t = if finetune { r.finetune_accuracy? } else { r.probe_accuracy };
                Some((log_odds(r.source_accuracy, ns), log_odds(t, nt)))
            })
            .collect()
    }
}

impl Outcome for LinearProbeResult {
    /// One row per source model: model, label_smoothing, source_accuracy, probe_accuracy, l2,
    /// finetune_accuracy, and the log-odds of the three accuracies.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let r = &self.rows;
        let (ns, nt) = self.test_sizes;
        Ok(DataFrame::new_infer_height(vec![
            Series::new("model".into(), r.iter().map(|x| x.name.clone()).collect::<Vec<_>>()).into(),
            Series::new("label_smoothing".into(), r.iter().map(|x| x.label_smoothing).collect::<Vec<_>>()).into(),
            Series::new("source_accuracy".into(), r.iter().map(|x| x.source_accuracy).collect::<Vec<_>>()).into(),
            Series::new("probe_accuracy".into(), r.iter().map(|x| x.probe_accuracy).collect::<Vec<_>>()).into(),
            Series::new("l2".into(), r.iter().map(|x| x.l2).collect::<Vec<_>>()).into(),
            Series::new("finetune_accuracy".into(), r.iter().map(|x| x.finetune_accuracy).collect::<Vec<_>>()).into(),
            Series::new("source_log_odds".into(), r.iter().map(|x| log_odds(x.source_accuracy, ns)).collect::<Vec<_>>()).into(),
            Series::new("probe_log_odds".into(), r.iter().map(|x| log_odds(x.probe_accuracy, nt)).collect::<Vec<_>>()).into(),
            Series::new("finetune_log_odds".into(), r.iter().map(|x| x.finetune_accuracy.map(|a| log_odds(a, nt))).collect::<Vec<_>>()).into(),
        ])?)
    }

    /// Kornblith et al.'s figure 1: transfer against source accuracy in log-odds, one point per
    /// model, with the least-squares line and r.
    fn figure(&self) -> Result<Figure> {
        let chart = ScatterChart::new(
            "Linear probe: transfer vs source accuracy",
            "source accuracy (log-odds)",
            "linear-probe transfer accuracy (log-odds)",
            self.points(false),
        )
        .labels(self.rows.iter().map(|r| r.name.clone()).collect());
        Ok(Figure::new(Chart::Scatter(chart)).with_size(900, 550))
    }

    fn summary(&self) -> String {
        let r = |x: Option<f64>| x.map_or("undefined".to_string(), |v| format!("{v:.2}"));
        let best = self.rows.iter().max_by(|a, b| a.probe_accuracy.total_cmp(&b.probe_accuracy)).map_or(String::new(), |b| {
            format!("; the best probe, {} ({:.1} % source accuracy), reaches {:.1} %", b.name, 100.0 * b.source_accuracy, 100.0 * b.probe_accuracy)
        });
        let finetune = self.finetune_r.map_or(String::new(), |v| format!(" (fine-tuning: r = {v:.2})"));
        format!(
            "Linear-probe accuracy against source accuracy: Pearson r = {} over {} source models (log-odds){}{}.",
            r(self.probe_r),
            self.rows.len(),
            finetune,
            best
        )
    }
}

/// Train every recipe's source model on `source_train`, measure it on `source_test`, and
/// transfer it to the target task by a linear probe and (if configured) fine-tuning.
///
/// ```
/// use transferlab::analysis::linear_probe::{run, LinearProbeConfig, SourceRecipe};
/// use transferlab::models::Arch;
/// let d = transferlab::data::digits()?;
/// let (s_train, s_test) = d.class_subset(&[0, 1, 2], true)?.split(0.7, 0, true)?;
/// let (t_train, t_test) = d.class_subset(&[7, 8], true)?.split(0.5, 0, true)?;
/// let mut cfg = LinearProbeConfig::default();
/// cfg.recipes = vec![SourceRecipe::new("a", Arch::Mlp { hidden: vec![8] }, 1, 0.0),
///                    SourceRecipe::new("b", Arch::Mlp { hidden: vec![16] }, 2, 0.0)];
/// cfg.l2_grid = vec![1e-3, 1e-1];
/// cfg.finetune = None;
/// cfg.progress = transferlab::train::ProgressMode::Hidden;
/// let result = run(&s_train, &s_test, &t_train, &t_test, &cfg)?;
/// assert_eq!(result.rows.len(), 2);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(source_train: &Dataset, source_test: &Dataset, target_train: &Dataset, target_test: &Dataset, cfg: &LinearProbeConfig) -> Result<LinearProbeResult> {
    cfg.validate()?;
    if source_train.shape != target_train.shape || target_train.shape != target_test.shape || source_test.shape != source_train.shape {
        return Err(Error::shape("linear probe", "source and target images must have one shape; resize first"));
    }
    let device = cfg.device.clone();
    let progress = Progress::new("linear probes", cfg.recipes.len() as u64, cfg.progress);
    let mut rows = Vec::new();
    for (m, recipe) in cfg.recipes.iter().enumerate() {
        let spec = ModelSpec::new(recipe.arch.clone(), source_train.shape, source_train.num_classes())?;
        let seed = cfg.seed.wrapping_add(m as u64);
        let mut net = Network::new(&spec, seed, &device)?;
        let tc = TrainConfig { epochs: recipe.epochs, label_smoothing: recipe.label_smoothing, seed, ..cfg.pretrain.clone() };
        train(&mut net, source_train, None, &tc)?;
        let source_accuracy = accuracy(&net, source_test)?;
        let row = transfer(&recipe.name, recipe.label_smoothing, source_accuracy, net, target_train, target_test, cfg, seed)?;
        progress.inc(1);
        progress.message(format!("{}: source {:.1}%, probe {:.1}%", row.name, 100.0 * source_accuracy, 100.0 * row.probe_accuracy));
        rows.push(row);
    }
    progress.finish();
    Ok(LinearProbeResult::new(rows, (source_test.len(), target_test.len())))
}

/// Transfer one source network to the target task: the linear probe on its penultimate
/// features, then (if configured) fine-tuning with a new head.
#[allow(clippy::too_many_arguments)]
fn transfer(
    name: &str,
    label_smoothing: f64,
    source_accuracy: f64,
    mut net: Network,
    target_train: &Dataset,
    target_test: &Dataset,
    cfg: &LinearProbeConfig,
    seed: u64,
) -> Result<ProbeRow> {
    let k = target_train.num_classes();
    let dim = net.feature_dim();
    let ftr: Vec<f32> = features(&net, target_train)?.flatten_all()?.to_vec1()?;
    let fte: Vec<f32> = features(&net, target_test)?.flatten_all()?.to_vec1()?;
    let fit = probe(&ftr, dim, &target_train.labels, k, &cfg.l2_grid, cfg.val_fraction, &cfg.lbfgs, cfg.seed)?;
    let probe_accuracy = fit.model.accuracy(&fte, &target_test.labels);
    let finetune_accuracy = match &cfg.finetune {
        Some(ft) => {
            net.unfreeze_all();
            net.replace_head(k, seed)?;
            train(&mut net, target_train, None, &TrainConfig { seed, ..ft.clone() })?;
            Some(accuracy(&net, target_test)?)
        }
        None => None,
    };
    Ok(ProbeRow { name: name.into(), label_smoothing, source_accuracy, probe_accuracy, l2: fit.l2, finetune_accuracy })
}

/// A source model trained elsewhere (e.g. downloaded from the hub), with its accuracy on its
/// own source task as published for it.
#[derive(Debug)]
pub struct PretrainedSource {
    pub name: String,
    pub network: Network,
    /// Accuracy on the source task's test set (e.g. ImageNet top-1 from the model card).
    pub source_accuracy: f64,
    /// How many test images that accuracy was measured on (ImageNet validation: 50,000); it
    /// sets how far from 0 and 1 the log-odds are clamped.
    pub source_test_size: usize,
}

/// Hub source models whose ImageNet-1k top-1 accuracy torchvision publishes (single 224 px
/// centre crop, 50,000 validation images): ResNet-18 and ResNet-50 (IMAGENET1K_V1) and
/// ResNet-50 (IMAGENET1K_V2), as timm hosts them. Two architectures and two recipes: the
/// spread of source accuracy Kornblith et al. correlate with transfer.
pub const HUB_SOURCES: [(&str, f64); 3] =
    [("timm/resnet18.tv_in1k", 0.69758), ("timm/resnet50.tv_in1k", 0.76130), ("timm/resnet50.tv2_in1k", 0.80858)];

/// Whether `hub` answers (or has the cache) for every model of [`HUB_SOURCES`] and for
/// CIFAR-10, the target they are probed on in notebook 18.
pub fn hub_sources_available(hub: &crate::hub::Hub) -> bool {
    use crate::hub::Repo;
    let models = HUB_SOURCES.iter().map(|(id, _)| Repo::model(*id));
    hub.answers(&models.chain([Repo::dataset(crate::hub::CIFAR10)]).collect::<Vec<_>>())
}

/// Download (or read from the cache) and load every model of [`HUB_SOURCES`] from `hub` onto
/// `device` (where [`run_pretrained`] then probes and fine-tunes them).
pub fn load_hub_sources(hub: &crate::hub::Hub, registry: &crate::hub::ModelRegistry, device: &Device) -> Result<Vec<PretrainedSource>> {
    HUB_SOURCES
        .iter()
        .map(|&(id, top1)| {
            Ok(PretrainedSource {
                name: id.into(),
                network: registry.load_network(hub, id, device)?,
                source_accuracy: top1,
                source_test_size: 50_000,
            })
        })
        .collect()
}

/// [`run`] for source models trained elsewhere: transfer each of `sources` to the target task
/// by the linear probe and (if `cfg.finetune` is set) fine-tuning, and correlate with the
/// given source accuracies. `cfg.recipes` and `cfg.pretrain` are not used. The target
/// images must already have the networks' input shape (e.g. through the hub entry's
/// [`Preprocess`](crate::hub::Preprocess)).
///
/// ```
/// use transferlab::analysis::linear_probe::{run_pretrained, LinearProbeConfig, PretrainedSource};
/// use transferlab::models::{ModelSpec, Network};
/// let d = transferlab::data::digits()?;
/// let (t_train, t_test) = d.class_subset(&[7, 8], true)?.split(0.5, 0, true)?;
/// let spec = ModelSpec::named("mlp", d.shape, 10)?;
/// let sources = vec![
///     PretrainedSource { name: "a".into(), network: Network::new(&spec, 0, &candle_core::Device::Cpu)?, source_accuracy: 0.7, source_test_size: 100 },
///     PretrainedSource { name: "b".into(), network: Network::new(&spec, 1, &candle_core::Device::Cpu)?, source_accuracy: 0.8, source_test_size: 100 },
/// ];
/// let mut cfg = LinearProbeConfig::default();
/// cfg.l2_grid = vec![1e-2];
/// cfg.finetune = None;
/// cfg.progress = transferlab::train::ProgressMode::Hidden;
/// let result = run_pretrained(sources, &t_train, &t_test, &cfg)?;
/// assert_eq!(result.rows[1].source_accuracy, 0.8);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run_pretrained(sources: Vec<PretrainedSource>, target_train: &Dataset, target_test: &Dataset, cfg: &LinearProbeConfig) -> Result<LinearProbeResult> {
    if sources.is_empty() {
        return Err(Error::invalid("source models", "give at least one pretrained source model"));
    }
    if target_train.shape != target_test.shape {
        return Err(Error::shape("linear probe", "target training and test images must have one shape"));
    }
    if let Some(s) = sources.iter().find(|s| s.network.spec().input != target_train.shape) {
        return Err(Error::shape(
            "linear probe",
            format!("{} takes {:?} images but the target images are {:?}; preprocess them with the model's Preprocess first", s.name, s.network.spec().input, target_train.shape),
        ));
    }
    if let Some(s) = sources.iter().find(|s| !(0.0..=1.0).contains(&s.source_accuracy) || s.source_test_size == 0) {
        return Err(Error::invalid("source accuracy", format!("{}: {} on {} images; give an accuracy in [0, 1] measured on at least one image", s.name, s.source_accuracy, s.source_test_size)));
    }
    let source_test_size = sources.iter().map(|s| s.source_test_size).min().unwrap_or(1);
    let progress = Progress::new("linear probes", sources.len() as u64, cfg.progress);
    let mut rows = Vec::new();
    for (m, s) in sources.into_iter().enumerate() {
        let row = transfer(&s.name, 0.0, s.source_accuracy, s.network, target_train, target_test, cfg, cfg.seed.wrapping_add(m as u64))?;
        progress.inc(1);
        progress.message(format!("{}: probe {:.1}%", row.name, 100.0 * row.probe_accuracy));
        rows.push(row);
    }
    progress.finish();
    Ok(LinearProbeResult::new(rows, (source_test_size, target_test.len())))
}
