//! What a feature-priors run measured, era by era, as a table and a figure.

use crate::error::Result;
use crate::report::{BarChart, Chart, Figure, LineChart, Outcome};
use polars::prelude::{DataFrame, NamedFrom, Series};

/// One model (or combination) after one era.
#[derive(Debug, Clone, PartialEq)]
pub struct EraRecord {
    /// 0 = trained on the labelled set only.
    pub era: usize,
    /// "co-training" or "self-training".
    pub scheme: String,
    /// "shape", "texture" or "combined" (probability average of the two).
    pub model: String,
    /// Share of the pool pseudo-labelled for this era's training (0 in era 0).
    pub fraction: f64,
    pub test_accuracy: f64,
    pub flipped_accuracy: f64,
    /// Pseudo-labelled pool images this model was trained on, and the share of them whose
    /// pseudo-label is the true class (NaN when none, and for "combined").
    pub pseudo_labels: usize,
    pub pseudo_label_accuracy: f64,
}

/// What [`super::run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePriorsResult {
    /// Every era of both schemes; era 0 (labelled only) is shared and listed once per scheme.
    pub eras: Vec<EraRecord>,
    /// Agreement of the labelled-only shape and texture models' predictions on the test set
    /// (diverse priors: low agreement on their errors is what co-training exploits).
    pub labelled_only_agreement: f64,
}

impl FeaturePriorsResult {
    /// The record of `scheme`/`model` at `era`.
    pub fn record(&self, scheme: &str, model: &str, era: usize) -> Option<&EraRecord> {
        self.eras.iter().find(|r| r.scheme == scheme && r.model == model && r.era == era)
    }

    /// The last era's record of `scheme`/`model`.
    pub fn last(&self, scheme: &str, model: &str) -> Option<&EraRecord> {
        self.eras.iter().filter(|r| r.scheme == scheme && r.model == model).max_by_key(|r| r.era)
    }

