//! What training-data detectors share: the features they read per class, the removal defence
//! (drop the flagged samples, retrain), and their result.

use super::metrics::{score_histogram, DetectionMetrics};
use crate::attacks::{defence_effectiveness_rate, defence_table, BackdoorMetrics};
use crate::data::Dataset;
use crate::defenses::probe::before_after_sentence;
use crate::defenses::{check_data, BackdoorProbe};
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Figure, Outcome};
use crate::train::{features, train, TrainConfig};
use polars::prelude::DataFrame;

/// The penultimate features of `train_set` under the (suspect) model, per class of the labels
/// the data carries (the poisoned ones: the defender sees no others): `(indices, rows, d)`.
pub(crate) fn features_by_class(net: &Network, train_set: &Dataset) -> Result<Vec<(Vec<usize>, Vec<f64>, usize)>> {
    check_data(net, train_set, "training data to screen")?;
    let feats = features(net, train_set)?;
    let d = feats.dim(1)?;
    let all: Vec<f32> = feats.flatten_all()?.to_vec1()?;
    Ok((0..train_set.num_classes() as u32)
        .map(|c| {
            let idx: Vec<usize> = (0..train_set.len()).filter(|&i| train_set.labels[i] == c).collect();
            let rows = idx.iter().flat_map(|&i| all[i * d..(i + 1) * d].iter().map(|&v| v as f64)).collect();
            (idx, rows, d)
        })
        .collect())
}

/// A fresh model of `net`'s architecture trained with `recipe` on `train_set` without the
/// flagged samples, scored with `probe`. The initialisation seed is `recipe.seed`.
pub(crate) fn retrain_without(net: &Network, train_set: &Dataset, flagged: &[bool], recipe: &TrainConfig, probe: &BackdoorProbe) -> Result<BackdoorMetrics> {
    let kept: Vec<usize> = (0..train_set.len()).filter(|&i| !flagged[i]).collect();
    if kept.is_empty() {
        return Err(Error::invalid("removal", "every training sample was flagged; nothing is left to retrain on (lower the removal fraction)"));
    }
    let mut model = Network::new(net.spec(), recipe.seed, net.device())?;
    train(&mut model, &train_set.select(&kept)?, None, recipe)?;
    probe.measure(&model)
}

/// What a training-data detector (Spectral Signatures, Activation Clustering) found, and the
/// model retrained without the flagged samples when a recipe was given.
#[derive(Debug, Clone)]
pub struct PoisonDetectionResult {
    /// The detector's name, as in the table's `run` column.
    pub method: String,
    pub score_name: String,
    /// Suspicion per training sample (higher = more suspicious), in training-set order.
    pub scores: Vec<f64>,
    /// The truth the attack recorded (all false for data without flags).
    pub poisoned: Vec<bool>,
    pub flagged: Vec<bool>,
    /// The boundary the flags came from, on the score's scale, where one boundary serves every
    /// class.
    pub threshold: Option<f64>,
    pub detection: DetectionMetrics,
    /// The suspect model (trained on all the data).
    pub before: BackdoorMetrics,
    /// The model retrained without the flagged samples.
    pub retrained: Option<BackdoorMetrics>,
}

impl PoisonDetectionResult {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        method: &str,
        score_name: &str,
        train_set: &Dataset,
        scores: Vec<f64>,
        flagged: Vec<bool>,
        threshold: Option<f64>,
        before: BackdoorMetrics,
        retrained: Option<BackdoorMetrics>,
    ) -> Self {
        let poisoned = train_set.poisoned_flags();
        Self {
            method: method.to_string(),
            score_name: score_name.to_string(),
            detection: DetectionMetrics::measure(&scores, &flagged, &poisoned),
            scores,
            poisoned,
            flagged,
            threshold,
            before,
            retrained,
        }
    }
}

impl Outcome for PoisonDetectionResult {
    /// [`defence_table`] rows (the suspect model, and the retrained one when there is one)
    /// with the detection metrics as further columns.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let after: Vec<(String, BackdoorMetrics)> = self.retrained.iter().map(|m| (format!("{} removal", self.method), *m)).collect();
        let mut df = defence_table(&("no defence".to_string(), self.before), &after)?;
        for c in self.detection.columns(df.height()) {
            df.with_column(c)?;
        }
        Ok(df)
    }

    /// The score distributions of clean and poisoned training samples.
    fn figure(&self) -> Result<Figure> {
        score_histogram(&self.method, &self.score_name, &self.scores, &self.poisoned, self.threshold)
    }

    fn summary(&self) -> String {
        let pct = |x: f64| if x.is_finite() { format!("{:.1} %", 100.0 * x) } else { "n/a".to_string() };
        let d = &self.detection;
        let auroc = if d.auroc.is_finite() { format!("{:.3}", d.auroc) } else { "n/a".to_string() };
        let removal = match &self.retrained {
            Some(m) => format!(" Retraining without them: {} (DER {:.2}).", before_after_sentence(&self.before, m), defence_effectiveness_rate(&self.before, m)),
            None => String::new(),
        };
        format!(
            "{} flagged {} of {} training samples ({} truly poisoned): AUROC {auroc}, TPR at 5 % FPR {}, precision {}, recall {}.{removal}",
            self.method,
            d.flagged,
            d.samples,
            d.poisoned,
            pct(d.tpr_at_5_fpr),
            pct(d.precision),
            pct(d.recall)
        )
    }
}
