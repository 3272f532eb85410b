//! The detectors scored per attack on the grid's models: BackdoorBench's detection table.
//!
//! STRIP, Spectral Signatures and Activation Clustering are defences of the grid, so their
//! scores come from its cells. SCALE-UP (input level) and MM-BD (model level, data-free) remove
//! nothing and have no grid cell: they run here on each attack's trained model, loaded through
//! [`BackdoorBenchConfig::attack_cell`]'s inputs with the data decoded once for all attacks.

use super::backdoorbench::{BackdoorBenchConfig, BackdoorBenchResult, DetectionScores};
use crate::attacks::TargetMode;
use crate::defenses::detection::{mm_bd, scale_up, MmBdConfig, ScaleUpConfig};
use crate::error::Result;
use crate::report::{first_seen, BarChart, Chart, Figure, Outcome, Row, Rows};
use polars::prelude::DataFrame;
use std::time::Instant;

/// The budgets of the detectors run outside the grid (paper defaults; cut them on a subset).
#[derive(Debug, Clone, Default)]
pub struct DetectorTableConfig {
    pub scale_up: ScaleUpConfig,
    pub mm_bd: MmBdConfig,
}

/// One detector on one attack's model.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorRow {
    pub attack: String,
    pub detector: String,
    /// What it screens: `test inputs`, `training set` or `model`.
    pub screens: String,
    /// AUROC of its score (input and data-level detectors).
    pub auroc: Option<f64>,
    /// Fraction of the poisoned samples caught at 5 % false positives (`None` where undefined).
    pub tpr_at_5_fpr: Option<f64>,
    /// Recall and false-positive rate of what it flagged.
    pub recall: Option<f64>,
    pub false_positive_rate: Option<f64>,
    /// Model-level detectors: the class flagged as the target (`None`: nothing flagged).
    pub flagged_target: Option<u32>,
    /// Model-level detectors: the p-value of the most anomalous class.
    pub p_value: Option<f64>,
}

/// The detection table: one row per (attack, detector), sorted by attack, then what the
/// detector screens, then its name.
#[derive(Debug, Clone)]
pub struct DetectorTable {
    pub rows: Vec<DetectorRow>,
    /// The attacks' target class (`None` for all-to-all attacks).
    pub target: Option<u32>,
    /// The attacks whose training set holds no poison (the clean model): a class MM-BD flags
    /// there is a false alarm.
    pub clean_attacks: Vec<String>,
    /// Wall time of the detectors run here (SCALE-UP and MM-BD); the grid's are in its cells.
    pub seconds: f64,
}

impl DetectorRow {
    /// A detector that scores samples: its AUROC, TPR at 5 % FPR (`None` where undefined),
    /// recall and false-positive rate.
    fn scored(attack: &str, detector: &str, screens: &str, d: DetectionScores) -> Self {
        Self {
            attack: attack.into(),
            detector: detector.into(),
            screens: screens.into(),
            auroc: Some(d.auroc),
            tpr_at_5_fpr: Some(d.tpr_at_5_fpr).filter(|t| !t.is_nan()),
            recall: Some(d.recall),
            false_positive_rate: Some(d.false_positive_rate),
            flagged_target: None,
            p_value: None,
        }
    }
}

fn detector_name(defence: &str) -> Option<(&'static str, &'static str)> {
    match defence {
        "strip" => Some(("STRIP", "test inputs")),
        "spectral" => Some(("Spectral Signatures", "training set")),
        "ac" => Some(("Activation Clustering", "training set")),
        _ => None,
    }
}

