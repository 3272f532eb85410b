//! Architectures, their weights and parameter groups.
//!
//! Create a model by name ([`ModelSpec::named`]) and instantiate it ([`Network::new`]); every
//! architecture exposes its penultimate features, a replaceable head and freezable parameter
//! groups, with the parameter names of its PyTorch reference.

pub mod init;
pub mod layers;
mod mlp;
mod convnet;
mod network;
mod spec;

pub use network::{is_buffer, LoadMode, Network};
pub use spec::{Arch, ModelSpec, Norm, MODEL_NAMES};

use crate::error::{Error, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use std::sync::Arc;

/// Everything of an architecture up to its penultimate features.
pub trait Body: Send + Sync + std::fmt::Debug {
    /// Features (N, feature_dim); `train` selects batch statistics in BatchNorm.
    fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;
    /// Width of the features.
    fn feature_dim(&self) -> usize;
}

/// Build the body of `spec`'s architecture from `vb` (parameter names relative to its root).
pub fn build_body(spec: &ModelSpec, vb: VarBuilder) -> Result<Arc<dyn Body>> {
    Ok(match &spec.arch {
        Arch::Mlp { hidden } => Arc::new(mlp::MlpBody::new(spec.input, hidden, vb)?),
        Arch::ConvNet { width, depth, norm } => Arc::new(convnet::ConvNetBody::new(spec.input, *width, *depth, *norm, vb)?),
        other => {
            return Err(Error::invalid("architecture", format!("{other:?} is not implemented yet")));
        }
    })
}
