//! Transfer and dataset analyses, one file per paper.

// Transfer analyses (issue 9).
pub mod bias_transfer;
pub use bias_transfer::{BiasTransferConfig, BiasTransferResult};
pub mod logistic;
pub mod linear_probe;
pub use linear_probe::{LinearProbeConfig, LinearProbeResult};
pub mod source_influence;
pub use source_influence::{SourceInfluenceConfig, SourceInfluenceResult};
