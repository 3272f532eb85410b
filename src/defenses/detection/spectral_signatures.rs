//! Spectral Signatures (Tran et al. 2018, "Spectral Signatures in Backdoor Attacks"): within a
//! class, poisoned samples shift the learned representation along one direction, so they
//! stand out in their projection on the top singular vector of the centred features.

use super::removal::{features_by_class, retrain_without, PoisonDetectionResult};
use crate::data::Dataset;
use crate::defenses::BackdoorProbe;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::stats::{principal_components, project};
use crate::train::TrainConfig;

/// Spectral Signatures' settings. Defaults from Tran et al. 2018: the representation is the
/// penultimate layer's; in each class the `removal_factor` x `expected_poison_rate` share of
/// samples with the largest squared projection on the top singular vector is removed (the
/// paper's 1.5 epsilon; BackdoorBench removes the top 15 % at its 10 % poisoning rate).
#[derive(Debug, Clone)]
pub struct SpectralSignaturesConfig {
    /// The defender's upper bound on the poisoned fraction (epsilon).
    pub expected_poison_rate: f64,
    /// How many times epsilon to remove per class.
    pub removal_factor: f64,
    /// Retrain a fresh model of the suspect's architecture on the rest with this recipe
    /// (the victim's own recipe is the fair choice); `None` only detects.
    pub retrain: Option<TrainConfig>,
    /// Seeds the singular-vector iteration's start.
    pub seed: u64,
}

impl Default for SpectralSignaturesConfig {
    fn default() -> Self {
        Self { expected_poison_rate: 0.1, removal_factor: 1.5, retrain: None, seed: 0 }
    }
}

/// Score the (possibly poisoned) `train_set` with the features of `net`, the model trained on
/// it; flag, and retrain without the flagged samples when the config has a recipe. The
/// score is the squared projection divided by its class mean, so that scores of different
/// classes share a scale (for AUROC); the removal is per class, as in the paper.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{detection::spectral_signatures, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..100).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let r = spectral_signatures::run(&net, &data, &probe, &Default::default()).unwrap();
/// // 15 % of each class of ~10 samples.
/// assert!((10..=20).contains(&r.detection.flagged));
/// ```
pub fn run(net: &Network, train_set: &Dataset, probe: &BackdoorProbe, cfg: &SpectralSignaturesConfig) -> Result<PoisonDetectionResult> {
    let share = cfg.expected_poison_rate * cfg.removal_factor;
    if !(cfg.expected_poison_rate > 0.0 && share.is_finite() && share < 1.0 && cfg.removal_factor > 0.0) {
        return Err(Error::invalid(
            "Spectral Signatures removal",
            format!(
                "expected poison rate {} x factor {} must remove a share in (0, 1) of each class (the paper: 1.5 x the poisoning rate)",
                cfg.expected_poison_rate, cfg.removal_factor
            ),
        ));
    }
    let before = probe.measure(net)?;
    let mut scores = vec![0f64; train_set.len()];
    let mut flagged = vec![false; train_set.len()];
    for (idx, rows, d) in features_by_class(net, train_set)? {
        if idx.len() < 2 {
            continue;
        }
        let (dirs, mean) = principal_components(&rows, d, 1, cfg.seed);
        let Some(top) = dirs.first() else { continue };
        let squared: Vec<f64> = project(&rows, d, &mean, std::slice::from_ref(top)).iter().map(|p| p * p).collect();
        let class_mean = squared.iter().sum::<f64>() / squared.len() as f64;
        let mut order: Vec<usize> = (0..idx.len()).collect();
        order.sort_by(|&a, &b| squared[b].total_cmp(&squared[a]).then(a.cmp(&b)));
        let remove = (share * idx.len() as f64).round() as usize;
        for (rank, &j) in order.iter().enumerate() {
            scores[idx[j]] = if class_mean > 0.0 { squared[j] / class_mean } else { 0.0 };
            flagged[idx[j]] = rank < remove;
        }
    }
    let retrained = cfg.retrain.as_ref().map(|recipe| retrain_without(net, train_set, &flagged, recipe, probe)).transpose()?;
    Ok(PoisonDetectionResult::new("Spectral Signatures", "squared projection / class mean", train_set, scores, flagged, None, before, retrained))
}
