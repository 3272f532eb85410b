//! Backdoor survival across model updates: poison once, then update the model again and again
//! on fresh clean data whose distribution drifts, and follow the attack success rate after
//! every update, as a function of trigger size and poison rate and of the update-time
//! learning-rate schedule.
//!
//! The set-up of the studies of backdoors under continual updates (e.g. the model-update
//! experiments discussed by Sha et al. 2022): a deployed model is refreshed periodically with
//! newly collected clean data, never with the poison again.

use super::probe::check_data;
use crate::attacks::{evaluate_backdoor, poison, PoisonConfig, TargetMode, Trigger};
use crate::data::transforms::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::{ModelSpec, Network};
use crate::report::{first_seen, Chart, Figure, LineChart, Outcome, Sweep, SweepConfig};
use crate::rng::{permutation, stream, stream_at};
use crate::train::{train, LrSchedule, OptimizerConfig, Progress, ProgressMode, TrainConfig};
use candle_core::Device;
use polars::prelude::{DataFrame, NamedFrom, Series};
use rand::Rng;
use serde_json::Value;

/// The survival study. Defaults: BadNets patches of 1, 2 and 3 pixels to class 0 at 2 % and
/// 10 % poison, 4 updates of 5 epochs each; drift lowers brightness by 10 % per update,
/// makes one class (a different one each update) rare (25 % of its samples kept), and turns
/// on random-crop augmentation from the second update on. Routine updates use a constant
/// 0.01; the "restart" schedule opens every update with a triangular cycle up to 0.3 and back
/// to 0.001, which is what makes the backdoor vanish in one update here.
#[derive(Debug, Clone)]
pub struct SurvivalConfig {
    /// The trigger; patch triggers are resized to each of `trigger_sizes`.
    pub trigger: Trigger,
    pub target: TargetMode,
    pub trigger_sizes: Vec<usize>,
    pub poison_rates: Vec<f64>,
    pub updates: usize,
    /// Epochs of the initial (poisoned) training.
    pub initial_epochs: usize,
    pub initial_lr: f64,
    pub update_epochs: usize,
    /// Named update-time schedules to compare (each restarts at every update).
    pub update_schedules: Vec<(String, LrSchedule)>,
    /// Pixel values are multiplied by `1 - brightness_drift * u` at update u.
    pub brightness_drift: f32,
    /// Fraction of one class's samples kept at each update (a different class each time).
    pub minority_keep: f64,
    /// Random-crop padding used from the second update on (0: never).
    pub late_crop_padding: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub seed: u64,
    pub progress: ProgressMode,
    /// Where the networks are built and trained: `Device::Cpu` by default; a GPU with the
    /// `cuda` feature (`Device::cuda_if_available(0)`).
    pub device: Device,
}

impl Default for SurvivalConfig {
    fn default() -> Self {
        let epochs = 5;
        Self {
            trigger: Trigger::badnets(3),
            target: TargetMode::AllToOne { target: 0 },
            trigger_sizes: vec![1, 2, 3],
            poison_rates: vec![0.02, 0.1],
            updates: 4,
            initial_epochs: 10,
            initial_lr: 0.05,
            update_epochs: epochs,
            update_schedules: vec![
                ("routine (0.01)".to_string(), LrSchedule::Constant { lr: 0.01 }),
                (
                    "restart (cycle to 0.3)".to_string(),
                    LrSchedule::Piecewise { points: vec![(0.0, 0.001), (epochs as f64 / 2.0, 0.3), (epochs as f64, 0.001)] },
                ),
            ],
            brightness_drift: 0.1,
            minority_keep: 0.25,
            late_crop_padding: 1,
            batch_size: 64,
            optimizer: OptimizerConfig::sgd_momentum(),
            seed: 0,
            progress: ProgressMode::Hidden,
            device: Device::Cpu,
        }
    }
}

