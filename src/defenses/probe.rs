//! What every defence shares: the backdoor it is judged against (test set, trigger, target)
//! and the checks that the model and the defender's clean data fit together.

use crate::attacks::{evaluate_backdoor, BackdoorMetrics, TargetMode, Trigger};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;

/// How a defence is scored: CA on `test`, ASR/RA on `test` stamped with `trigger` towards
/// `target`. The defence itself never sees the trigger; only the evaluation does, so any
/// attack that is a (trigger, target) pair plugs in.
///
/// ```
/// use transferlab::attacks::{TargetMode, Trigger};
/// use transferlab::defenses::BackdoorProbe;
/// let test = transferlab::data::digits().unwrap();
/// let probe = BackdoorProbe::new(test, Trigger::badnets(3), TargetMode::AllToOne { target: 0 });
/// assert_eq!(probe.seed, 0);
/// ```
#[derive(Debug, Clone)]
pub struct BackdoorProbe {
    pub test: Dataset,
    pub trigger: Trigger,
    pub target: TargetMode,
    /// Seeds random trigger placements during evaluation.
    pub seed: u64,
}

impl BackdoorProbe {
    /// A probe with evaluation seed 0.
    pub fn new(test: Dataset, trigger: Trigger, target: TargetMode) -> Self {
        Self { test, trigger, target, seed: 0 }
    }

    /// CA, ASR and RA of `net`.
    pub fn measure(&self, net: &Network) -> Result<BackdoorMetrics> {
        check_data(net, &self.test, "test set")?;
        evaluate_backdoor(net, &self.test, &self.trigger, &self.target, self.seed)
    }
}

/// Refuse data a defence cannot use with `net`: empty, of another image shape, or with more
/// classes than the model's head.
pub fn check_data(net: &Network, data: &Dataset, what: &'static str) -> Result<()> {
    if data.is_empty() {
        return Err(Error::invalid(
            what,
            "it is empty; this defence needs clean samples of the task (hold out a few per class from the training data)",
        ));
    }
    if data.shape != net.spec().input {
        return Err(Error::shape(
            what,
            format!("the model takes {:?} images but the data has {:?}; resize or convert the data first", net.spec().input, data.shape),
        ));
    }
    if data.num_classes() > net.spec().num_classes {
        return Err(Error::invalid(
            what,
            format!("the data has {} classes but the model predicts {}", data.num_classes(), net.spec().num_classes),
        ));
    }
    Ok(())
}

/// "ASR 95.3 % -> 5.4 %, CA 84.6 % -> 82.7 %": what a defence did to the backdoor and to the
/// clean task, as the defences' summaries quote it.
pub(crate) fn before_after_sentence(before: &BackdoorMetrics, after: &BackdoorMetrics) -> String {
    format!(
        "ASR {:.1} % -> {:.1} %, CA {:.1} % -> {:.1} %",
        100.0 * before.attack_success_rate,
        100.0 * after.attack_success_rate,
        100.0 * before.clean_accuracy,
        100.0 * after.clean_accuracy
    )
}
