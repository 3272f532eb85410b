//! FTrojan's trigger (Wang et al. 2022, "An Invisible Black-box Backdoor Attack through
//! Frequency Domain", ECCV): a few fixed DCT coefficients raised in the chrominance channels.
//!
//! FTrojan converts the image to YCrCb (with OpenCV; its code calls it YUV), cuts each chosen
//! channel into `window` x `window` blocks, adds `magnitude` to the coefficients at `positions`
//! of each block's orthonormal 2-D DCT-II, transforms back and converts to RGB. Every one of
//! those steps is linear, so the trigger is one fixed additive pattern: the DCT basis images of
//! the raised coefficients, mapped from YCrCb to RGB. That is what [`FrequencyTrigger::perturbation`]
//! computes; stamping adds it and clips to [0, 1]. Deviation: FTrojan rounds the poisoned image
//! to 8 bits; our images stay f32, so nothing of the pattern is lost to rounding.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// FTrojan's frequency-domain trigger.
///
/// `Default` is the paper's CIFAR-10 setting (BackdoorBench's `ftrojann` defaults): magnitude
/// 30 on the 0-255 scale, one 32x32 window, coefficients (15, 15) (mid frequency) and (31, 31)
/// (high frequency) raised in channels 1 and 2 of YCrCb.
///
/// ```
/// use transferlab::attacks::FrequencyTrigger;
/// let t = FrequencyTrigger::default();
/// let delta = t.perturbation((3, 32, 32)).unwrap();
/// let peak = delta.iter().fold(0.0f32, |m, v| m.max(v.abs()));
/// assert!(peak > 0.0 && peak < 0.2); // invisible: a few grey levels per pixel
/// assert!(t.validate((1, 8, 8)).is_err()); // the 32-pixel window does not tile an 8x8 image
/// let small = FrequencyTrigger::scaled_to(8, false);
/// assert_eq!(small.positions, vec![(3, 3), (7, 7)]);
/// assert!(small.validate((1, 8, 8)).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrequencyTrigger {
    /// Added to each raised DCT coefficient, on the 0-255 pixel scale.
    pub magnitude: f32,
    /// Side of the square blocks the DCT is taken over; must divide the image's height and width.
    pub window: usize,
    /// The raised coefficients (row, column) within each block.
    pub positions: Vec<(usize, usize)>,
    /// The channels raised: of YCrCb when `yuv`, else of the image itself.
    pub channels: Vec<usize>,
    /// Work in YCrCb (RGB images only), so that the pattern sits in colour, not brightness.
    pub yuv: bool,
}

impl Default for FrequencyTrigger {
    fn default() -> Self {
        Self { magnitude: 30.0, window: 32, positions: vec![(15, 15), (31, 31)], channels: vec![1, 2], yuv: true }
    }
}

impl FrequencyTrigger {
    /// The paper's trigger for another block size: the same magnitude, coefficients at the same
    /// relative places (mid `window/2 - 1` and highest `window - 1`), in the chrominance channels
    /// when `yuv`, else in channel 0 (for grayscale images).
    pub fn scaled_to(window: usize, yuv: bool) -> Self {
        let mid = (window / 2).saturating_sub(1);
        let high = window.saturating_sub(1);
        Self {
            window,
            positions: vec![(mid, mid), (high, high)],
            channels: if yuv { vec![1, 2] } else { vec![0] },
            yuv,
            ..Self::default()
        }
    }

    /// Check the trigger against images of `shape` (C, H, W).
    pub fn validate(&self, shape: (usize, usize, usize)) -> Result<()> {
        let (c, h, w) = shape;
        if !self.magnitude.is_finite() {
            return Err(Error::invalid("frequency trigger", format!("magnitude {} is not a number; FTrojan uses 30", self.magnitude)));
        }
        if self.window == 0 || h % self.window != 0 || w % self.window != 0 {
            return Err(Error::invalid(
                "frequency trigger",
                format!(
                    "a {0}x{0} DCT window does not tile a {h}x{w} image; use a window that divides both sides (FrequencyTrigger::scaled_to({1}, ..))",
                    self.window,
                    gcd(h, w)
                ),
            ));
        }
        if let Some(&(p, q)) = self.positions.iter().find(|&&(p, q)| p >= self.window || q >= self.window) {
            return Err(Error::invalid(
                "frequency trigger",
                format!("coefficient ({p}, {q}) is outside the {0}x{0} window; positions run from 0 to {1}", self.window, self.window - 1),
            ));
        }
        if self.positions.is_empty() || self.channels.is_empty() {
            return Err(Error::invalid("frequency trigger", "no coefficient or no channel to raise; FTrojan raises (15, 15) and (31, 31) in channels 1 and 2"));
        }
        if self.yuv && c != 3 {
            return Err(Error::invalid(
                "frequency trigger",
                format!("YCrCb needs RGB images and these have {c} channel(s); set yuv to false (FrequencyTrigger::scaled_to(window, false))"),
            ));
        }
        if let Some(ch) = self.channels.iter().find(|&&ch| ch >= c) {
            return Err(Error::invalid("frequency trigger", format!("channel {ch} does not exist in images with {c} channel(s)")));
        }
        Ok(())
    }

    /// The additive pattern in image units ([0, 1] scale), CHW: what stamping adds before it clips.
    pub fn perturbation(&self, shape: (usize, usize, usize)) -> Result<Vec<f32>> {
        self.validate(shape)?;
        let (c, h, w) = shape;
        let n = self.window;
        let basis = dct_basis(n);
        // One block's pattern: the sum of the raised coefficients' basis images.
        let mut block = vec![0.0f64; n * n];
        for &(p, q) in &self.positions {
            for i in 0..n {
                for j in 0..n {
                    block[i * n + j] += self.magnitude as f64 * basis[p * n + i] * basis[q * n + j] / 255.0;
                }
            }
        }
        // Per working channel (YCrCb or the image's own), the block tiled over the image.
        let mut working = vec![0.0f64; c * h * w];
        for &ch in &self.channels {
            for i in 0..h {
                for j in 0..w {
                    working[(ch * h + i) * w + j] = block[(i % n) * n + j % n];
                }
            }
        }
        if !self.yuv {
            return Ok(working.into_iter().map(|v| v as f32).collect());
        }
        // YCrCb -> RGB without the 128 offsets: the offsets cancel in a difference.
        let plane = h * w;
        let mut rgb = vec![0.0f32; c * plane];
        for k in 0..plane {
            let (y, cr, cb) = (working[k], working[plane + k], working[2 * plane + k]);
            rgb[k] = (y + 1.403 * cr) as f32;
            rgb[plane + k] = (y - 0.714 * cr - 0.344 * cb) as f32;
            rgb[2 * plane + k] = (y + 1.773 * cb) as f32;
        }
        Ok(rgb)
    }
}

/// The orthonormal DCT-II matrix, row k = frequency k: `basis[k * n + i]`.
pub(super) fn dct_basis(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for k in 0..n {
        let scale = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
        for i in 0..n {
            m[k * n + i] = scale * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos();
        }
    }
    m
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basis_is_orthonormal() {
        let n = 8;
        let b = dct_basis(n);
        for k in 0..n {
            for l in 0..n {
                let dot: f64 = (0..n).map(|i| b[k * n + i] * b[l * n + i]).sum();
                assert!((dot - if k == l { 1.0 } else { 0.0 }).abs() < 1e-12, "{k} {l} {dot}");
            }
        }
    }
}