/// Scores every detector on every attack of `result` (the first seed): the grid's detector
/// cells as they are, SCALE-UP on each backdoored model's test inputs and MM-BD on every model
/// (the clean one included, where a flagged class is a false alarm). The models must have been
/// trained by [`super::backdoorbench::run`] with `cfg`.
///
/// ```no_run
/// use transferlab::benchmark::{backdoorbench, detector_table, BackdoorBenchConfig, DetectorTableConfig};
/// use transferlab::report::Outcome;
/// let cfg = BackdoorBenchConfig::default();
/// let grid = backdoorbench::run(&cfg).unwrap();
/// let detectors = detector_table(&cfg, &grid, &DetectorTableConfig::default()).unwrap();
/// println!("{}", detectors.table().unwrap());
/// ```
pub fn detector_table(cfg: &BackdoorBenchConfig, result: &BackdoorBenchResult, dcfg: &DetectorTableConfig) -> Result<DetectorTable> {
    let seed = cfg.seed();
    let mut rows: Vec<DetectorRow> = result
        .cells
        .iter()
        .filter(|c| c.seed == seed)
        .filter_map(|c| {
            let (detector, screens) = detector_name(&c.defence)?;
            Some(DetectorRow::scored(&c.attack, detector, screens, c.detection?))
        })
        .collect();
    let started = Instant::now();
    let data = cfg.attack_cells_data()?;
    let mut target = None;
    let clean_attacks: Vec<String> = cfg.attacks.iter().filter(|a| a.is_clean()).map(|a| a.name.clone()).collect();
    for attack in &cfg.attacks {
        let cell = cfg.attack_cell_with(attack, &data)?;
        if !attack.is_clean() {
            if let TargetMode::AllToOne { target: t } = cell.probe.target {
                target = Some(t);
            }
            let s = scale_up::run(&cell.net, &cell.defender, &cell.probe, &dcfg.scale_up)?.detection;
            rows.push(DetectorRow::scored(&attack.name, "SCALE-UP", "test inputs", DetectionScores::from(&s)));
        }
        let m = mm_bd::run(&cell.net, &dcfg.mm_bd)?;
        rows.push(DetectorRow {
            attack: attack.name.clone(),
            detector: "MM-BD".into(),
            screens: "model".into(),
            auroc: None,
            tpr_at_5_fpr: None,
            recall: None,
            false_positive_rate: None,
            flagged_target: m.flagged,
            p_value: Some(m.p_value),
        });
    }
    rows.sort_by(|a, b| (&a.attack, &a.screens, &a.detector).cmp(&(&b.attack, &b.screens, &b.detector)));
    Ok(DetectorTable { rows, target, clean_attacks, seconds: started.elapsed().as_secs_f64() })
}

impl DetectorTable {
    fn attacks(&self) -> Vec<String> {
        first_seen(self.rows.iter().map(|r| r.attack.clone()))
    }
}

impl Outcome for DetectorTable {
    /// One row per (attack, detector): attack, detector, screens, auroc, tpr_at_5_fpr, recall,
    /// fpr (empty where a detector has no such score), flagged_target (model-level detectors:
    /// the class and its p-value, or none).
    fn to_dataframe(&self) -> Result<DataFrame> {
        let mut rows = Rows::new();
        for r in &self.rows {
            let flagged = match (r.flagged_target, r.p_value) {
                (Some(t), Some(p)) => format!("class {t} (p = {p:.3})"),
                (None, Some(p)) => format!("none (p = {p:.3})"),
                _ => String::new(),
            };
            rows.push(
                Row::new()
                    .text("attack", r.attack.clone())
                    .text("detector", r.detector.clone())
                    .text("screens", r.screens.clone())
                    .maybe_float("auroc", r.auroc)
                    .maybe_float("tpr_at_5_fpr", r.tpr_at_5_fpr)
                    .maybe_float("recall", r.recall)
                    .maybe_float("fpr", r.false_positive_rate)
                    .text("flagged_target", flagged),
            )?;
        }
        rows.to_dataframe()
    }

    /// AUROC of each scoring detector, grouped by detector, one bar per attack.
    fn figure(&self) -> Result<Figure> {
        let detectors = first_seen(self.rows.iter().filter(|r| r.auroc.is_some()).map(|r| r.detector.clone()));
        let mut chart = BarChart::new("Detectors: AUROC per attack (0.5 = chance)", "AUROC", detectors.clone()).y_range(0.0, 1.0);
        for attack in self.attacks() {
            let values: Vec<f64> = detectors
                .iter()
                .map(|d| self.rows.iter().find(|r| r.attack == attack && &r.detector == d).and_then(|r| r.auroc).unwrap_or(f64::NAN))
                .collect();
            if values.iter().any(|v| !v.is_nan()) {
                chart = chart.series(&attack, values);
            }
        }
        Ok(Figure::new(Chart::Bars(chart)))
    }

    fn summary(&self) -> String {
        let best: Vec<String> = self
            .attacks()
            .iter()
            .filter_map(|attack| {
                let top = self.rows.iter().filter(|r| &r.attack == attack && r.auroc.is_some()).max_by(|a, b| a.auroc.partial_cmp(&b.auroc).unwrap_or(std::cmp::Ordering::Equal))?;
                Some(format!("{attack}: {} ({:.2})", top.detector, top.auroc.unwrap_or(f64::NAN)))
            })
            .collect();
        let mm: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.detector == "MM-BD")
            .map(|r| match r.flagged_target {
                Some(t) if self.clean_attacks.contains(&r.attack) => format!("{} flags class {t} (a false alarm)", r.attack),
                Some(t) if Some(t) == self.target => format!("{} flags the target {t}", r.attack),
                Some(t) => format!("{} flags class {t}, not the target", r.attack),
                None => format!("{} flags nothing", r.attack),
            })
            .collect();
        format!(
            "Highest AUROC per attack: {}. MM-BD (model only): {}. SCALE-UP and MM-BD ran {:.0} s here; the other detectors' scores come from the grid's cells.",
            if best.is_empty() { "none scored".to_string() } else { best.join("; ") },
            if mm.is_empty() { "not run".to_string() } else { mm.join(", ") },
            self.seconds
        )
    }
}
