//! Failure directions (Jain, Chen, Hamilton, Madry, Bansal, ICLR 2023, "Distilling model
//! failures as directions in latent space"): per class, a linear SVM on normalised embeddings
//! predicts whether the model gets an image right. The SVM's normal is the class's failure
//! direction; its decision value ranks images from easy to hard. Images that score lowest
//! concentrate the model's failure modes (here: an under-represented subgroup), and adding
//! the lowest-scored unlabeled images to training helps that subgroup more than adding
//! random ones.
//!
//! Embeddings: the paper uses CLIP image embeddings. CLIP is not available in transferlab
//! yet, so this uses the penultimate features of the model under study (the paper's
//! "model's own latent space" ablation).

use super::svm::{auc, centre_and_normalise, column_means, select_c, LinearSvm, SvmConfig};
use crate::data::{Dataset, GROUP_SUBGROUP};
use crate::error::{Error, Result};
use crate::models::{Arch, ModelSpec, Network};
use crate::report::{BarChart, Chart, Figure, Outcome};
use crate::rng::{self, permutation};
use crate::train::{self, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};

/// Configuration of [`run`].
///
/// Defaults follow the paper: balanced class weights, C chosen from a log grid by
/// cross-validation on the validation split, embeddings centred and L2-normalised. The
/// enrichment is measured over the lowest-scored 10 % of each class's test images and the
/// intervention adds `budget_per_class` pool images per class (the paper adds a fixed number
/// per class; the miniature's budget is smaller to fit the notebook's time). Deviation: the
/// SVMs are fitted on our model's own penultimate features instead of CLIP embeddings. As in
/// the paper's intervention, the pool's class labels are known (each class's SVM ranks that
/// class's pool images) and its subgroup labels are not.
#[derive(Debug, Clone)]
pub struct FailureDirectionsConfig {
    /// The model trained on the data and probed (default: the MLP, 2 x 256 hidden units).
    pub arch: Arch,
    /// How the model is trained (and retrained in the intervention).
    pub train: TrainConfig,
    /// Seeds the model's initialisation (the same for every retraining).
    pub model_seed: u64,
    /// Candidate C values for the SVMs.
    pub c_grid: Vec<f64>,
    /// Cross-validation folds for choosing C.
    pub folds: usize,
    /// Fraction of each class's test images counted as "lowest-scored" for the enrichment.
    pub bottom_fraction: f64,
    /// Pool images added per class in the intervention.
    pub budget_per_class: usize,
    /// `attributes.group` bits that mark the subgroup of interest.
    pub group_mask: u32,
    /// Seeds the SVMs' folds and the random baseline.
    pub seed: u64,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for FailureDirectionsConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Mlp { hidden: vec![256, 256] },
            train: TrainConfig::default(),
            model_seed: 0,
            c_grid: vec![0.01, 0.1, 1.0, 10.0],
            folds: 3,
            bottom_fraction: 0.1,
            budget_per_class: 20,
            group_mask: GROUP_SUBGROUP,
            seed: 0,
            device: Device::Cpu,
        }
    }
}

impl FailureDirectionsConfig {
    fn validate(&self) -> Result<()> {
        if !(self.bottom_fraction > 0.0 && self.bottom_fraction <= 1.0) {
            return Err(Error::invalid("bottom_fraction", format!("{}; it must be in (0, 1]", self.bottom_fraction)));
        }
        if self.c_grid.is_empty() || self.c_grid.iter().any(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(Error::invalid("c_grid", "give at least one positive, finite C (e.g. [0.01, 0.1, 1, 10])"));
        }
        if self.folds < 2 {
            return Err(Error::invalid("folds", format!("{}; cross-validation needs at least 2", self.folds)));
        }
        if self.group_mask == 0 {
            return Err(Error::invalid("group_mask", "0 selects no subgroup; use e.g. data::GROUP_SUBGROUP"));
        }
        Ok(())
    }
}

/// One class's SVM.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassDirection {
    pub class: u32,
    pub name: String,
    /// Validation images of the class, and how many the model got wrong.
    pub n_val: usize,
    pub n_val_errors: usize,
    /// The chosen C and its cross-validated balanced accuracy; `None` when the class had too
    /// few errors (or too few correct images) to fit an SVM.
    pub c: Option<f64>,
    pub cv_balanced_accuracy: Option<f64>,
    /// AUC of the decision value for telling the model's test errors from its successes.
    pub test_error_auc: Option<f64>,
    /// The unit failure direction (the SVM normal), empty when no SVM was fitted.
    pub direction: Vec<f64>,
}

