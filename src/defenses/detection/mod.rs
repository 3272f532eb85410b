//! Backdoor detectors, one file per detector, and what they share: the detection metrics
//! (AUROC, TPR at 5 % FPR, precision and recall of the flagged samples) and the two result
//! types, one for detectors that screen inputs at test time (STRIP, SCALE-UP) and one for
//! those that screen the training data (Spectral Signatures, Activation Clustering), which
//! also serve as removal defences: drop the flagged samples and retrain. MM-BD inspects the
//! model alone and names a suspected target, as Neural Cleanse does.
//!
//! The detectors never read the poisoned flags the attack recorded; only the metrics do.

mod input_screening;
mod metrics;
mod removal;
pub mod activation_clustering;
pub mod mm_bd;
pub mod scale_up;
pub mod spectral_signatures;
pub mod strip;

pub use input_screening::InputDetectionResult;
pub use metrics::{score_histogram, DetectionMetrics};
pub use removal::PoisonDetectionResult;
pub use activation_clustering::ActivationClusteringConfig;
pub use mm_bd::{MmBdConfig, MmBdResult};
pub use scale_up::ScaleUpConfig;
pub use spectral_signatures::SpectralSignaturesConfig;
pub use strip::StripConfig;
