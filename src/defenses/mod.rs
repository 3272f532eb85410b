//! Backdoor defences, one file per defence. Each reports CA, ASR and RA before and after, and
//! the defence effectiveness rate, in the table the attacks use
//! ([`crate::attacks::defence_table`]). Defences take a backdoored [`crate::models::Network`]
//! (or poisoned data) and the defender's clean data; a [`BackdoorProbe`] (test set, trigger,
//! target) scores them, so every attack that is a trigger and a target plugs in.

mod probe;
pub mod fine_tuning;
pub mod fine_pruning;

pub use probe::{check_data, BackdoorProbe};
pub use fine_tuning::{FineTuningConfig, FineTuningResult, MembershipProbe};
pub use fine_pruning::{FinePruningConfig, FinePruningResult};