impl SurvivalConfig {
    fn validate(&self) -> Result<()> {
        if self.trigger_sizes.is_empty() || self.poison_rates.is_empty() || self.update_schedules.is_empty() {
            return Err(Error::invalid("survival sweep", "give at least one trigger size, poison rate and update schedule"));
        }
        if self.updates == 0 || self.update_epochs == 0 || self.initial_epochs == 0 {
            return Err(Error::invalid("survival sweep", "updates and epochs must be at least 1"));
        }
        if !(0.0..1.0).contains(&(self.brightness_drift * self.updates as f32)) {
            return Err(Error::invalid(
                "brightness drift",
                format!("{} x {} updates darkens images to nothing; keep the product below 1", self.brightness_drift, self.updates),
            ));
        }
        if !(self.minority_keep > 0.0 && self.minority_keep <= 1.0) {
            return Err(Error::invalid("minority_keep", format!("{} must be in (0, 1]", self.minority_keep)));
        }
        Ok(())
    }
}

/// The trigger resized to `size` (patches only; blends are returned unchanged).
pub fn sized(trigger: &Trigger, size: usize) -> Trigger {
    match trigger {
        Trigger::Patch { fill, placement, .. } => Trigger::Patch { size, fill: fill.clone(), placement: *placement },
        other => other.clone(),
    }
}

fn darken(ds: &Dataset, factor: f32) -> Result<Dataset> {
    let px: Vec<f32> = ds.pixels().iter().map(|v| v * factor).collect();
    ds.with_pixels(px, ds.shape)
}

/// The clean data of update `u` (1-based) with its drift applied.
fn drifted_update(chunk: &Dataset, u: usize, cfg: &SurvivalConfig) -> Result<Dataset> {
    let rare = ((u - 1) % chunk.num_classes()) as u32;
    let mut rng = stream_at(cfg.seed, "survival.minority", u as u64);
    let keep: Vec<usize> = (0..chunk.len()).filter(|&i| chunk.labels[i] != rare || rng.random::<f64>() < cfg.minority_keep).collect();
    darken(&chunk.select(&keep)?, 1.0 - cfg.brightness_drift * u as f32)
}

/// One curve point.
#[derive(Debug, Clone, PartialEq)]
pub struct SurvivalPoint {
    pub trigger_size: usize,
    pub poison_rate: f64,
    pub schedule: String,
    /// 0 is the model before any update.
    pub update: usize,
    pub clean_accuracy: f64,
    pub attack_success_rate: f64,
}

/// ASR and CA after every update, for every (trigger size, poison rate, schedule).
#[derive(Debug, Clone)]
pub struct SurvivalResult {
    pub points: Vec<SurvivalPoint>,
}

impl SurvivalResult {
    /// The first update after which ASR is at most `level`, per (size, rate, schedule).
    pub fn vanished_after(&self, size: usize, rate: f64, schedule: &str, level: f64) -> Option<usize> {
        self.points
            .iter()
            .filter(|p| p.trigger_size == size && p.poison_rate == rate && p.schedule == schedule && p.update > 0)
            .find(|p| p.attack_success_rate <= level)
            .map(|p| p.update)
    }
}

impl Outcome for SurvivalResult {
    /// One row per point: trigger_size, poison_rate, schedule, update, ca, asr.
    fn to_dataframe(&self) -> Result<DataFrame> {
        let p = &self.points;
        Ok(DataFrame::new_infer_height(vec![
            Series::new("trigger_size".into(), p.iter().map(|x| x.trigger_size as u64).collect::<Vec<_>>()).into(),
            Series::new("poison_rate".into(), p.iter().map(|x| x.poison_rate).collect::<Vec<_>>()).into(),
            Series::new("schedule".into(), p.iter().map(|x| x.schedule.as_str()).collect::<Vec<_>>()).into(),
            Series::new("update".into(), p.iter().map(|x| x.update as u64).collect::<Vec<_>>()).into(),
            Series::new("ca".into(), p.iter().map(|x| x.clean_accuracy).collect::<Vec<_>>()).into(),
            Series::new("asr".into(), p.iter().map(|x| x.attack_success_rate).collect::<Vec<_>>()).into(),
        ])?)
    }

