//! Datasets: the in-memory [`Dataset`], readers for the common formats, synthetic generators,
//! transforms and sampling.

mod dataset;
pub mod transforms;

pub use dataset::{Attributes, Dataset};
