//! # transferlab
//!
//! What a trained model carries with it (accuracy, bias, backdoors) through transfer learning,
//! fine-tuning, distillation, pruning and updates: data, models, training, attacks, defences
//! and analyses on candle, results as polars DataFrames, figures with plotters.

pub mod attacks;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod kernels;
pub mod models;
pub mod report;
pub mod rng;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// Everything a notebook needs in one `use`.
pub mod prelude {
    pub use crate::attacks::{evaluate_backdoor, metrics_table, poison, BackdoorMetrics, PoisonConfig, TargetMode, Trigger};
    pub use crate::data::Dataset;
    pub use crate::error::{Error, Result};
    pub use crate::models::{LoadMode, ModelSpec, Network};
    pub use crate::train::{train, LrSchedule, OptimizerConfig, TrainConfig};
}
