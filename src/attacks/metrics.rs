//! The one results vocabulary of attacks and defences: clean accuracy (CA), attack success
//! rate (ASR) and robust accuracy (RA), as in BackdoorBench.

use super::poison::TargetMode;
use super::trigger::Trigger;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::train::evaluate::{fraction_equal, predict};
use crate::report::{BarChart, Chart, Figure};
use polars::prelude::{DataFrame, NamedFrom, Series};
use serde::{Deserialize, Serialize};

/// CA, ASR and RA of one model against one trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackdoorMetrics {
    /// Accuracy on the clean test set.
    pub clean_accuracy: f64,
    /// Fraction of triggered test inputs (true label != target) classified as the target.
    pub attack_success_rate: f64,
    /// Fraction of the same triggered inputs still classified as their true label.
    pub robust_accuracy: f64,
    /// Clean test samples.
    pub n_clean: usize,
    /// Triggered test samples.
    pub n_triggered: usize,
}

/// What ASR and RA are measured on: triggered copies of the `test` samples whose true label
/// differs from their target (labels kept), and each copy's attack target. An error when no
/// such sample exists (ASR is undefined).
pub fn triggered_victims(test: &Dataset, trigger: &Trigger, target: &TargetMode, seed: u64) -> Result<(Dataset, Vec<u32>)> {
    let k = test.num_classes();
    target.validate(k)?;
    let victims: Vec<usize> = (0..test.len()).filter(|&i| target.target_for(test.labels[i], k) != test.labels[i]).collect();
    if victims.is_empty() {
        return Err(Error::invalid("test set", "no test sample has a label other than the target; ASR is undefined"));
    }
    let triggered = trigger.apply_to(&test.select(&victims)?, &(0..victims.len()).collect::<Vec<_>>(), seed)?;
    let targets = triggered.labels.iter().map(|&y| target.target_for(y, k)).collect();
    Ok((triggered, targets))
}

/// Measure CA on `test` and ASR/RA on triggered copies of the test samples whose true label
/// differs from their target.
pub fn evaluate_backdoor(net: &Network, test: &Dataset, trigger: &Trigger, target: &TargetMode, seed: u64) -> Result<BackdoorMetrics> {
    target.validate(test.num_classes())?;
    let pred = predict(net, test)?;
    let clean_accuracy = fraction_equal(&pred, &test.labels);
    let (triggered, targets) = triggered_victims(test, trigger, target, seed)?;
    let tpred = predict(net, &triggered)?;
    Ok(BackdoorMetrics {
        clean_accuracy,
        attack_success_rate: fraction_equal(&tpred, &targets),
        robust_accuracy: fraction_equal(&tpred, &triggered.labels),
        n_clean: test.len(),
        n_triggered: triggered.len(),
    })
}

/// The standard results table: one row per named run with columns run, ca, asr, ra,
/// n_clean, n_triggered (rates as fractions in [0, 1]).
///
/// ```
/// use transferlab::attacks::{metrics_table, BackdoorMetrics};
/// let m = BackdoorMetrics { clean_accuracy: 0.98, attack_success_rate: 0.99, robust_accuracy: 0.01, n_clean: 100, n_triggered: 90 };
/// let df = metrics_table(&[("badnets".to_string(), m)]).unwrap();
/// assert_eq!(df.height(), 1);
/// let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
/// assert_eq!(names, ["run", "ca", "asr", "ra", "n_clean", "n_triggered"]);
/// ```
pub fn metrics_table(rows: &[(String, BackdoorMetrics)]) -> Result<DataFrame> {
    let col = |f: &dyn Fn(&BackdoorMetrics) -> f64| rows.iter().map(|(_, m)| f(m)).collect::<Vec<f64>>();
    let cols = vec![
        Series::new("run".into(), rows.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()).into(),
        Series::new("ca".into(), col(&|m| m.clean_accuracy)).into(),
        Series::new("asr".into(), col(&|m| m.attack_success_rate)).into(),
        Series::new("ra".into(), col(&|m| m.robust_accuracy)).into(),
        Series::new("n_clean".into(), rows.iter().map(|(_, m)| m.n_clean as u64).collect::<Vec<_>>()).into(),
        Series::new("n_triggered".into(), rows.iter().map(|(_, m)| m.n_triggered as u64).collect::<Vec<_>>()).into(),
    ];
    Ok(DataFrame::new_infer_height(cols)?)
}

/// CA on `test`, and ASR / RA on `triggered` (images already carrying a trigger that
/// depends on the image, as a trigger generator makes them): the metrics of attacks whose
/// trigger is not a [`Trigger`].
pub(crate) fn metrics_on_triggered(net: &Network, test: &Dataset, triggered: &Dataset, target: u32) -> Result<BackdoorMetrics> {
    let pred = predict(net, triggered)?;
    Ok(BackdoorMetrics {
        clean_accuracy: fraction_equal(&predict(net, test)?, &test.labels),
        attack_success_rate: fraction_equal(&pred, &vec![target; pred.len()]),
        robust_accuracy: fraction_equal(&pred, &triggered.labels),
        n_clean: test.len(),
        n_triggered: pred.len(),
    })
}

