//! Activation Clustering (Chen et al. 2018, "Detecting Backdoor Attacks on Deep Neural
//! Networks by Activation Clustering"): within a class, the last hidden layer's activations of
//! poisoned samples form a cluster of their own, smaller than the clean one.

use super::removal::{features_by_class, retrain_without, PoisonDetectionResult};
use crate::data::Dataset;
use crate::defenses::BackdoorProbe;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::stats::{kmeans, principal_components, project};
use crate::train::TrainConfig;

/// Activation Clustering's settings. Defaults from Chen et al. 2018 as IBM's Adversarial
/// Robustness Toolbox (the authors' reference implementation) runs them: activations reduced
/// to 10 dimensions, 2-means per class, a cluster holding less than 35 % of its class flagged
/// as poisoned (the paper's relative-size analysis).
///
/// Deviation: the paper reduces with ICA, ART with PCA by default; PCA here (deterministic).
#[derive(Debug, Clone)]
pub struct ActivationClusteringConfig {
    /// Dimensions the activations are reduced to before clustering.
    pub components: usize,
    pub clusters: usize,
    /// A cluster with less than this share of its class is flagged.
    pub max_poison_share: f64,
    /// k-means++ starts per class (the lowest inertia is kept; scikit-learn's default 10).
    pub starts: usize,
    /// Retrain a fresh model of the suspect's architecture on the rest with this recipe;
    /// `None` only detects.
    pub retrain: Option<TrainConfig>,
    pub seed: u64,
}

impl Default for ActivationClusteringConfig {
    fn default() -> Self {
        Self { components: 10, clusters: 2, max_poison_share: 0.35, starts: 10, retrain: None, seed: 0 }
    }
}

/// Cluster the activations of `net` (trained on `train_set`) per class and flag small
/// clusters; retrain without them when the config has a recipe. A sample's score is one
/// minus its cluster's share of the class, so flagged samples score above
/// `1 - max_poison_share`.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{detection::activation_clustering, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..100).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let r = activation_clustering::run(&net, &data, &probe, &Default::default()).unwrap();
/// assert!(r.flagged.iter().zip(&r.scores).all(|(&f, &s)| f == (s > 0.65)));
/// let bad = activation_clustering::ActivationClusteringConfig { clusters: 1, ..Default::default() };
/// assert!(activation_clustering::run(&net, &data, &probe, &bad).is_err());
/// ```
pub fn run(net: &Network, train_set: &Dataset, probe: &BackdoorProbe, cfg: &ActivationClusteringConfig) -> Result<PoisonDetectionResult> {
    if cfg.clusters < 2 || cfg.components == 0 {
        return Err(Error::invalid(
            "Activation Clustering",
            format!("{} clusters of {} components: need at least 2 clusters and 1 component (the paper: 2 and 10)", cfg.clusters, cfg.components),
        ));
    }
    if !(cfg.max_poison_share > 0.0 && cfg.max_poison_share < 0.5) {
        return Err(Error::invalid("Activation Clustering max_poison_share", format!("{} must be in (0, 0.5); the default is 0.35", cfg.max_poison_share)));
    }
    let before = probe.measure(net)?;
    let mut scores = vec![0f64; train_set.len()];
    for (idx, rows, d) in features_by_class(net, train_set)? {
        if idx.len() < cfg.clusters {
            continue;
        }
        let (dirs, mean) = principal_components(&rows, d, cfg.components, cfg.seed);
        if dirs.is_empty() {
            continue;
        }
        let reduced = project(&rows, d, &mean, &dirs);
        let km = kmeans(&reduced, dirs.len(), cfg.clusters, cfg.starts, cfg.seed);
        let sizes = km.sizes();
        for (j, &c) in km.assignment.iter().enumerate() {
            scores[idx[j]] = 1.0 - sizes[c] as f64 / idx.len() as f64;
        }
    }
    let threshold = 1.0 - cfg.max_poison_share;
    let flagged: Vec<bool> = scores.iter().map(|&s| s > threshold).collect();
    let retrained = cfg.retrain.as_ref().map(|recipe| retrain_without(net, train_set, &flagged, recipe, probe)).transpose()?;
    Ok(PoisonDetectionResult::new(
        "Activation Clustering",
        "1 - share of the class in the sample's cluster",
        train_set,
        scores,
        flagged,
        Some(threshold),
        before,
        retrained,
    ))
}
