//! Transfer and dataset analyses, one file per paper.

// Dataset and model debugging (issue 10).
pub mod svm;
pub mod failure_directions;
pub mod spurious_patterns;
pub mod dataset_artifacts;
pub mod natural_backdoor_datasets;
