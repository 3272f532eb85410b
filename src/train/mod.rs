//! Training: optimisers candle lacks, learning-rate schedules, the trainer, evaluation,
//! checkpoints and progress.

pub mod checkpoint;
pub mod evaluate;
pub mod optim;
pub mod schedule;
mod trainer;

pub use evaluate::{accuracy, cross_entropy, features, logits, per_sample_cross_entropy, per_sample_losses, predict};
pub use optim::{Optimizer, OptimizerConfig};
// Progress lives below every concern (the hub shows download progress too); re-exported here
// because training is where most users meet it.
pub use crate::progress::{Progress, ProgressMode};
pub use schedule::LrSchedule;
pub use trainer::{train, train_with, CrossEntropy, EpochRecord, History, Objective, Step, TrainConfig};