/// Accuracy after one intervention.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervention {
    /// "baseline", "random" or "lowest-svm".
    pub strategy: String,
    /// Pool images added, and how many of them are in the subgroup.
    pub added: usize,
    pub added_subgroup: usize,
    /// Test accuracy overall and on the subgroup.
    pub accuracy: f64,
    pub subgroup_accuracy: f64,
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureDirectionsResult {
    pub classes: Vec<ClassDirection>,
    /// SVM decision value of every test image (NaN in classes without an SVM).
    pub test_scores: Vec<f64>,
    /// The fraction of each class counted as lowest-scored (from the configuration).
    pub bottom_fraction: f64,
    /// Subgroup share among the lowest-scored test images and among all test images of the
    /// classes that contain the subgroup; their ratio is the enrichment.
    pub bottom_subgroup_fraction: f64,
    pub base_subgroup_fraction: f64,
    pub enrichment: f64,
    /// AUC of the negated decision value for finding subgroup images within their classes.
    pub subgroup_auc: f64,
    pub interventions: Vec<Intervention>,
}

fn flat(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn in_group(ds: &Dataset, mask: u32) -> Vec<bool> {
    match &ds.attributes.group {
        Some(g) => g.iter().map(|&v| v & mask != 0).collect(),
        None => vec![false; ds.len()],
    }
}

fn rows(x: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect()
}

/// Train the model on `train_set`, fit the per-class failure SVMs on `val`, rank `test` and
/// measure subgroup enrichment, then retrain with `budget_per_class` pool images per class
/// chosen by lowest SVM score or at random, and compare subgroup accuracy. Every dataset
/// needs the same classes; `test` and `pool` need `attributes.group` to measure the subgroup.
///
/// ```
/// use transferlab::analysis::failure_directions::{run, FailureDirectionsConfig};
/// use transferlab::data::{generate, SyntheticConfig};
/// let plain = generate(&SyntheticConfig { num_classes: 2, samples_per_class: 4, size: 8, ..Default::default() })?;
/// // Without subgroup attributes there is nothing to measure: a clear error, before training.
/// let err = run(&plain, &plain, &plain, &plain, &FailureDirectionsConfig::default()).unwrap_err();
/// assert!(err.to_string().contains("attributes.group"));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn run(train_set: &Dataset, val: &Dataset, test: &Dataset, pool: &Dataset, cfg: &FailureDirectionsConfig) -> Result<FailureDirectionsResult> {
    cfg.validate()?;
    for (name, ds) in [("validation", val), ("test", test), ("pool", pool)] {
        if ds.class_names != train_set.class_names || ds.shape != train_set.shape {
            return Err(Error::invalid("failure directions data", format!("the {name} set's classes or image shape differ from the training set's")));
        }
    }
    if test.attributes.group.is_none() {
        return Err(Error::invalid("failure directions data", "the test set has no attributes.group, so the subgroup cannot be measured"));
    }
    let k = train_set.num_classes();
    let spec = ModelSpec::new(cfg.arch.clone(), train_set.shape, k)?;
    let mut net = Network::new(&spec, cfg.model_seed, &cfg.device)?;
    train::train(&mut net, train_set, None, &cfg.train)?;

    let dim = net.feature_dim();
    let fv = flat(&train::features(&net, val)?)?;
    let mean = column_means(&fv, dim);
    let emb = |ds: &Dataset| -> Result<Vec<f32>> { Ok(centre_and_normalise(&flat(&train::features(&net, ds)?)?, dim, &mean)) };
    let (ev, et, ep) = (centre_and_normalise(&fv, dim, &mean), emb(test)?, emb(pool)?);
    let (pv, pt) = (train::predict(&net, val)?, train::predict(&net, test)?);

    let mut classes = Vec::with_capacity(k);
    let mut svms: Vec<Option<LinearSvm>> = Vec::with_capacity(k);
    let mut test_scores = vec![f64::NAN; test.len()];
    for c in 0..k as u32 {
        let idx: Vec<usize> = (0..val.len()).filter(|&i| val.labels[i] == c).collect();
        let y: Vec<bool> = idx.iter().map(|&i| pv[i] == c).collect();
        let errors = y.iter().filter(|&&v| !v).count();
        let mut row = ClassDirection {
            class: c,
            name: train_set.class_names[c as usize].clone(),
            n_val: idx.len(),
            n_val_errors: errors,
            c: None,
            cv_balanced_accuracy: None,
            test_error_auc: None,
            direction: Vec::new(),
        };
        let svm_cfg = SvmConfig { seed: cfg.seed, ..SvmConfig::default() };
        let svm = if errors >= cfg.folds && idx.len() - errors >= cfg.folds {
            let x = rows(&ev, dim, &idx);
            let (best, scores) = select_c(&x, dim, &y, &cfg.c_grid, cfg.folds, &svm_cfg)?;
            let pos = cfg.c_grid.iter().position(|&v| v == best).unwrap_or(0);
            row.c = Some(best);
            row.cv_balanced_accuracy = Some(scores[pos]);
            Some(LinearSvm::fit(&x, dim, &y, &SvmConfig { c: best, ..svm_cfg })?)
        } else {
            None
        };
        if let Some(svm) = &svm {
            row.direction = svm.direction();
            let tidx: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] == c).collect();
            let d = svm.decision(&rows(&et, dim, &tidx), dim)?;
            for (&i, v) in tidx.iter().zip(&d) {
                test_scores[i] = *v;
            }
            let right: Vec<bool> = tidx.iter().map(|&i| pt[i] == c).collect();
            let a = auc(&d, &right);
            row.test_error_auc = a.is_finite().then_some(a);
        }
        classes.push(row);
        svms.push(svm);
    }

    // Enrichment over the classes that have both an SVM and subgroup members in the test set.
    let sub = in_group(test, cfg.group_mask);
    let (mut bottom_sub, mut bottom_n, mut all_sub, mut all_n) = (0usize, 0usize, 0usize, 0usize);
    let (mut auc_scores, mut auc_labels) = (Vec::new(), Vec::new());
    for c in 0..k as u32 {
        let mut idx: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] == c && test_scores[i].is_finite()).collect();
        if idx.is_empty() || !idx.iter().any(|&i| sub[i]) {
            continue;
        }
        idx.sort_by(|&a, &b| test_scores[a].total_cmp(&test_scores[b]));
        let m = ((cfg.bottom_fraction * idx.len() as f64).ceil() as usize).max(1);
        bottom_sub += idx[..m].iter().filter(|&&i| sub[i]).count();
        bottom_n += m;
        all_sub += idx.iter().filter(|&&i| sub[i]).count();
        all_n += idx.len();
        auc_scores.extend(idx.iter().map(|&i| -test_scores[i]));
        auc_labels.extend(idx.iter().map(|&i| sub[i]));
    }
    let frac = |a: usize, b: usize| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    let (bottom_subgroup_fraction, base_subgroup_fraction) = (frac(bottom_sub, bottom_n), frac(all_sub, all_n));

    // The intervention: the same number of pool images per class either way.
    let pool_sub = in_group(pool, cfg.group_mask);
    let mut rng = rng::stream(cfg.seed, "analysis/failure_directions/random");
    let (mut chosen_svm, mut chosen_random) = (Vec::new(), Vec::new());
    for c in 0..k as u32 {
        let cand: Vec<usize> = (0..pool.len()).filter(|&i| pool.labels[i] == c).collect();
        let m = cfg.budget_per_class.min(cand.len());
        let random: Vec<usize> = permutation(&mut rng, cand.len()).into_iter().take(m).map(|j| cand[j]).collect();
        match &svms[c as usize] {
            Some(svm) => {
                let d = svm.decision(&rows(&ep, dim, &cand), dim)?;
                let mut order: Vec<usize> = (0..cand.len()).collect();
                order.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
                chosen_svm.extend(order.into_iter().take(m).map(|j| cand[j]));
            }
            None => chosen_svm.extend(random.iter().copied()),
        }
        chosen_random.extend(random);
    }
    let subgroup_acc = |pred: &[u32]| -> f64 {
        let idx: Vec<usize> = (0..test.len()).filter(|&i| sub[i]).collect();
        frac(idx.iter().filter(|&&i| pred[i] == test.labels[i]).count(), idx.len())
    };
    let overall = |pred: &[u32]| train::evaluate::fraction_equal(pred, &test.labels);
    let mut interventions = vec![Intervention {
        strategy: "baseline".into(),
        added: 0,
        added_subgroup: 0,
        accuracy: overall(&pt),
        subgroup_accuracy: subgroup_acc(&pt),
    }];
    for (name, chosen) in [("random", &chosen_random), ("lowest-svm", &chosen_svm)] {
        let data = train_set.concat(&pool.select(chosen)?)?;
        let mut retrained = Network::new(&spec, cfg.model_seed, &cfg.device)?;
        train::train(&mut retrained, &data, None, &cfg.train)?;
        let pred = train::predict(&retrained, test)?;
        interventions.push(Intervention {
            strategy: name.into(),
            added: chosen.len(),
            added_subgroup: chosen.iter().filter(|&&i| pool_sub[i]).count(),
            accuracy: overall(&pred),
            subgroup_accuracy: subgroup_acc(&pred),
        });
    }
    Ok(FailureDirectionsResult {
        classes,
        test_scores,
        bottom_fraction: cfg.bottom_fraction,
        bottom_subgroup_fraction,
        base_subgroup_fraction,
        enrichment: bottom_subgroup_fraction / base_subgroup_fraction,
        subgroup_auc: auc(&auc_scores, &auc_labels),
        interventions,
    })
}

