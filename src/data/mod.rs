//! Datasets: the in-memory [`Dataset`], readers for the common formats, synthetic generators,
//! transforms and sampling.

mod codec;
mod dataset;
pub mod idx;

pub use dataset::{Attributes, Dataset};
pub use idx::{read_idx, read_idx_dataset, write_idx_dataset, IdxArray, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
