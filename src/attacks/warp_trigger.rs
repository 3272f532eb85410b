//! WaNet's trigger (Nguyen & Tran 2021, "WaNet - Imperceptible Warping-based Backdoor
//! Attack", ICLR): a fixed, smooth warping field. `k` x `k` random control offsets, scaled to
//! unit mean magnitude, upsampled bicubically to the image and multiplied by `strength / H`,
//! displace every pixel by a fraction of a pixel; the image is resampled bilinearly there.

use crate::error::{Error, Result};
use crate::rng::{stream, SeededRng};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// WaNet's warping trigger. `Default` is the paper's CIFAR-10 setting (k = 4, s = 0.5, grid
/// rescale 1), the field drawn from seed 0.
///
/// ```
/// use transferlab::attacks::WarpTrigger;
/// let t = WarpTrigger::default();
/// let img: Vec<f32> = (0..3 * 32 * 32).map(|i| ((i % 32) as f32 / 31.0)).collect();
/// let mut warped = img.clone();
/// t.warp(&mut warped, (3, 32, 32)).unwrap();
/// let moved = img.iter().zip(&warped).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
/// assert!(moved > 0.0 && moved < 0.05); // a fraction of a pixel on a 1/31-per-pixel ramp
/// assert!(WarpTrigger { k: 1, ..Default::default() }.validate((3, 32, 32)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarpTrigger {
    /// Control grid side.
    pub k: usize,
    /// Warping strength s: the mean displacement is s / H of the half-image (in [-1, 1] units).
    pub strength: f32,
    /// BackdoorBench's `grid_rescale`: the displaced grid is multiplied by this (1: none).
    pub grid_rescale: f32,
    /// Seeds the control offsets.
    pub seed: u64,
}

impl Default for WarpTrigger {
    fn default() -> Self {
        Self { k: 4, strength: 0.5, grid_rescale: 1.0, seed: 0 }
    }
}

impl WarpTrigger {
    pub fn validate(&self, shape: (usize, usize, usize)) -> Result<()> {
        let (_, h, w) = shape;
        if self.k < 2 || self.k > h.min(w) {
            return Err(Error::invalid("warp trigger", format!("k = {} control points per side must be in 2..={} for {h}x{w} images; WaNet uses 4", self.k, h.min(w))));
        }
        if !(self.strength.is_finite() && self.strength > 0.0) || !(self.grid_rescale.is_finite() && self.grid_rescale > 0.0) {
            return Err(Error::invalid("warp trigger", format!("strength {} and grid rescale {} must be positive (WaNet: 0.5 and 1)", self.strength, self.grid_rescale)));
        }
        if h < 2 || w < 2 {
            return Err(Error::invalid("warp trigger", "images must be at least 2x2 to warp"));
        }
        Ok(())
    }

    /// The sampling grid, `H x W` pairs (x, y) in [-1, 1] (align-corners coordinates): where
    /// each output pixel reads from.
    pub fn grid(&self, shape: (usize, usize, usize)) -> Result<Vec<(f32, f32)>> {
        self.validate(shape)?;
        Ok(displaced_grid(&self.field(shape), shape, self.strength, self.grid_rescale, None))
    }

    /// The warping field: `H x W` offsets (x, y) of unit mean magnitude before scaling.
    fn field(&self, shape: (usize, usize, usize)) -> Vec<(f32, f32)> {
        let (_, h, w) = shape;
        let mut rng = stream(self.seed, "wanet.field");
        let k = self.k;
        let control: Vec<f32> = (0..2 * k * k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let mean_abs = control.iter().map(|v| v.abs()).sum::<f32>() / control.len() as f32;
        let control: Vec<f32> = control.iter().map(|v| v / mean_abs.max(f32::MIN_POSITIVE)).collect();
        let ux = upsample_bicubic(&control[..k * k], k, h, w);
        let uy = upsample_bicubic(&control[k * k..], k, h, w);
        ux.into_iter().zip(uy).collect()
    }

    /// Warp one CHW image in place.
    pub fn warp(&self, image: &mut [f32], shape: (usize, usize, usize)) -> Result<()> {
        let grid = self.grid(shape)?;
        resample(image, shape, &grid);
        Ok(())
    }

    /// Warp one CHW image with WaNet's noise mode: the trigger's grid plus uniform noise of up
    /// to one pixel per axis, so that the model learns to ignore warps that are not the trigger.
    pub fn warp_with_noise(&self, image: &mut [f32], shape: (usize, usize, usize), rng: &mut SeededRng) -> Result<()> {
        self.validate(shape)?;
        let grid = displaced_grid(&self.field(shape), shape, self.strength, self.grid_rescale, Some(rng));
        resample(image, shape, &grid);
        Ok(())
    }
}

/// identity + s * field / H, rescaled, plus noise in [-1, 1] / H per axis if given, clamped to
/// [-1, 1] (the WaNet code's order).
fn displaced_grid(field: &[(f32, f32)], shape: (usize, usize, usize), s: f32, rescale: f32, mut noise: Option<&mut SeededRng>) -> Vec<(f32, f32)> {
    let (_, h, w) = shape;
    let lin = |i: usize, n: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            let (fx, fy) = field[i * w + j];
            let mut x = (lin(j, w) + s * fx / h as f32) * rescale;
            let mut y = (lin(i, h) + s * fy / h as f32) * rescale;
            if let Some(rng) = noise.as_deref_mut() {
                x += (rng.random::<f32>() * 2.0 - 1.0) / h as f32;
                y += (rng.random::<f32>() * 2.0 - 1.0) / h as f32;
            }
            out.push((x.clamp(-1.0, 1.0), y.clamp(-1.0, 1.0)));
        }
    }
    out
}