    /// ASR (%) against the update number, one line per (trigger size, poison rate, schedule).
    fn figure(&self) -> Result<Figure> {
        let mut chart = LineChart::new("Backdoor survival across model updates", "update", "attack success rate (%)").y_range(0.0, 105.0);
        let keys = first_seen(self.points.iter().map(|p| (p.trigger_size, format!("{}", p.poison_rate), p.schedule.clone())));
        for (size, rate, sched) in keys {
            let pts: Vec<(f64, f64)> = self
                .points
                .iter()
                .filter(|p| p.trigger_size == size && format!("{}", p.poison_rate) == rate && p.schedule == sched)
                .map(|p| (p.update as f64, 100.0 * p.attack_success_rate))
                .collect();
            let short = sched.split(' ').next().unwrap_or(&sched);
            chart = chart.series(&format!("{size}px, {}%, {short}", 100.0 * rate.parse::<f64>().unwrap_or(0.0)), pts);
        }
        Ok(Figure::new(Chart::Lines(chart)).with_size(900, 550))
    }

    fn summary(&self) -> String {
        let Some(last) = self.points.iter().map(|p| p.update).max() else {
            return "The survival study measured no model.".to_string();
        };
        let schedules = first_seen(self.points.iter().map(|p| p.schedule.as_str()));
        let mean_asr = |schedule: &str, update: usize| {
            let v: Vec<f64> = self.points.iter().filter(|p| p.schedule == schedule && p.update == update).map(|p| p.attack_success_rate).collect();
            100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let first = schedules.first().copied().unwrap_or("");
        let settings = self.points.iter().filter(|p| p.schedule == first && p.update == 0).count();
        let after: Vec<String> = schedules.iter().map(|&s| format!("{:.1} % with the {s} schedule", mean_asr(s, last))).collect();
        format!(
            "Over {settings} trigger-size x poison-rate settings, the backdoor's mean ASR went from {:.1} % before any update to {} after {last} clean updates on drifting data.",
            mean_asr(first, 0),
            after.join(" and ")
        )
    }
}

/// Run the study: for each trigger size and poison rate, poison `initial` once, train a model
/// of `spec`, then for each update schedule apply `cfg.updates` drifted updates drawn from the
/// clean `pool` (disjoint chunks), measuring CA and ASR on `test` (drifted like the latest
/// update) after each. Every (size, rate) is one run of `sweep`, so an interrupted study
/// resumes where it stopped.
pub fn run(
    initial: &Dataset,
    pool: &Dataset,
    test: &Dataset,
    spec: &ModelSpec,
    sweep: &Sweep,
    cfg: &SurvivalConfig,
) -> Result<SurvivalResult> {
    cfg.validate()?;
    if pool.len() < cfg.updates * initial.num_classes() {
        return Err(Error::invalid(
            "update data",
            format!("{} clean samples cannot make {} updates; give more fresh clean data or fewer updates", pool.len(), cfg.updates),
        ));
    }
    for s in &cfg.trigger_sizes {
        sized(&cfg.trigger, *s).validate(initial.shape)?;
    }
    let probe_net = Network::new(spec, cfg.seed, &cfg.device)?;
    check_data(&probe_net, pool, "update data")?;
    check_data(&probe_net, test, "test set")?;
    let order = permutation(&mut stream(cfg.seed, "survival.pool"), pool.len());
    let per = pool.len() / cfg.updates;
    let chunks: Vec<Dataset> =
        (0..cfg.updates).map(|u| pool.select(&order[u * per..(u + 1) * per])).collect::<Result<Vec<_>>>()?;
    // A log written for other data, another model or another recipe must not be resumed as if
    // it were this study's: every entry carries a key of all of them (the swept sizes and rates
    // are keys of their own, so a study extended by a rate reuses its finished rows).
    let recipe = format!(
        "numerics={}|{:016x}{:016x}{:016x}|{:?}|{:?}",
        crate::train::NUMERICS_VERSION,
        initial.fingerprint(),
        pool.fingerprint(),
        test.fingerprint(),
        spec,
        SurvivalConfig { trigger_sizes: Vec::new(), poison_rates: Vec::new(), progress: ProgressMode::Hidden, ..cfg.clone() }
    );
    let study = format!("{:016x}", crate::rng::fnv1a(recipe.as_bytes()));
    let configs: Vec<SweepConfig> = cfg
        .trigger_sizes
        .iter()
        .flat_map(|&s| cfg.poison_rates.iter().map(move |&r| (s, r)))
        .map(|(s, r)| {
            let mut c = SweepConfig::new();
            c.insert("trigger_size".into(), Value::from(s));
            c.insert("poison_rate".into(), Value::from(r));
            c.insert("seed".into(), Value::from(cfg.seed));
            c.insert("study".into(), Value::from(study.clone()));
            c
        })
        .collect();
    let progress = Progress::new("survival", configs.len() as u64, cfg.progress);
    let df = sweep.run(&configs, |c| {
        let size = c["trigger_size"].as_u64().unwrap_or(1) as usize;
        let rate = c["poison_rate"].as_f64().unwrap_or(0.0);
        let out = one_run(initial, &chunks, test, spec, size, rate, cfg);
        progress.inc(1);
        out
    })?;
    progress.finish();
    let mut points = Vec::new();
    let col = |name: &str| -> Result<Vec<f64>> {
        let ca = df.column(name)?.as_materialized_series().f64()?.clone();
        Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or(f64::NAN)).collect())
    };
    let sizes = col("trigger_size")?;
    let rates = col("poison_rate")?;
    for row in 0..df.height() {
        for (si, (name, _)) in cfg.update_schedules.iter().enumerate() {
            for u in 0..=cfg.updates {
                points.push(SurvivalPoint {
                    trigger_size: sizes[row] as usize,
                    poison_rate: rates[row],
                    schedule: name.clone(),
                    update: u,
                    clean_accuracy: col(&format!("ca_s{si}_u{u}"))?[row],
                    attack_success_rate: col(&format!("asr_s{si}_u{u}"))?[row],
                });
            }
        }
    }
    Ok(SurvivalResult { points })
}

