//! # transferlab
//!
//! What a trained model carries with it (accuracy, bias, backdoors) through transfer learning,
//! fine-tuning, distillation, pruning and updates: data, models, training, attacks, defences
//! and analyses on candle, results as polars DataFrames, figures with plotters.

pub mod analysis;
pub mod attacks;
pub mod benchmark;
pub mod data;
pub mod defenses;
pub mod error;
pub mod fsutil;
pub mod hub;
pub mod kernels;
pub mod models;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod stats;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

// Re-exported so notebooks need only one `:dep` line and get matching versions.
pub use candle_core;
pub use polars;

/// Everything a notebook needs in one `use`.
pub mod prelude {
    pub use crate::analysis::classifier_editing::{ClassifierEditingConfig, ClassifierEditingResult};
    pub use crate::analysis::bit_finetune::{BitFinetuneConfig, BitFinetuneResult, BitHyperRule};
    pub use crate::analysis::dataset_artifacts::{DatasetArtifactsConfig, DatasetArtifactsResult};
    pub use crate::analysis::failure_directions::{FailureDirectionsConfig, FailureDirectionsResult};
    pub use crate::analysis::feature_priors::{FeaturePriorsConfig, FeaturePriorsResult};
    pub use crate::analysis::natural_backdoor_datasets::{MultiLabel, NaturalBackdoorConfig, NaturalBackdoorResult};
    pub use crate::analysis::spurious_patterns::{SpuriousPatternsConfig, SpuriousPatternsResult};
    pub use crate::attacks::{
        evaluate_backdoor, metrics_figure, metrics_table, poison, BackdoorMetrics, PatchFill, Placement, PoisonConfig, TargetMode, Trigger,
    };
    pub use crate::attacks::{NeubaConfig, NeubaResult};
    pub use crate::attacks::{poisoning, PoisoningAttackConfig, PoisoningAttackResult, PoisoningComparison};
    pub use crate::attacks::{watermark, Removal, WatermarkConfig, WatermarkResult};
    pub use crate::attacks::{architectural, ArchitecturalBackdoorConfig, ArchitecturalBackdoorResult};
    pub use crate::models::{Injection, TriggerDetector};
    pub use crate::attacks::{HiddenTriggerConfig, HiddenTriggerResult};
    pub use crate::attacks::{distillation, DistillVariant, DistillationBackdoorConfig, DistillationBackdoorResult, DistillationConfig};
    pub use crate::data::transforms::Augment;
    pub use crate::data::{digits, DataSource, Dataset};
    pub use crate::error::{Error, Result};
    pub use crate::models::{LoadMode, ModelSpec, Network};
    pub use crate::report::{
        grid, load_table, save_table, BarChart, Chart, Figure, Heatmap, ImageGrid, LineChart, Outcome, ScatterChart, Sweep, Table,
    };
    pub use crate::train::{accuracy, train, LrSchedule, OptimizerConfig, ProgressMode, TrainConfig};
    pub use candle_core::Device;
    // Transfer analyses (issue 9).
    pub use crate::analysis::{BiasTransferConfig, LinearProbeConfig, SourceInfluenceConfig};
    // CLIP zero-shot (issue 6).
    pub use crate::analysis::{ContrastiveConfig, PretrainedClip, ZeroShotConfig, ZeroShotResult};
    pub use crate::hub::{ClipBundle, Hub, HubConfig, LoopbackHub, ModelRegistry};
}
