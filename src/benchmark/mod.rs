//! Attacks against defences at the field's scale, in BackdoorBench's results vocabulary (CA,
//! ASR, RA, DER per attack, defence and seed). Sits above `attacks` and `defenses` and uses
//! both; nothing below imports it.

pub mod backdoorbench;
mod detectors;
pub mod grid;
mod published;

pub use backdoorbench::{AttackCell, DetectionScores, GridTask, BackdoorBenchConfig, BackdoorBenchResult, BenchAttack, BenchCell, BenchDefence, CellStatus};
pub use detectors::{detector_table, DetectorRow, DetectorTable, DetectorTableConfig};
pub use published::{published, PUBLISHED_PREACT_RESNET18_CIFAR10};
