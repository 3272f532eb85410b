//! Spurious patterns (Plumb, Ribeiro, Talwalkar, TMLR 2022, "Finding and fixing spurious
//! patterns with explanations"): when a spurious object S co-occurs with the main object M,
//! masking S out of an image changes the model's prediction (the counterfactual flip score),
//! and the model is more accurate on images whose S-status matches the training correlation.
//! SPIRE's fix is counterfactual augmentation: add copies of training images with S masked
//! out, so that in the augmented data S no longer predicts M (P(S | M) is balanced).
//!
//! Deviation: the paper edits COCO images with object masks and fine-tunes a pretrained
//! multi-label model; here S is a generated second object ([`SpuriousKind::Object`]), it is
//! removed by filling its bounding box with grey, and a small model is trained from scratch
//! before and after augmentation (same initialisation).
//!
//! [`SpuriousKind::Object`]: crate::data::SpuriousKind::Object

use crate::data::{object_box, Dataset, SyntheticConfig, GROUP_SPURIOUS};
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{BarChart, Chart, Figure, Outcome};
use crate::rng::{self, permutation};
use crate::train::{self, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};

/// A rectangle of pixels: the spurious object's bounding box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The bounding box of the generated second object of every sample that carries it (`None`
/// for the others), for a dataset made by `data::generate(cfg)` or selected from one.
pub fn synthetic_object_regions(ds: &Dataset, cfg: &SyntheticConfig) -> Vec<Option<Region>> {
    let groups = ds.attributes.group.clone().unwrap_or_else(|| vec![0; ds.len()]);
    (0..ds.len())
        .map(|i| {
            (groups[i] & GROUP_SPURIOUS != 0).then(|| {
                let original = ds.attributes.source_index.as_ref().map_or(i, |s| s[i]);
                let (x, y, side) = object_box(cfg, original);
                Region { x, y, width: side, height: side }
            })
        })
        .collect()
}

/// A copy of the samples at `indices` with their region (if any) filled with `value` in every
/// channel: the counterfactual "S removed".
///
/// ```
/// use transferlab::analysis::spurious_patterns::{mask_regions, Region};
/// use transferlab::data::Dataset;
/// let ds = Dataset::new(vec![1.0; 2 * 4 * 4], (1, 4, 4), vec![0, 1], Dataset::numbered_classes(2))?;
/// let regions = [Some(Region { x: 0, y: 0, width: 2, height: 2 }), None];
/// let masked = mask_regions(&ds, &regions, &[0, 1], 0.5)?;
/// assert_eq!(masked.image(0).iter().filter(|&&v| v == 0.5).count(), 4);
/// assert!(masked.image(1).iter().all(|&v| v == 1.0));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn mask_regions(ds: &Dataset, regions: &[Option<Region>], indices: &[usize], value: f32) -> Result<Dataset> {
    let mut out = ds.select(indices)?;
    let (c, h, w) = ds.shape;
    for (j, &i) in indices.iter().enumerate() {
        if let Some(r) = regions[i] {
            if r.x + r.width > w || r.y + r.height > h {
                return Err(Error::invalid("spurious region", format!("{r:?} of sample {i} lies outside the {w}x{h} image")));
            }
            let img = out.image_mut(j);
            for ch in 0..c {
                for y in r.y..r.y + r.height {
                    img[ch * h * w + y * w + r.x..ch * h * w + y * w + r.x + r.width].fill(value);
                }
            }
        }
    }
    Ok(out)
}

/// Configuration of [`run`]. Defaults follow SPIRE: augment until P(S | M) = 0.5 in the
/// training data, and add an S-removed copy of every image that has S without M (so removing
/// S is seen not to change a label either way); masks are mid-grey.
#[derive(Debug, Clone)]
pub struct SpuriousPatternsConfig {
    /// The model trained and masked (default: the MLP, 2 x 256 hidden units).
    pub arch: Arch,
    /// How the model is trained, before and after augmentation.
    pub train: TrainConfig,
    /// Seeds the model's initialisation (the same for both models).
    pub model_seed: u64,
    /// The main object's class M.
    pub main_class: u32,
    /// P(S | M) in the augmented training data.
    pub target_rate: f64,
    /// Grey level that replaces the spurious object.
    pub mask_value: f32,
    /// Seeds which images are augmented.
    pub seed: u64,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for SpuriousPatternsConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Mlp { hidden: vec![256, 256] },
            train: TrainConfig::default(),
            model_seed: 0,
            main_class: 0,
            target_rate: 0.5,
            mask_value: 0.5,
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// What one model does with and without the spurious object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpuriousMetrics {
    /// Fraction of test images of M with S whose prediction changes when S is masked.
    pub flip_main: f64,
    /// Fraction of test images of other classes with S whose prediction changes when S is
    /// masked.
    pub flip_other: f64,
    /// The same as `flip_main` with an equal grey box in the opposite corner instead: how
    /// much of the flip is the grey box itself.
    pub flip_main_control: f64,
    /// Recall of M on its test images with and without S.
    pub main_with: f64,
    pub main_without: f64,
    /// Accuracy on other classes' test images with and without S.
    pub other_with: f64,
    pub other_without: f64,
    /// Test accuracy overall.
    pub accuracy: f64,
}

