//! Backdoor defences, one file per defence. Each reports CA, ASR and RA before and after, and
//! the defence effectiveness rate, in the table the attacks use
//! ([`crate::attacks::defence_table`]). Defences take a backdoored [`crate::models::Network`]
//! (or poisoned data) and the defender's clean data; a [`BackdoorProbe`] (test set, trigger,
//! target) scores them, so every attack that is a trigger and a target plugs in.

mod probe;
pub mod abl;
pub mod anp;
pub mod clp;
pub mod detection;
pub mod feature_shift_tuning;
pub mod fine_pruning;
pub mod fine_tuning;
pub mod ft_sam;
pub mod i_bau;
pub mod nad;
mod neuron_masks;
pub mod nc_unlearning;
pub mod rnp;
pub mod sau;
pub mod survival;
pub mod trigger_inversion;

pub use probe::{check_data, BackdoorProbe};
pub use abl::{AblConfig, AblResult};
pub use clp::{ClpConfig, ClpResult};
pub use feature_shift_tuning::{FstConfig, FstResult};
pub use fine_pruning::{FinePruningConfig, FinePruningResult};
pub use fine_tuning::{FineTuningConfig, FineTuningResult, MembershipProbe};
pub use ft_sam::{FtSamConfig, FtSamResult};
pub use i_bau::{IBauConfig, IBauResult};
pub use anp::{AnpConfig, AnpPruning, AnpResult};
pub use nad::{NadConfig, NadResult};
pub use nc_unlearning::{NcUnlearningConfig, NcUnlearningResult};
pub use neuron_masks::NeuronMasks;
pub use rnp::{RnpConfig, RnpResult};
pub use sau::{SauConfig, SauResult};
pub use survival::{SurvivalConfig, SurvivalResult};
pub use trigger_inversion::{InversionConfig, LabelPairScanResult, NeuralCleanseResult};
