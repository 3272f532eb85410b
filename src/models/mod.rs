//! Architectures, their weights and parameter groups.
//!
//! Create a model by name ([`ModelSpec::named`]) and instantiate it ([`Network::new`]); every
//! architecture exposes its penultimate features, a replaceable head and freezable parameter
//! groups, with the parameter names of its PyTorch reference.

pub mod init;
pub mod layers;
mod backdoored;
mod badnets_cnn;
mod bagnet;
mod cifar_resnet;
mod convnet;
mod mlp;
mod inference;
mod network;
mod small_cnn;
mod preact_resnet;
mod resnet;
mod resnetv2;
mod spec;
pub mod transformer;
mod vit;
mod clip;
mod clip_tokenizer;

use resnet::BlockKind;

pub use backdoored::{checkerboard_response, Injection, TriggerDetector};
pub use network::{is_buffer, LoadMode, Network};
pub use spec::{Arch, InputNorm, ModelSpec, Norm, CIFAR10_MEAN, CIFAR10_STD, MODEL_NAMES};
pub use inference::Inference;
pub use vit::{vit_hub_names, Vit, VitConfig};
pub use clip::{l2_normalise, Clip, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use clip_tokenizer::{bytes_to_unicode, clip_vocab, ClipTokenizer, CLIP_CONTEXT, END_OF_TEXT, START_OF_TEXT};

use crate::error::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use std::sync::Arc;

/// Everything of an architecture up to its penultimate features.
pub trait Body: Send + Sync + std::fmt::Debug {
    /// Features (N, feature_dim); `train` selects batch statistics in BatchNorm.
    fn features(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;
    /// Width of the features.
    fn feature_dim(&self) -> usize;
    /// Something added to the logits by the architecture itself (an architectural backdoor's
    /// path from input to output); none for ordinary architectures.
    fn logit_offset(&self, _x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    /// The features and the output of every stage (the feature maps after each group of
    /// blocks, N x C x H x W, in order), for methods that look inside the network (attention
    /// distillation); `None` for an architecture without stages to show.
    fn features_and_stages(&self, _x: &Tensor, _train: bool) -> candle_core::Result<Option<(Tensor, Vec<Tensor>)>> {
        Ok(None)
    }
}

/// Run `blocks` on `h`, keeping (when `keep`) the output after each block count in
/// `stage_ends`: a ResNet's stage outputs.
pub(crate) fn run_stages<B>(
    blocks: &[B],
    mut h: Tensor,
    stage_ends: &[usize],
    keep: bool,
    forward: impl Fn(&B, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
    let mut stages = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        h = forward(b, &h)?;
        if keep && stage_ends.contains(&(i + 1)) {
            stages.push(h.clone());
        }
    }
    Ok((h, stages))
}

/// Build the body of `spec`'s architecture from `vb` (parameter names relative to its root).
pub fn build_body(spec: &ModelSpec, vb: VarBuilder) -> Result<Arc<dyn Body>> {
    Ok(match &spec.arch {
        Arch::Mlp { hidden } => Arc::new(mlp::MlpBody::new(spec.input, hidden, vb)?),
        Arch::ConvNet { width, depth, norm } => Arc::new(convnet::ConvNetBody::new(spec.input, *width, *depth, *norm, vb)?),
        Arch::SmallCnn => Arc::new(small_cnn::SmallCnnBody::new(spec.input, vb)?),
        Arch::BadNetsCnn => Arc::new(badnets_cnn::BadNetsCnnBody::new(spec.input, vb)?),
        Arch::CifarResNet { depth } => Arc::new(cifar_resnet::CifarResNetBody::new(spec.input.0, *depth, vb)?),
        Arch::PreActResNet18 => Arc::new(preact_resnet::PreActResNet18Body::new(spec.input.0, vb)?),
        Arch::ResNet18 => Arc::new(resnet::ResNetBody::new(spec.input.0, BlockKind::Basic, [2, 2, 2, 2], vb)?),
        Arch::ResNet50 => Arc::new(resnet::ResNetBody::new(spec.input.0, BlockKind::Bottleneck, [3, 4, 6, 3], vb)?),
        Arch::ResNetV2 { stem, widths, depths, groups } => {
            Arc::new(resnetv2::ResNetV2Body::new(spec.input.0, *stem, widths, depths, *groups, vb)?)
        }
        Arch::BagNet { width, depth, patch } => Arc::new(bagnet::BagNetBody::new(spec.input.0, *width, *depth, *patch, vb)?),
        Arch::Backdoored { base, detector } => {
            let inner = build_body(&ModelSpec { arch: (**base).clone(), ..spec.clone() }, vb)?;
            Arc::new(backdoored::BackdooredBody::new(inner, *detector, spec.num_classes))
        }
    })
}
