//! Fine-tuning and super-fine-tuning as backdoor defences (Sha et al. 2022, "Fine-tuning is
//! all you need to mitigate backdoor attacks"), with the backdoor's sequela measured by a
//! loss-threshold membership-inference attack.

use super::probe::{before_after_sentence, check_data, BackdoorProbe};
use crate::attacks::{defence_effectiveness_rate, defence_table, metrics_figure, BackdoorMetrics};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::report::{Figure, Outcome};
use crate::train::{per_sample_losses, train, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};
use polars::prelude::{NamedFrom, Series};

/// How to fine-tune. Defaults follow Sha et al. 2022 as we read the paper: 10 epochs of SGD
/// (momentum 0.9, weight decay 5e-4) on the defender's clean data, batch 128; standard
/// fine-tuning at a constant 0.01; super-fine-tuning with triangular cycles from 1e-4 up to
/// 0.1 in the first half and up to 0.01 in the second half.
///
/// Deviation: the paper's cycles are counted in iterations over CIFAR-sized clean sets; here a
/// cycle is `cycle_epochs` epochs so that the schedule keeps its shape on a few hundred images.
#[derive(Debug, Clone)]
pub struct FineTuningConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    /// The constant rate of standard fine-tuning.
    pub standard_lr: f64,
    /// Super-fine-tuning's base rate (the bottom of every cycle).
    pub base_lr: f64,
    /// Peak of the first phase's cycles.
    pub max_lr1: f64,
    /// Peak of the second phase's cycles (must be below `max_lr1`).
    pub max_lr2: f64,
    /// Length of one triangular cycle, in epochs.
    pub cycle_epochs: f64,
    /// Augmentation while fine-tuning (the paper fine-tunes with its training augmentation;
    /// none by default here because the right crop size depends on the image size).
    pub augment: Augment,
    pub seed: u64,
    pub progress: ProgressMode,
}

impl Default for FineTuningConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerConfig::sgd_momentum(),
            standard_lr: 0.01,
            base_lr: 1e-4,
            max_lr1: 0.1,
            max_lr2: 0.01,
            cycle_epochs: 2.0,
            augment: Augment::none(),
            seed: 0,
            progress: ProgressMode::Hidden,
        }
    }
}

impl FineTuningConfig {
    fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::invalid("fine-tuning", "epochs and batch size must be at least 1"));
        }
        for (what, v) in [("standard_lr", self.standard_lr), ("base_lr", self.base_lr), ("max_lr1", self.max_lr1), ("max_lr2", self.max_lr2)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid("fine-tuning learning rate", format!("{what} = {v}; it must be positive")));
            }
        }
        if !(self.base_lr < self.max_lr2 && self.max_lr2 < self.max_lr1) {
            return Err(Error::invalid(
                "super-fine-tuning schedule",
                format!(
                    "needs base_lr < max_lr2 < max_lr1, got {} / {} / {}",
                    self.base_lr, self.max_lr2, self.max_lr1
                ),
            ));
        }
        if !(self.cycle_epochs > 0.0) {
            return Err(Error::invalid("super-fine-tuning cycle", format!("{} epochs; it must be positive", self.cycle_epochs)));
        }
        Ok(())
    }

    /// The two schedules this defence compares, by name.
    pub fn schedules(&self) -> Vec<(String, LrSchedule)> {
        vec![
            ("fine-tuning".to_string(), LrSchedule::Constant { lr: self.standard_lr }),
            (
                "super-fine-tuning".to_string(),
                LrSchedule::two_phase_cyclic(self.base_lr, self.max_lr1, self.max_lr2, self.cycle_epochs, self.epochs as f64),
            ),
        ]
    }

    /// The training configuration of one schedule.
    pub fn train_config(&self, schedule: LrSchedule) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer.clone(),
            schedule,
            augment: self.augment,
            seed: self.seed,
            progress: self.progress,
            ..TrainConfig::default()
        }
    }
}

/// The data of a membership-inference attack: samples the model was trained on and samples it
/// never saw (same distribution).
#[derive(Debug, Clone)]
pub struct MembershipProbe {
    pub members: Dataset,
    pub non_members: Dataset,
}

impl MembershipProbe {
    /// The AUC of the loss-threshold attack (Yeom et al. 2018) on `net`: the probability that a
    /// random member has a lower loss than a random non-member (ties count half). 0.5 is no
    /// leakage.
    pub fn auc(&self, net: &Network) -> Result<f64> {
        check_data(net, &self.members, "members")?;
        check_data(net, &self.non_members, "non-members")?;
        let m = per_sample_losses(net, &self.members)?;
        let n = per_sample_losses(net, &self.non_members)?;
        Ok(loss_threshold_auc(&m, &n))
    }
}

