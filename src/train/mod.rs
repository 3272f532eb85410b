//! Training: optimisers candle lacks, learning-rate schedules, the trainer, evaluation,
//! checkpoints and progress.

pub mod checkpoint;
pub mod evaluate;
pub mod optim;
pub mod schedule;
mod trainer;

pub use crate::kernels::cross_entropy;
pub use evaluate::{accuracy, features, logits, per_sample_cross_entropy, per_sample_losses, predict};
pub use optim::{Optimizer, OptimizerConfig};
// Progress lives below every concern (the hub shows download progress too); re-exported here
// because training is where most users meet it.
pub use crate::progress::{Progress, ProgressMode};
pub use schedule::LrSchedule;

/// The version of training's numerics, part of every fingerprint that lets a run resume or
/// reuse results (checkpoints, the benchmark's models and cells, the resumable studies' logs).
/// Those fingerprints see the settings, not the code: bump this with any change that moves
/// the numbers a training run produces (kernels, optimiser, augmentation, sampling), so that
/// a checkpoint or a logged row computed by the old code is never resumed or shown as if the
/// new code had computed it. 2: the first version with the constant (the kernels' weight
/// gradients had changed the numbers of the 2026-12-03 benchmark run under an unchanged
/// fingerprint).
pub const NUMERICS_VERSION: u32 = 2;
pub use trainer::{train, train_with, CrossEntropy, EpochRecord, History, Objective, Step, TrainConfig};