    /// One row per era, scheme and model: era, scheme, model, fraction, test_accuracy,
    /// flipped_accuracy, pseudo_labels, pseudo_label_accuracy.
    pub fn eras_dataframe(&self) -> Result<DataFrame> {
        let e = &self.eras;
        let cols = vec![
            Series::new("era".into(), e.iter().map(|r| r.era as u32).collect::<Vec<_>>()).into(),
            Series::new("scheme".into(), e.iter().map(|r| r.scheme.as_str()).collect::<Vec<_>>()).into(),
            Series::new("model".into(), e.iter().map(|r| r.model.as_str()).collect::<Vec<_>>()).into(),
            Series::new("fraction".into(), e.iter().map(|r| r.fraction).collect::<Vec<_>>()).into(),
            Series::new("test_accuracy".into(), e.iter().map(|r| r.test_accuracy).collect::<Vec<_>>()).into(),
            Series::new("flipped_accuracy".into(), e.iter().map(|r| r.flipped_accuracy).collect::<Vec<_>>()).into(),
            Series::new("pseudo_labels".into(), e.iter().map(|r| r.pseudo_labels as u64).collect::<Vec<_>>()).into(),
            Series::new("pseudo_label_accuracy".into(), e.iter().map(|r| r.pseudo_label_accuracy).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// The final comparison as (method, record): labelled only, self-training and
    /// co-training, each for shape, texture and their combination.
    pub fn final_records(&self) -> Vec<(String, EraRecord)> {
        let mut rows = Vec::new();
        for model in ["shape", "texture", "combined"] {
            if let Some(r) = self.record("self-training", model, 0) {
                rows.push((format!("{model}, labelled only"), r.clone()));
            }
        }
        for scheme in ["self-training", "co-training"] {
            for model in ["shape", "texture", "combined"] {
                if let Some(r) = self.last(scheme, model) {
                    rows.push((format!("{model}, {scheme}"), r.clone()));
                }
            }
        }
        rows
    }

    /// Final test and flipped-test accuracy (%) of every method as bars: one group per
    /// scheme (labelled only, self-training, co-training), one bar per model and test set
    /// (six series, so no two share a colour).
    pub fn summary_figure(&self) -> Result<Figure> {
        let schemes = [("labelled only", "self-training", Some(0)), ("self-training", "self-training", None), ("co-training", "co-training", None)];
        let mut chart = BarChart::new("Feature priors: final accuracy per method", "accuracy (%)", schemes.iter().map(|s| s.0.to_string()).collect())
            .y_range(0.0, 105.0);
        for flipped in [false, true] {
            for model in ["shape", "texture", "combined"] {
                let values = schemes
                    .iter()
                    .map(|&(_, scheme, era)| {
                        let r = match era {
                            Some(e) => self.record(scheme, model, e),
                            None => self.last(scheme, model),
                        };
                        r.map_or(f64::NAN, |r| 100.0 * if flipped { r.flipped_accuracy } else { r.test_accuracy })
                    })
                    .collect();
                chart = chart.series(&format!("{model} ({})", if flipped { "flipped cue" } else { "test" }), values);
            }
        }
        Ok(Figure::new(Chart::Bars(chart)))
    }
}

impl Outcome for FeaturePriorsResult {
    /// One row per method (see [`FeaturePriorsResult::final_records`]): method, era, test_accuracy,
    /// flipped_accuracy, pseudo_labels, pseudo_label_accuracy.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let s = self.final_records();
        let cols = vec![
            Series::new("method".into(), s.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>()).into(),
            Series::new("era".into(), s.iter().map(|(_, r)| r.era as u32).collect::<Vec<_>>()).into(),
            Series::new("test_accuracy".into(), s.iter().map(|(_, r)| r.test_accuracy).collect::<Vec<_>>()).into(),
            Series::new("flipped_accuracy".into(), s.iter().map(|(_, r)| r.flipped_accuracy).collect::<Vec<_>>()).into(),
            Series::new("pseudo_labels".into(), s.iter().map(|(_, r)| r.pseudo_labels as u64).collect::<Vec<_>>()).into(),
            Series::new("pseudo_label_accuracy".into(), s.iter().map(|(_, r)| r.pseudo_label_accuracy).collect::<Vec<_>>()).into(),
        ];
        Ok(DataFrame::new_infer_height(cols)?)
    }

    /// Accuracy (%) per era: test accuracy of both schemes' shape, texture and combined
    /// models, and flipped-test accuracy of both combinations (eight lines, each in its own
    /// colour; every final number is in
    /// [`FeaturePriorsResult::summary_figure`]).
    fn figure(&self) -> Result<Figure> {
        let mut chart = LineChart::new("Feature priors: accuracy per era", "era (0 = labelled only)", "accuracy (%)").y_range(0.0, 100.0);
        for (scheme, model, flipped) in [
            ("co-training", "combined", false),
            ("co-training", "combined", true),
            ("co-training", "shape", false),
            ("co-training", "texture", false),
            ("self-training", "combined", false),
            ("self-training", "combined", true),
            ("self-training", "shape", false),
            ("self-training", "texture", false),
        ] {
            let rows: Vec<&EraRecord> = self.eras.iter().filter(|r| r.scheme == scheme && r.model == model).collect();
            let label = format!("{scheme}, {model} ({})", if flipped { "flipped cue" } else { "test" });
            let points = rows.iter().map(|r| (r.era as f64, 100.0 * if flipped { r.flipped_accuracy } else { r.test_accuracy })).collect();
            chart = chart.series(&label, points);
        }
        // Taller than the default, so that the eight-line legend fits below the lines.
        Ok(Figure::new(Chart::Lines(chart)).with_size(800, 640))
    }

    fn summary(&self) -> String {
        let acc = |r: Option<&EraRecord>| {
            r.map_or("n/a".to_string(), |r| format!("{:.1} % ({:.1} % with the cue flipped)", 100.0 * r.test_accuracy, 100.0 * r.flipped_accuracy))
        };
        format!(
            "Feature priors / co-training: the combined shape and texture model reached {} test accuracy after co-training, against {} after self-training and {} with the labelled set only; the labelled-only shape and texture models agreed on {:.1} % of test predictions.",
            acc(self.last("co-training", "combined")),
            acc(self.last("self-training", "combined")),
            acc(self.record("self-training", "combined", 0)),
            100.0 * self.labelled_only_agreement
        )
    }
}
