//! Placeholder until the data module lands; replaced by the full transforms.
use crate::rng::SeededRng;

/// Random crop with zero padding and random horizontal flip, applied per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    pub crop_padding: usize,
    pub hflip: bool,
}

impl Augment {
    pub fn none() -> Self {
        Self { crop_padding: 0, hflip: false }
    }
    pub fn cifar() -> Self {
        Self { crop_padding: 4, hflip: true }
    }
    pub fn apply_batch(&self, _pixels: &mut [f32], _shape: (usize, usize, usize), _rng: &mut SeededRng) -> crate::Result<()> { Ok(()) }
}
