//! What input-level detectors share: the inputs they screen (the probe's clean test images
//! and their triggered copies), the model behind the filter, and their result.

use super::metrics::{score_histogram, DetectionMetrics};
use crate::attacks::{defence_effectiveness_rate, defence_table, triggered_victims, BackdoorMetrics};
use crate::data::Dataset;
use crate::defenses::probe::before_after_sentence;
use crate::defenses::BackdoorProbe;
use crate::error::Result;
use crate::report::{Figure, Outcome};
use polars::prelude::DataFrame;

/// The probe's clean test images followed by triggered copies of those whose label differs
/// from the target: what a deployed filter would see.
pub(crate) struct Screening {
    pub inputs: Dataset,
    pub poisoned: Vec<bool>,
    /// The label each input should get: its own for clean ones, the attack's target for
    /// triggered ones (ASR counts hits on it).
    pub attack_targets: Vec<u32>,
    pub clean: usize,
}

impl Screening {
    pub fn of(probe: &BackdoorProbe) -> Result<Self> {
        let test = &probe.test;
        let (triggered, targets) = triggered_victims(test, &probe.trigger, &probe.target, probe.seed)?;
        let attack_targets = test.labels.iter().copied().chain(targets).collect();
        let poisoned = (0..test.len() + triggered.len()).map(|i| i >= test.len()).collect();
        Ok(Self { inputs: test.concat(&triggered)?, poisoned, attack_targets, clean: test.len() })
    }

    /// CA, ASR and RA of the model behind the filter: a rejected input counts as a miss for
    /// every rate (a rejected clean input is not classified correctly; a rejected triggered
    /// one reaches neither the target nor its label).
    pub fn behind_filter(&self, predictions: &[u32], flagged: &[bool]) -> BackdoorMetrics {
        let passed = |i: usize, label: u32| !flagged[i] && predictions[i] == label;
        let c = self.clean;
        let n = self.inputs.len();
        let rate = |hits: usize, of: usize| hits as f64 / of.max(1) as f64;
        BackdoorMetrics {
            clean_accuracy: rate((0..c).filter(|&i| passed(i, self.inputs.labels[i])).count(), c),
            attack_success_rate: rate((c..n).filter(|&i| passed(i, self.attack_targets[i])).count(), n - c),
            robust_accuracy: rate((c..n).filter(|&i| passed(i, self.inputs.labels[i])).count(), n - c),
            n_clean: c,
            n_triggered: n - c,
        }
    }

    /// CA, ASR and RA of the model alone.
    pub fn unfiltered(&self, predictions: &[u32]) -> BackdoorMetrics {
        self.behind_filter(predictions, &vec![false; predictions.len()])
    }
}

/// What an input-level detector (STRIP, SCALE-UP) found on the probe's clean and triggered
/// test inputs, and the model's CA/ASR/RA without and behind it.
#[derive(Debug, Clone)]
pub struct InputDetectionResult {
    /// The detector's name, as in the table's `run` column ("STRIP filter").
    pub method: String,
    /// What the score measures (for the figure's axis).
    pub score_name: String,
    /// Suspicion per screened input (higher = more suspicious): clean inputs first, then
    /// triggered ones.
    pub scores: Vec<f64>,
    pub poisoned: Vec<bool>,
    pub flagged: Vec<bool>,
    /// Scores above this are flagged; set on the defender's clean data.
    pub threshold: f64,
    pub detection: DetectionMetrics,
    pub without_filter: BackdoorMetrics,
    pub behind_filter: BackdoorMetrics,
}

impl InputDetectionResult {
    pub(crate) fn new(method: &str, score_name: &str, screening: &Screening, predictions: &[u32], scores: Vec<f64>, threshold: f64) -> Self {
        let flagged: Vec<bool> = scores.iter().map(|&s| s > threshold).collect();
        Self {
            method: method.to_string(),
            score_name: score_name.to_string(),
            detection: DetectionMetrics::measure(&scores, &flagged, &screening.poisoned),
            without_filter: screening.unfiltered(predictions),
            behind_filter: screening.behind_filter(predictions, &flagged),
            poisoned: screening.poisoned.clone(),
            flagged,
            scores,
            threshold,
        }
    }
}

impl Outcome for InputDetectionResult {
    /// Two [`defence_table`] rows (the model alone, the model behind the filter) with the
    /// detection metrics as further columns.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut df = defence_table(&("no defence".to_string(), self.without_filter), &[(self.method.clone(), self.behind_filter)])?;
        for c in self.detection.columns(df.height()) {
            df.with_column(c)?;
        }
        Ok(df)
    }

    /// The score distributions of clean and triggered inputs.
    fn figure(&self) -> Result<Figure> {
        score_histogram(&self.method, &self.score_name, &self.scores, &self.poisoned, Some(self.threshold))
    }

    fn summary(&self) -> String {
        let pct = |x: f64| if x.is_finite() { format!("{:.1} %", 100.0 * x) } else { "n/a".to_string() };
        let d = &self.detection;
        let auroc = if d.auroc.is_finite() { format!("{:.3}", d.auroc) } else { "n/a".to_string() };
        format!(
            "{} screened {} test inputs ({} triggered): AUROC {auroc}, TPR at 5 % FPR {}, {} of clean inputs rejected. Behind the filter: {} (DER {:.2}).",
            self.method,
            d.samples,
            d.poisoned,
            pct(d.tpr_at_5_fpr),
            pct(d.false_positive_rate),
            before_after_sentence(&self.without_filter, &self.behind_filter),
            defence_effectiveness_rate(&self.without_filter, &self.behind_filter)
        )
    }
}