/// AUC of "lower loss means member" from member and non-member losses (Mann-Whitney U with
/// ties counted half).
///
/// ```
/// use transferlab::defenses::fine_tuning::loss_threshold_auc;
/// assert_eq!(loss_threshold_auc(&[0.1, 0.2], &[0.3, 0.4]), 1.0);
/// assert_eq!(loss_threshold_auc(&[0.3], &[0.3]), 0.5);
/// ```
pub fn loss_threshold_auc(members: &[f32], non_members: &[f32]) -> f64 {
    if members.is_empty() || non_members.is_empty() {
        return f64::NAN;
    }
    // Rank all losses together; the members' rank sum gives U.
    let mut all: Vec<(f32, bool)> = members.iter().map(|&l| (l, true)).chain(non_members.iter().map(|&l| (l, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (nm, nn) = (members.len() as f64, non_members.len() as f64);
    let u_low = rank_sum - nm * (nm + 1.0) / 2.0;
    // u_low counts pairs where the member's loss is higher; the attack wins the others.
    1.0 - u_low / (nm * nn)
}

/// Fine-tuning and super-fine-tuning of one backdoored model.
#[derive(Debug, Clone)]
pub struct FineTuningResult {
    /// The model before the defence.
    pub before: (String, BackdoorMetrics),
    /// One row per schedule.
    pub after: Vec<(String, BackdoorMetrics)>,
    /// Membership-inference AUC before (first) and after each schedule, when measured.
    pub mia_auc: Option<Vec<f64>>,
}

impl Outcome for FineTuningResult {
    /// [`defence_table`] columns plus `mia_auc` when a membership probe was given.
    fn to_dataframe(&self) -> Result<polars::prelude::DataFrame> {
        let mut df = defence_table(&self.before, &self.after)?;
        if let Some(a) = &self.mia_auc {
            df.with_column(Series::new("mia_auc".into(), a.clone()).into())?;
        }
        Ok(df)
    }

    fn figure(&self) -> Result<Figure> {
        let mut rows = vec![self.before.clone()];
        rows.extend(self.after.iter().cloned());
        Ok(metrics_figure("Fine-tuning defences", &rows))
    }

    fn summary(&self) -> String {
        let before = &self.before.1;
        let runs: Vec<String> = self
            .after
            .iter()
            .map(|(name, m)| format!("{name} gave {} (DER {:.2})", before_after_sentence(before, m), defence_effectiveness_rate(before, m)))
            .collect();
        let mia = match &self.mia_auc {
            Some(auc) if !auc.is_empty() => {
                let names = std::iter::once(&self.before.0).chain(self.after.iter().map(|(name, _)| name));
                let pairs: Vec<String> = names.zip(auc).map(|(name, a)| format!("{name} {a:.3}")).collect();
                format!(" Membership-inference AUC (loss threshold): {}.", pairs.join(", "))
            }
            _ => String::new(),
        };
        if runs.is_empty() {
            return format!("No fine-tuning schedule was run.{mia}");
        }
        format!("On the defender's clean data, {}.{mia}", runs.join("; "))
    }
}

/// Fine-tune copies of `net` on the defender's `clean` data with the standard and the
/// super-fine-tuning schedule; score each with `probe`, and with `membership` if given.
///
/// ```
/// use transferlab::prelude::*;
/// use transferlab::defenses::{fine_tuning, BackdoorProbe};
/// let data = digits().unwrap().select(&(0..60).collect::<Vec<_>>()).unwrap();
/// let net = Network::new(&ModelSpec::named("mlp", data.shape, 10).unwrap(), 0, &Device::Cpu).unwrap();
/// let probe = BackdoorProbe::new(data.clone(), Trigger::badnets(2), TargetMode::AllToOne { target: 0 });
/// let cfg = fine_tuning::FineTuningConfig { epochs: 1, ..Default::default() };
/// let r = fine_tuning::run(&net, &data, &probe, None, &cfg).unwrap();
/// assert_eq!(r.to_dataframe().unwrap().height(), 3);
/// ```
pub fn run(
    net: &Network,
    clean: &Dataset,
    probe: &BackdoorProbe,
    membership: Option<&MembershipProbe>,
    cfg: &FineTuningConfig,
) -> Result<FineTuningResult> {
    cfg.validate()?;
    check_data(net, clean, "clean data")?;
    let before = ("no defence".to_string(), probe.measure(net)?);
    let mut after = Vec::new();
    let mut auc = match membership {
        Some(m) => Some(vec![m.auc(net)?]),
        None => None,
    };
    for (name, schedule) in cfg.schedules() {
        let mut model = net.duplicate()?;
        model.unfreeze_all();
        train(&mut model, clean, None, &cfg.train_config(schedule))?;
        after.push((name, probe.measure(&model)?));
        if let (Some(m), Some(a)) = (membership, auc.as_mut()) {
            a.push(m.auc(&model)?);
        }
    }
    Ok(FineTuningResult { before, after, mia_auc: auc })
}
