//! Transfer and dataset analyses, one file per paper.

// Dataset and model debugging (issue 10).
pub mod svm;
pub mod failure_directions;
pub mod spurious_patterns;
pub mod dataset_artifacts;
pub mod natural_backdoor_datasets;
pub mod classifier_editing;
pub mod feature_priors;
pub use feature_priors::{FeaturePriorsConfig, FeaturePriorsResult};

// Transfer analyses (issue 9).
pub mod bias_transfer;
pub use bias_transfer::{BiasTransferConfig, BiasTransferResult};
pub mod logistic;
pub mod linear_probe;
pub use linear_probe::{LinearProbeConfig, LinearProbeResult};
pub mod source_influence;
pub use source_influence::{SourceInfluenceConfig, SourceInfluenceResult};
pub mod bit_finetune;
pub use bit_finetune::{BitFinetuneConfig, BitFinetuneResult, BitHyperRule};

// CLIP zero-shot and linear probe (issue 6).
pub mod clip_pretrain;
pub use clip_pretrain::{ContrastiveConfig, PretrainedClip};
pub mod zero_shot;
pub use zero_shot::{ZeroShotConfig, ZeroShotResult};
