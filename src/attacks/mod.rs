//! Backdoor attacks: triggers, poisoning and the CA/ASR/RA metrics every attack and defence
//! reports.

mod metrics;
mod poison;
mod trigger;
pub mod poisoning;
pub mod watermark;
pub mod architectural;

pub use metrics::{evaluate_backdoor, metrics_figure, metrics_table, BackdoorMetrics};
pub use poison::{poison, PoisonConfig, TargetMode};
pub use trigger::{BlendPattern, PatchFill, Placement, Trigger};
pub use poisoning::{PoisoningAttackConfig, PoisoningAttackResult, PoisoningComparison};
pub use watermark::{Removal, WatermarkConfig, WatermarkResult};
pub use architectural::{ArchitecturalBackdoorConfig, ArchitecturalBackdoorResult};