impl FailureDirectionsResult {
    /// One row per class: class, name, n_val, n_val_errors, c, cv_balanced_accuracy,
    /// test_error_auc (nulls where no SVM was fitted).
    pub fn classes_dataframe(&self) -> Result<DataFrame> {
        let c = &self.classes;
        let cols = vec![
            Series::new("class".into(), c.iter().map(|r| r.class).collect::<Vec<_>>()).into(),
            Series::new("name".into(), c.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()).into(),
            Series::new("n_val".into(), c.iter().map(|r| r.n_val as u64).collect::<Vec<_>>()).into(),
            Series::new("n_val_errors".into(), c.iter().map(|r| r.n_val_errors as u64).collect::<Vec<_>>()).into(),
            Series::new("c".into(), c.iter().map(|r| r.c).collect::<Vec<_>>()).into(),
            Series::new("cv_balanced_accuracy".into(), c.iter().map(|r| r.cv_balanced_accuracy).collect::<Vec<_>>()).into(),
            Series::new("test_error_auc".into(), c.iter().map(|r| r.test_error_auc).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }
}

impl Outcome for FailureDirectionsResult {
    /// One row per intervention: strategy, added, added_subgroup, accuracy,
    /// subgroup_accuracy, and the run's enrichment and subgroup AUC repeated on every row.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let r = &self.interventions;
        let n = r.len();
        let cols = vec![
            Series::new("strategy".into(), r.iter().map(|v| v.strategy.as_str()).collect::<Vec<_>>()).into(),
            Series::new("added".into(), r.iter().map(|v| v.added as u64).collect::<Vec<_>>()).into(),
            Series::new("added_subgroup".into(), r.iter().map(|v| v.added_subgroup as u64).collect::<Vec<_>>()).into(),
            Series::new("accuracy".into(), r.iter().map(|v| v.accuracy).collect::<Vec<_>>()).into(),
            Series::new("subgroup_accuracy".into(), r.iter().map(|v| v.subgroup_accuracy).collect::<Vec<_>>()).into(),
            Series::new("enrichment".into(), vec![self.enrichment; n]).into(),
            Series::new("subgroup_auc".into(), vec![self.subgroup_auc; n]).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// Overall and subgroup test accuracy (%) for the baseline and each intervention.
    fn figure(&self) -> Result<Figure> {
        let title = format!(
            "Failure directions: bottom {:.0}% by SVM score is {:.1}x enriched for the subgroup",
            100.0 * self.bottom_fraction,
            self.enrichment
        );
        let chart = self.interventions.iter().fold(
            BarChart::new(&title, "test accuracy (%)", vec!["overall".into(), "subgroup".into()]).y_range(0.0, 105.0),
            |c, v| c.series(&format!("{} (+{})", v.strategy, v.added), vec![100.0 * v.accuracy, 100.0 * v.subgroup_accuracy]),
        );
        Ok(Figure::new(Chart::Bars(chart)))
    }

    fn summary(&self) -> String {
        let sub = |s: &str| self.interventions.iter().find(|v| v.strategy == s).map_or("n/a".to_string(), |v| format!("{:.1} %", 100.0 * v.subgroup_accuracy));
        format!(
            "Failure directions: the lowest-scored {:.0} % of each class's test images by SVM decision value are {:.1} % subgroup images against {:.1} % overall ({:.1}x enrichment, subgroup AUC {:.3}); adding the lowest-scored pool images gave {} subgroup accuracy against {} for as many random images (baseline {}).",
            100.0 * self.bottom_fraction,
            100.0 * self.bottom_subgroup_fraction,
            100.0 * self.base_subgroup_fraction,
            self.enrichment,
            self.subgroup_auc,
            sub("lowest-svm"),
            sub("random"),
            sub("baseline")
        )
    }
}
