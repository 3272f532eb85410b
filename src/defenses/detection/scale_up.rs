//! SCALE-UP (Guo et al. 2023, "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
//! via Analyzing Scaled Prediction Consistency"): amplify an input's pixel values; a triggered
//! input keeps its prediction under amplification far more often than a clean one.

use super::input_screening::{InputDetectionResult, Screening};
use crate::data::Dataset;
use crate::defenses::{check_data, BackdoorProbe};
use crate::error::{Error, Result};
use crate::models::Network;
use crate::stats::quantile;
use crate::train::predict;

/// SCALE-UP's settings. Defaults from Guo et al. 2023 (data-free setting): the pixel values
/// are multiplied by 3, 5, 7, 9 and 11 and clipped to [0, 1]; the scaled prediction consistency
/// (SPC) is the fraction of amplified copies predicted as the original.
///
/// An input is flagged when its SPC exceeds 0.5, the threshold T of the authors' data-free
/// code; `threshold: None` sets the boundary on the defender's clean data at
/// `false_rejection_rate` instead (SPC takes only `scales.len() + 1` values, so where the top
/// percentile of clean SPC is already 1.0 that boundary flags nothing). AUROC measures the
/// separation whatever the boundary. Not built: the paper's data-limited variant (SPC
/// normalised per class by benign statistics).
#[derive(Debug, Clone)]
pub struct ScaleUpConfig {
    /// Amplification factors.
    pub scales: Vec<f32>,
    /// Flag inputs whose SPC exceeds this; `None`: calibrate on the defender's clean data.
    pub threshold: Option<f64>,
    /// Fraction of clean inputs a calibrated boundary may reject.
    pub false_rejection_rate: f64,
}

impl Default for ScaleUpConfig {
    fn default() -> Self {
        Self { scales: vec![3.0, 5.0, 7.0, 9.0, 11.0], threshold: Some(0.5), false_rejection_rate: 0.01 }
    }
}

/// Screen the probe's clean and triggered test inputs with SCALE-UP, the boundary set on the
/// defender's `clean` data.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{detection::scale_up, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..40).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let r = scale_up::run(&net, &data, &probe, &Default::default()).unwrap();
/// assert!(r.scores.iter().all(|s| (0.0..=1.0).contains(s)));
/// let bad = scale_up::ScaleUpConfig { scales: vec![0.5], ..Default::default() };
/// assert!(scale_up::run(&net, &data, &probe, &bad).is_err());
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &ScaleUpConfig) -> Result<InputDetectionResult> {
    if cfg.scales.is_empty() || cfg.scales.iter().any(|s| !(s.is_finite() && *s > 1.0)) {
        return Err(Error::invalid("SCALE-UP scales", format!("{:?}: give one or more factors above 1 (the paper: 3, 5, 7, 9, 11)", cfg.scales)));
    }
    if !(cfg.false_rejection_rate > 0.0 && cfg.false_rejection_rate < 0.5) {
        return Err(Error::invalid("SCALE-UP false rejection rate", format!("{} must be in (0, 0.5)", cfg.false_rejection_rate)));
    }
    check_data(net, clean, "SCALE-UP's clean data")?;
    check_data(net, &probe.test, "test set")?;
    let screening = Screening::of(probe)?;
    let threshold = match cfg.threshold {
        Some(t) => t,
        None => quantile(&consistency(net, clean, &cfg.scales)?.0, 1.0 - cfg.false_rejection_rate),
    };
    let (scores, predictions) = consistency(net, &screening.inputs, &cfg.scales)?;
    Ok(InputDetectionResult::new("SCALE-UP filter", "scaled prediction consistency", &screening, &predictions, scores, threshold))
}

/// Each input's SPC, and its prediction.
fn consistency(net: &Network, inputs: &Dataset, scales: &[f32]) -> Result<(Vec<f64>, Vec<u32>)> {
    let original = predict(net, inputs)?;
    let mut agree = vec![0usize; inputs.len()];
    for &s in scales {
        let scaled = inputs.with_pixels(inputs.pixels().iter().map(|p| (p * s).min(1.0)).collect(), inputs.shape)?;
        for (a, (p, q)) in agree.iter_mut().zip(predict(net, &scaled)?.iter().zip(&original)) {
            *a += (p == q) as usize;
        }
    }
    Ok((agree.iter().map(|&a| a as f64 / scales.len() as f64).collect(), original))
}