impl SpuriousMetrics {
    /// Recall of M with S minus without: positive when the model leans on S.
    pub fn main_gap(&self) -> f64 {
        self.main_with - self.main_without
    }
    /// Accuracy on other classes without S minus with S: positive when S pulls them to M.
    pub fn other_gap(&self) -> f64 {
        self.other_without - self.other_with
    }
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SpuriousPatternsResult {
    pub before: SpuriousMetrics,
    pub after: SpuriousMetrics,
    /// P(S | M) in the training data before and after augmentation.
    pub rate_before: f64,
    pub rate_after: f64,
    /// Counterfactual copies added: M images with S removed, other images with S removed.
    pub added_main: usize,
    pub added_other: usize,
}

fn mean_bool(v: impl Iterator<Item = bool>) -> f64 {
    let (mut a, mut n) = (0usize, 0usize);
    for b in v {
        a += b as usize;
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        a as f64 / n as f64
    }
}

fn measure(net: &Network, test: &Dataset, regions: &[Option<Region>], cfg: &SpuriousPatternsConfig) -> Result<SpuriousMetrics> {
    let m = cfg.main_class;
    let pred = train::predict(net, test)?;
    let with: Vec<usize> = (0..test.len()).filter(|&i| regions[i].is_some()).collect();
    let masked = train::predict(net, &mask_regions(test, regions, &with, cfg.mask_value)?)?;
    let (_, h, w) = test.shape;
    let opposite: Vec<Option<Region>> = regions
        .iter()
        .map(|r| r.map(|r| Region { x: w - r.x - r.width, y: h - r.y - r.height, ..r }))
        .collect();
    let control = train::predict(net, &mask_regions(test, &opposite, &with, cfg.mask_value)?)?;
    let flip = |main: bool, after: &[u32]| mean_bool(with.iter().enumerate().filter(|(_, &i)| (test.labels[i] == m) == main).map(|(j, &i)| after[j] != pred[i]));
    let acc = |main: bool, has: bool| {
        mean_bool((0..test.len()).filter(|&i| (test.labels[i] == m) == main && regions[i].is_some() == has).map(|i| pred[i] == test.labels[i]))
    };
    Ok(SpuriousMetrics {
        flip_main: flip(true, &masked),
        flip_other: flip(false, &masked),
        flip_main_control: flip(true, &control),
        main_with: acc(true, true),
        main_without: acc(true, false),
        other_with: acc(false, true),
        other_without: acc(false, false),
        accuracy: train::evaluate::fraction_equal(&pred, &test.labels),
    })
}

/// Train on `train_set`, measure flip scores and accuracy gaps on `test`, augment the training
/// data with S-removed copies (SPIRE), retrain from the same initialisation and measure again.
/// `*_regions` give each sample's spurious-object box (`None` where there is none), e.g. from
/// [`synthetic_object_regions`].
pub fn run(
    train_set: &Dataset,
    train_regions: &[Option<Region>],
    test: &Dataset,
    test_regions: &[Option<Region>],
    cfg: &SpuriousPatternsConfig,
) -> Result<SpuriousPatternsResult> {
    if train_regions.len() != train_set.len() || test_regions.len() != test.len() {
        return Err(Error::invalid("spurious regions", "give exactly one (optional) region per sample of each dataset"));
    }
    if cfg.main_class as usize >= train_set.num_classes() {
        return Err(Error::invalid("main_class", format!("{} is out of range for {} classes", cfg.main_class, train_set.num_classes())));
    }
    if !(cfg.target_rate > 0.0 && cfg.target_rate < 1.0) {
        return Err(Error::invalid("target_rate", format!("{}; P(S | M) after augmentation must be in (0, 1)", cfg.target_rate)));
    }
    let m = cfg.main_class;
    let main_with: Vec<usize> = (0..train_set.len()).filter(|&i| train_set.labels[i] == m && train_regions[i].is_some()).collect();
    let main_n = train_set.labels.iter().filter(|&&y| y == m).count();
    if main_with.is_empty() || !test_regions.iter().any(|r| r.is_some()) {
        return Err(Error::invalid("spurious data", "no training image of the main class (or no test image) carries the spurious object"));
    }
    let spec = ModelSpec::new(cfg.arch.clone(), train_set.shape, train_set.num_classes())?;
    let mut net = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    train::train(&mut net, train_set, None, &cfg.train)?;
    let before = measure(&net, test, test_regions, cfg)?;

    // SPIRE: a copies with S of b images of M; k S-removed copies give a / (b + k) = target.
    let a = main_with.len() as f64;
    let k = ((a / cfg.target_rate - main_n as f64).round().max(0.0) as usize).min(main_with.len());
    let mut rng = rng::stream(cfg.seed, "analysis/spurious_patterns/augment");
    let mut picked: Vec<usize> = permutation(&mut rng, main_with.len()).into_iter().take(k).map(|j| main_with[j]).collect();
    picked.sort_unstable();
    let other_with: Vec<usize> = (0..train_set.len()).filter(|&i| train_set.labels[i] != m && train_regions[i].is_some()).collect();
    let mut copies = picked.clone();
    copies.extend(&other_with);
    let augmented = train_set.concat(&mask_regions(train_set, train_regions, &copies, cfg.mask_value)?)?;
    let mut fixed = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    train::train(&mut fixed, &augmented, None, &cfg.train)?;
    let after = measure(&fixed, test, test_regions, cfg)?;
    Ok(SpuriousPatternsResult {
        before,
        after,
        rate_before: a / main_n as f64,
        rate_after: a / (main_n + k) as f64,
        added_main: k,
        added_other: other_with.len(),
    })
}

impl Outcome for SpuriousPatternsResult {
    /// Two rows (before, after SPIRE augmentation): flip scores, the control flip, recall of
    /// M with and without S, accuracy of other classes with and without S, both gaps, overall
    /// accuracy and the training P(S | M).
    fn to_dataframe(&self) -> Result<DataFrame> {
        let rows = [("before", &self.before, self.rate_before), ("after SPIRE", &self.after, self.rate_after)];
        let col = |f: &dyn Fn(&SpuriousMetrics) -> f64| rows.iter().map(|(_, m, _)| f(m)).collect::<Vec<f64>>();
        let cols = vec![
            Series::new("model".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()).into(),
            Series::new("train_p_s_given_m".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()).into(),
            Series::new("flip_main".into(), col(&|m| m.flip_main)).into(),
            Series::new("flip_other".into(), col(&|m| m.flip_other)).into(),
            Series::new("flip_main_control".into(), col(&|m| m.flip_main_control)).into(),
            Series::new("main_with_s".into(), col(&|m| m.main_with)).into(),
            Series::new("main_without_s".into(), col(&|m| m.main_without)).into(),
            Series::new("main_gap".into(), col(&|m| m.main_gap())).into(),
            Series::new("other_with_s".into(), col(&|m| m.other_with)).into(),
            Series::new("other_without_s".into(), col(&|m| m.other_without)).into(),
            Series::new("other_gap".into(), col(&|m| m.other_gap())).into(),
            Series::new("accuracy".into(), col(&|m| m.accuracy)).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// Flip scores and accuracy gaps (in %) before and after augmentation.
    fn figure(&self) -> Result<Figure> {
        let cats = vec!["flip (M with S)".into(), "flip (other with S)".into(), "gap on M".into(), "gap on others".into()];
        let vals = |m: &SpuriousMetrics| vec![100.0 * m.flip_main, 100.0 * m.flip_other, 100.0 * m.main_gap().abs(), 100.0 * m.other_gap().abs()];
        let chart = BarChart::new("Spurious object: flip score and accuracy gap", "%", cats)
            .series("before", vals(&self.before))
            .series("after SPIRE augmentation", vals(&self.after));
        Ok(Figure::new(Chart::Bars(chart)))
    }

    fn summary(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        format!(
            "Spurious patterns: masking the spurious object flipped {:.1} % of predictions on main-class images carrying it ({:.1} % for an equal grey box elsewhere), and main-class recall was {:+.1} points higher with the object than without. After SPIRE's counterfactual augmentation (P(S | M) {:.1} % to {:.1} %, {} + {} masked copies) the flip rate is {:.1} % and the recall gap {:+.1} points, at {:.1} % test accuracy (before {:.1} %).",
            100.0 * b.flip_main,
            100.0 * b.flip_main_control,
            100.0 * b.main_gap(),
            100.0 * self.rate_before,
            100.0 * self.rate_after,
            self.added_main,
            self.added_other,
            100.0 * a.flip_main,
            100.0 * a.main_gap(),
            100.0 * a.accuracy,
            100.0 * b.accuracy
        )
    }
}
