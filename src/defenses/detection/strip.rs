//! STRIP (Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural
//! Networks"): superimpose an input on random clean images; a triggered input keeps its
//! (target) prediction whatever it is blended with, so the entropy of the predictions is low.

use super::input_screening::{InputDetectionResult, Screening};
use crate::data::Dataset;
use crate::defenses::{check_data, BackdoorProbe};
use crate::error::{Error, Result};
use crate::models::Network;
use crate::progress::{Progress, ProgressMode};
use crate::rng::stream_at;
use crate::stats::quantile;
use crate::train::{logits, predict};
use rand::Rng;

/// STRIP's settings. Defaults from Gao et al. 2019: N = 100 superimpositions per input, the
/// boundary set for a false rejection rate of 1 % on the defender's clean data.
///
/// Deviations: the paper fits a normal distribution to the clean entropies and takes its 1 %
/// quantile; here the empirical 1 % quantile (no distributional assumption). Superimposition
/// adds the two images and saturates at white, as the official code's
/// `cv2.addWeighted(background, 1, overlay, 1, 0)` does on 8-bit images.
#[derive(Debug, Clone)]
pub struct StripConfig {
    /// Clean images each input is superimposed on.
    pub superimpositions: usize,
    /// Fraction of clean inputs the boundary may reject.
    pub false_rejection_rate: f64,
    pub seed: u64,
    /// A bar over the screened inputs (a full CIFAR-10 test set is 2 million forward passes).
    pub progress: ProgressMode,
}

impl Default for StripConfig {
    fn default() -> Self {
        Self { superimpositions: 100, false_rejection_rate: 0.01, seed: 0, progress: ProgressMode::Hidden }
    }
}

/// Inputs whose superimpositions are classified per forward pass batch.
const INPUTS_PER_PASS: usize = 16;

/// Screen the probe's clean and triggered test inputs with STRIP, the boundary set on the
/// defender's `clean` data (which also supplies the images to superimpose).
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{detection::strip, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..40).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let cfg = strip::StripConfig { superimpositions: 4, ..Default::default() };
/// let r = strip::run(&net, &data, &probe, &cfg).unwrap();
/// assert_eq!(r.scores.len(), r.poisoned.len());
/// let bad = strip::StripConfig { superimpositions: 0, ..Default::default() };
/// assert!(strip::run(&net, &data, &probe, &bad).unwrap_err().to_string().contains("superimpositions"));
/// ```
pub fn run(net: &Network, clean: &Dataset, probe: &BackdoorProbe, cfg: &StripConfig) -> Result<InputDetectionResult> {
    if cfg.superimpositions == 0 {
        return Err(Error::invalid("STRIP superimpositions", "0 blends nothing; use the paper's 100 (or at least 10)"));
    }
    if !(cfg.false_rejection_rate > 0.0 && cfg.false_rejection_rate < 0.5) {
        return Err(Error::invalid("STRIP false rejection rate", format!("{} must be in (0, 0.5); the paper uses 0.01", cfg.false_rejection_rate)));
    }
    check_data(net, clean, "STRIP's clean data")?;
    check_data(net, &probe.test, "test set")?;
    let screening = Screening::of(probe)?;
    // The boundary: the entropies of the defender's own images, blended with the same pool.
    let clean_entropy = entropies(net, clean, clean, cfg, u64::MAX / 2)?;
    let threshold_entropy = quantile(&clean_entropy, cfg.false_rejection_rate);
    let entropy = entropies(net, &screening.inputs, clean, cfg, 0)?;
    let predictions = predict(net, &screening.inputs)?;
    // Low entropy is suspicious: the score is its negation, flagged above -boundary.
    let scores: Vec<f64> = entropy.iter().map(|h| -h).collect();
    Ok(InputDetectionResult::new("STRIP filter", "negative mean entropy (bits)", &screening, &predictions, scores, -threshold_entropy))
}

/// Mean prediction entropy (bits) of each input of `inputs` over its superimpositions on
/// random images of `pool`; `stream_offset` keeps the draws of different input sets apart.
fn entropies(net: &Network, inputs: &Dataset, pool: &Dataset, cfg: &StripConfig, stream_offset: u64) -> Result<Vec<f64>> {
    let n = cfg.superimpositions;
    let len = inputs.image_len();
    let mut out = Vec::with_capacity(inputs.len());
    let progress = Progress::new("STRIP", inputs.len() as u64, cfg.progress);
    for start in (0..inputs.len()).step_by(INPUTS_PER_PASS) {
        let chunk = start..(start + INPUTS_PER_PASS).min(inputs.len());
        let mut pixels = Vec::with_capacity(chunk.len() * n * len);
        for i in chunk.clone() {
            let mut rng = stream_at(cfg.seed, "strip", stream_offset.wrapping_add(i as u64));
            let x = inputs.image(i);
            for _ in 0..n {
                let bg = pool.image(rng.random_range(0..pool.len()));
                pixels.extend(x.iter().zip(bg).map(|(a, b)| (a + b).min(1.0)));
            }
        }
        let blended = Dataset::new(pixels, inputs.shape, vec![0; chunk.len() * n], inputs.class_names.clone())?;
        let probs = candle_nn::ops::softmax_last_dim(&logits(net, &blended)?)?.to_vec2::<f32>()?;
        for per_input in probs.chunks(n) {
            let h: f64 = per_input.iter().map(|p| p.iter().filter(|&&q| q > 0.0).map(|&q| -(q as f64) * (q as f64).log2()).sum::<f64>()).sum();
            out.push(h / n as f64);
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(out)
}