/// "ASR 97.8 % against 5.3 % for the same-seed clean model, at CA 85.1 % (clean model
/// 86.0 %)": the comparison every attack's summary states.
pub(crate) fn attack_sentence(victim: &BackdoorMetrics, clean: &BackdoorMetrics) -> String {
    format!(
        "ASR {} against {} for the same-seed clean model, at CA {} (clean model {})",
        percent(victim.attack_success_rate),
        percent(clean.attack_success_rate),
        percent(victim.clean_accuracy),
        percent(clean.clean_accuracy)
    )
}

/// A fraction as a percentage with one decimal, as every summary writes rates.
pub(crate) fn percent(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// The standard results figure: CA, ASR and RA (in %) as grouped bars, one bar per named run.
///
/// ```
/// use transferlab::attacks::{metrics_figure, BackdoorMetrics};
/// let m = BackdoorMetrics { clean_accuracy: 0.98, attack_success_rate: 0.99, robust_accuracy: 0.01, n_clean: 100, n_triggered: 90 };
/// let fig = metrics_figure("BadNets", &[("badnets".to_string(), m)]);
/// assert!(fig.to_png().unwrap().len() > 100);
/// ```
pub fn metrics_figure(title: &str, rows: &[(String, BackdoorMetrics)]) -> Figure {
    let chart = rows.iter().fold(
        BarChart::new(title, "rate (%)", vec!["CA".into(), "ASR".into(), "RA".into()]).y_range(0.0, 105.0),
        |c, (name, m)| c.series(name, vec![100.0 * m.clean_accuracy, 100.0 * m.attack_success_rate, 100.0 * m.robust_accuracy]),
    );
    Figure::new(Chart::Bars(chart))
}

/// BackdoorBench's defence effectiveness rate: `[max(0, ΔASR) - max(0, ΔCA) + 1] / 2`, where
/// `ΔASR = ASR_before - ASR_after` and `ΔCA = CA_before - CA_after`. 1 removes the whole
/// backdoor at no cost in clean accuracy; 0.5 changes nothing; below 0.5 the defence costs
/// more accuracy than it removes ASR.
///
/// ```
/// use transferlab::attacks::{defence_effectiveness_rate, BackdoorMetrics};
/// let m = |ca, asr| BackdoorMetrics { clean_accuracy: ca, attack_success_rate: asr, robust_accuracy: 0.0, n_clean: 1, n_triggered: 1 };
/// assert!((defence_effectiveness_rate(&m(0.9, 1.0), &m(0.9, 0.0)) - 1.0).abs() < 1e-12);
/// assert!((defence_effectiveness_rate(&m(0.9, 1.0), &m(0.8, 1.0)) - 0.45).abs() < 1e-12);
/// // A defence that raises accuracy is not rewarded for it.
/// assert!((defence_effectiveness_rate(&m(0.9, 0.5), &m(0.95, 0.5)) - 0.5).abs() < 1e-12);
/// ```
pub fn defence_effectiveness_rate(before: &BackdoorMetrics, after: &BackdoorMetrics) -> f64 {
    let d_asr = before.attack_success_rate - after.attack_success_rate;
    let d_ca = before.clean_accuracy - after.clean_accuracy;
    (d_asr.max(0.0) - d_ca.max(0.0) + 1.0) / 2.0
}

/// The defence results table: [`metrics_table`]'s columns for the undefended model (first
/// row) and each defended one, plus `der` (the [`defence_effectiveness_rate`] against the
/// first row; null on the first row itself).
///
/// ```
/// use transferlab::attacks::{defence_table, BackdoorMetrics};
/// let m = |ca, asr| BackdoorMetrics { clean_accuracy: ca, attack_success_rate: asr, robust_accuracy: 0.0, n_clean: 100, n_triggered: 90 };
/// let df = defence_table(&("BadNets".to_string(), m(0.95, 0.99)), &[("fine-tuning".to_string(), m(0.93, 0.02))]).unwrap();
/// assert_eq!(df.height(), 2);
/// assert_eq!(df.get_column_names().last().unwrap().as_str(), "der");
/// ```
pub fn defence_table(before: &(String, BackdoorMetrics), after: &[(String, BackdoorMetrics)]) -> Result<DataFrame> {
    let mut rows = vec![before.clone()];
    rows.extend(after.iter().cloned());
    let mut df = metrics_table(&rows)?;
    let der: Vec<Option<f64>> =
        std::iter::once(None).chain(after.iter().map(|(_, m)| Some(defence_effectiveness_rate(&before.1, m)))).collect();
    df.with_column(Series::new("der".into(), der).into())?;
    Ok(df)
}
