//! Poisoning a training set: stamp a trigger on a chosen fraction of samples and relabel them.

use super::trigger::Trigger;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::{permutation, stream};
use serde::{Deserialize, Serialize};

/// Which label a triggered input should receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetMode {
    /// Every triggered input goes to one target class.
    AllToOne { target: u32 },
    /// A triggered input of class y goes to (y + 1) mod K (BadNets' all-to-all attack).
    AllToAll,
}

impl TargetMode {
    /// The attack's target label for an input whose true label is `y`, among `k` classes.
    pub fn target_for(&self, y: u32, k: usize) -> u32 {
        match self {
            TargetMode::AllToOne { target } => *target,
            TargetMode::AllToAll => (y + 1) % k as u32,
        }
    }

    /// Check the target against the number of classes.
    pub fn validate(&self, k: usize) -> Result<()> {
        if let TargetMode::AllToOne { target } = self {
            if *target as usize >= k {
                return Err(Error::invalid(
                    "target class",
                    format!("{target} does not exist: the dataset has {k} classes (0..{})", k - 1),
                ));
            }
        }
        Ok(())
    }
}

/// How to poison a dataset (dirty-label by default, as in BadNets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoisonConfig {
    pub trigger: Trigger,
    /// Fraction of the whole training set that is poisoned, in [0, 1].
    pub rate: f64,
    pub target: TargetMode,
    /// Clean-label: poison only samples already of the target class and keep their labels.
    pub clean_label: bool,
    pub seed: u64,
}

impl PoisonConfig {
    /// BadNets: the `size` x `size` white corner patch, all-to-one to `target`, at `rate`.
    pub fn badnets(size: usize, rate: f64, target: u32) -> Self {
        Self { trigger: Trigger::badnets(size), rate, target: TargetMode::AllToOne { target }, clean_label: false, seed: 0 }
    }
}

/// A copy of `ds` with `round(rate * N)` samples triggered and relabelled, flagged in
/// `attributes.poisoned`. Dirty-label all-to-one draws only from samples not already of the
/// target class; clean-label draws only from the target class and keeps labels.
///
/// ```
/// use transferlab::attacks::{poison, PoisonConfig};
/// let ds = transferlab::data::Dataset::new(vec![0.0; 20 * 16], (1, 4, 4), (0..20).map(|i| i % 2).collect(), vec!["a".into(), "b".into()]).unwrap();
/// let p = poison(&ds, &PoisonConfig::badnets(2, 0.25, 0)).unwrap();
/// assert_eq!(p.poisoned_flags().iter().filter(|&&f| f).count(), 5);
/// assert!(poison(&ds, &PoisonConfig::badnets(2, 1.5, 0)).is_err());
/// ```
pub fn poison(ds: &Dataset, cfg: &PoisonConfig) -> Result<Dataset> {
    if !(0.0..=1.0).contains(&cfg.rate) || cfg.rate.is_nan() {
        return Err(Error::invalid("poison rate", format!("{} is outside [0, 1]", cfg.rate)));
    }
    let k = ds.num_classes();
    cfg.target.validate(k)?;
    cfg.trigger.validate(ds.shape)?;
    if cfg.clean_label && cfg.target == TargetMode::AllToAll {
        return Err(Error::invalid("poisoning", "clean-label poisoning needs an all-to-one target"));
    }
    let eligible: Vec<usize> = (0..ds.len())
        .filter(|&i| {
            let y = ds.labels[i];
            match (cfg.clean_label, cfg.target) {
                (true, TargetMode::AllToOne { target }) => y == target,
                (false, TargetMode::AllToOne { target }) => y != target,
                _ => true,
            }
        })
        .collect();
    let wanted = (cfg.rate * ds.len() as f64).round() as usize;
    if wanted > eligible.len() {
        return Err(Error::invalid(
            "poison rate",
            format!(
                "{} asks for {wanted} poisoned samples but only {} are eligible{}",
                cfg.rate,
                eligible.len(),
                if cfg.clean_label { " (clean-label poisons only the target class)" } else { "" }
            ),
        ));
    }
    let order = permutation(&mut stream(cfg.seed, "poison.choose"), eligible.len());
    let mut chosen: Vec<usize> = order[..wanted].iter().map(|&j| eligible[j]).collect();
    chosen.sort_unstable();
    let mut out = cfg.trigger.apply_to(ds, &chosen, cfg.seed)?;
    let mut flags = out.poisoned_flags();
    for &i in &chosen {
        flags[i] = true;
        if !cfg.clean_label {
            out.labels[i] = cfg.target.target_for(ds.labels[i], k);
        }
    }
    out.attributes.poisoned = Some(flags);
    Ok(out)
}