/// Bilinear resampling of every channel at `grid` (align-corners coordinates).
fn resample(image: &mut [f32], shape: (usize, usize, usize), grid: &[(f32, f32)]) {
    let (c, h, w) = shape;
    let src = image.to_vec();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for (p, &(gx, gy)) in grid.iter().enumerate() {
            let x = (gx + 1.0) / 2.0 * (w - 1) as f32;
            let y = (gy + 1.0) / 2.0 * (h - 1) as f32;
            let (x0, y0) = (x.floor().max(0.0) as usize, y.floor().max(0.0) as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (ax, ay) = (x - x0 as f32, y - y0 as f32);
            let top = plane[y0 * w + x0] * (1.0 - ax) + plane[y0 * w + x1] * ax;
            let bottom = plane[y1 * w + x0] * (1.0 - ax) + plane[y1 * w + x1] * ax;
            image[ch * h * w + p] = top * (1.0 - ay) + bottom * ay;
        }
    }
}

/// Keys' cubic convolution kernel with a = -0.75 (PyTorch's bicubic).
fn cubic(t: f32) -> f32 {
    let a = -0.75;
    let t = t.abs();
    if t <= 1.0 {
        ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    } else if t < 2.0 {
        ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    } else {
        0.0
    }
}

/// A `k` x `k` grid upsampled to `h` x `w` bicubically with aligned corners and clamped borders
/// (PyTorch's `interpolate(mode="bicubic", align_corners=True)`).
fn upsample_bicubic(values: &[f32], k: usize, h: usize, w: usize) -> Vec<f32> {
    let at = |r: isize, c: isize| values[(r.clamp(0, k as isize - 1) as usize) * k + c.clamp(0, k as isize - 1) as usize];
    let src = |i: usize, n: usize| if n > 1 { i as f32 * (k - 1) as f32 / (n - 1) as f32 } else { 0.0 };
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        let y = src(i, h);
        let (y0, ty) = (y.floor() as isize, y - y.floor());
        for j in 0..w {
            let x = src(j, w);
            let (x0, tx) = (x.floor() as isize, x - x.floor());
            let mut v = 0.0;
            for m in -1..=2isize {
                let wy = cubic(m as f32 - ty);
                for n in -1..=2isize {
                    v += wy * cubic(n as f32 - tx) * at(y0 + m, x0 + n);
                }
            }
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_upsampling_interpolates_the_control_points_and_keeps_constants() {
        let v = [0.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 2.0, 3.0, 4.0, 5.0, 3.0, 4.0, 5.0, 6.0];
        let up = upsample_bicubic(&v, 4, 10, 10);
        // Aligned corners: output pixels 0, 3, 6, 9 sit exactly on the control points.
        for (i, r) in [0, 3, 6, 9].iter().enumerate() {
            for (j, c) in [0, 3, 6, 9].iter().enumerate() {
                assert!((up[r * 10 + c] - v[i * 4 + j]).abs() < 1e-5, "({r}, {c})");
            }
        }
        // The weights sum to one: a constant stays constant.
        assert!(upsample_bicubic(&[0.7; 16], 4, 10, 10).iter().all(|x| (x - 0.7).abs() < 1e-6));
    }

    #[test]
    fn the_identity_grid_resamples_to_the_same_image() {
        let shape = (1, 5, 7);
        let img: Vec<f32> = (0..35).map(|i| i as f32).collect();
        let zero = vec![(0.0, 0.0); 35];
        let grid = displaced_grid(&zero, shape, 0.5, 1.0, None);
        let mut out = img.clone();
        resample(&mut out, shape, &grid);
        for (a, b) in img.iter().zip(&out) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
