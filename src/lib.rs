//! # transferlab
//!
//! What a trained model carries with it (accuracy, bias, backdoors) through transfer learning,
//! fine-tuning, distillation, pruning and updates: data, models, training, attacks, defences
//! and analyses on candle, results as polars DataFrames, figures with plotters.

pub mod data;
pub mod error;
pub mod fsutil;
pub mod models;
pub mod rng;
pub mod weights;

pub use error::{Error, Result};