fn one_run(
    initial: &Dataset,
    chunks: &[Dataset],
    test: &Dataset,
    spec: &ModelSpec,
    size: usize,
    rate: f64,
    cfg: &SurvivalConfig,
) -> Result<Vec<(String, f64)>> {
    let trigger = sized(&cfg.trigger, size);
    let attack = PoisonConfig { trigger: trigger.clone(), rate, target: cfg.target, clean_label: false, seed: cfg.seed };
    let poisoned = poison(initial, &attack)?;
    let mut net = Network::new(spec, cfg.seed, &cfg.device)?;
    let base = TrainConfig {
        epochs: cfg.initial_epochs,
        batch_size: cfg.batch_size,
        optimizer: cfg.optimizer.clone(),
        schedule: LrSchedule::Cosine { lr: cfg.initial_lr, min_lr: 0.0, epochs: cfg.initial_epochs as f64 },
        seed: cfg.seed,
        progress: ProgressMode::Hidden,
        ..TrainConfig::default()
    };
    train(&mut net, &poisoned, None, &base)?;
    let m0 = evaluate_backdoor(&net, test, &trigger, &cfg.target, cfg.seed)?;
    let mut out = Vec::new();
    for (si, (_, schedule)) in cfg.update_schedules.iter().enumerate() {
        out.push((format!("ca_s{si}_u0"), m0.clean_accuracy));
        out.push((format!("asr_s{si}_u0"), m0.attack_success_rate));
        let mut model = net.duplicate()?;
        for (i, chunk) in chunks.iter().enumerate() {
            let u = i + 1;
            let data = drifted_update(chunk, u, cfg)?;
            let augment = if u >= 2 && cfg.late_crop_padding > 0 {
                Augment { crop_padding: cfg.late_crop_padding, hflip: false }
            } else {
                Augment::none()
            };
            let tc = TrainConfig {
                epochs: cfg.update_epochs,
                schedule: schedule.clone(),
                augment,
                seed: cfg.seed.wrapping_add(u as u64),
                ..base.clone()
            };
            train(&mut model, &data, None, &tc)?;
            let drifted_test = darken(test, 1.0 - cfg.brightness_drift * u as f32)?;
            let m = evaluate_backdoor(&model, &drifted_test, &trigger, &cfg.target, cfg.seed)?;
            out.push((format!("ca_s{si}_u{u}"), m.clean_accuracy));
            out.push((format!("asr_s{si}_u{u}"), m.attack_success_rate));
        }
    }
    Ok(out)
}
