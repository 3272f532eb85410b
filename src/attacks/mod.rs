//! Backdoor attacks: triggers, poisoning and the CA/ASR/RA metrics every attack and defence
//! reports.

pub mod hidden_trigger;
mod metrics;
pub mod neuba;
mod poison;
mod trigger;
mod frequency_trigger;
mod warp_trigger;
mod reflection_trigger;
mod squeeze_negatives;
pub mod poisoning;
pub mod watermark;
pub mod architectural;
mod adversarial_hardening;
mod blind_loss;
pub mod distillation;
pub mod trojannn;
pub mod low_frequency;
pub mod lira;
mod trigger_generator;
pub mod input_aware;
mod input_aware_generator;

pub use metrics::{evaluate_backdoor, metrics_figure, metrics_table, triggered_victims, BackdoorMetrics};
pub use metrics::{defence_effectiveness_rate, defence_table};
pub use poison::{poison, PoisonConfig, TargetMode};
pub use trigger::{BlendPattern, PatchFill, Placement, Trigger};
pub use adversarial_hardening::AdversarialHardening;
pub use blind_loss::{BlindLoss, LossBalance};
pub use frequency_trigger::FrequencyTrigger;
pub use warp_trigger::WarpTrigger;
pub use reflection_trigger::ReflectionTrigger;
pub use squeeze_negatives::squeeze_cross_set;
pub use neuba::{neuba_triggers, neuba_vectors, NeubaConfig, NeubaResult, NeubaRow};
pub use poisoning::{PoisoningAttackConfig, PoisoningAttackResult, PoisoningComparison};
pub use watermark::{Removal, WatermarkConfig, WatermarkResult};
pub use architectural::{ArchitecturalBackdoorConfig, ArchitecturalBackdoorResult};
pub use hidden_trigger::{HiddenTriggerConfig, HiddenTriggerResult};
pub use trojannn::{TrojanNnConfig, TrojanNnResult};
pub use low_frequency::{LowFrequencyConfig, LowFrequencyFit, LowFrequencyResult};
pub use lira::{LiraConfig, LiraResult};
pub use trigger_generator::TriggerGenerator;
pub use input_aware::{InputAwareConfig, InputAwareResult};
pub use input_aware_generator::InputAwareGenerator;
pub use distillation::{DistillVariant, DistillationBackdoorConfig, DistillationBackdoorResult, DistillationConfig};
