//! ReFool's trigger (Liu et al. 2020, "Reflection Backdoor"): a reflection, as a window or a
//! glass frame would add it, of an image drawn from a pool, mixed into the input in linear
//! light either as a ghost (the reflection twice, shifted) or out of focus (blurred, strongest
//! in the middle). Every poisoned image gets its own reflection and its own reflection model.

use crate::data::{resize, resize_image, to_grayscale, to_rgb, Dataset};
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::stats::normal_cdf;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The displays' gamma: ReFool mixes the image and the reflection in linear light.
const GAMMA: f32 = 2.2;

/// A pool of reflection images and the mixing settings. Defaults from BackdoorBench
/// (`config/attack/refool/default.yaml`, `blend_images` from the authors' code): the image
/// weighted 0.4 in linear light (`alpha_t`; the authors draw it from [0.55, 0.95], BackdoorBench
/// fixes it because a random weight made ASR unstable), the ghost effect for 49 % of images
/// (`ghost_rate`), otherwise focal blur with sigma drawn from [1, 5].
///
/// Deviations: the ghost's shift is drawn from 3-8 pixels on a 32-pixel side and scaled with
/// the side (on 8x8 digits, 1-2 pixels); the ghost's crop is resized back with bilinear rather
/// than bicubic interpolation. The pool: BackdoorBench uses the authors' 160 selected
/// reflection images (`Refool-SelectedReflectionImages`, chosen by training models on
/// candidates); any real images serve (the benchmarks here use the ImageNet samples of
/// `../shared/data/real-samples`), without that selection step.
///
/// ```
/// use transferlab::attacks::ReflectionTrigger;
/// use transferlab::data::Dataset;
/// let pool = Dataset::new(vec![0.8; 2 * 3 * 8 * 8], (3, 8, 8), vec![0, 0], vec!["pool".into()])?;
/// let t = ReflectionTrigger::new(&pool, (3, 8, 8))?;
/// assert_eq!((t.alpha_t, t.ghost_rate, t.len()), (0.4, 0.49, 2));
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReflectionTrigger {
    /// The reflection images, CHW at the attacked images' shape, one after another.
    pub pool: Vec<f32>,
    /// The shape of every pool image (and of the images the trigger applies to).
    pub shape: (usize, usize, usize),
    /// Weight of the image itself in linear light (the reflection has the rest).
    pub alpha_t: f32,
    /// Probability of the ghost effect; otherwise the reflection is out of focus.
    pub ghost_rate: f32,
}

impl ReflectionTrigger {
    /// A trigger drawing its reflections from `pool`, resized (bilinear) to `shape`'s sides and
    /// converted to its channels (RGB to luminance or grey to RGB).
    pub fn new(pool: &Dataset, shape: (usize, usize, usize)) -> Result<Self> {
        let (c, h, w) = shape;
        if pool.is_empty() {
            return Err(Error::invalid("reflection pool", "it is empty; give at least one image (BackdoorBench: the authors' 160 reflection images)"));
        }
        let sized = resize(pool, (h, w))?;
        let converted = match (sized.shape.0, c) {
            (a, b) if a == b => sized,
            (3, 1) => to_grayscale(&sized)?,
            (1, 3) => to_rgb(&sized)?,
            (a, b) => return Err(Error::invalid("reflection pool", format!("{a}-channel images for {b}-channel inputs; convert them first"))),
        };
        Ok(Self { pool: converted.pixels().to_vec(), shape, alpha_t: 0.4, ghost_rate: 0.49 })
    }

    /// The number of reflection images.
    pub fn len(&self) -> usize {
        let n = self.shape.0 * self.shape.1 * self.shape.2;
        if n == 0 { 0 } else { self.pool.len() / n }
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check that the trigger fits images of `shape`.
    pub fn validate(&self, shape: (usize, usize, usize)) -> Result<()> {
        if shape != self.shape {
            return Err(Error::invalid("reflection trigger", format!("its pool holds {:?} images; the data are {shape:?}: build it with ReflectionTrigger::new(pool, data.shape)", self.shape)));
        }
        if self.is_empty() || self.pool.len() % (shape.0 * shape.1 * shape.2) != 0 {
            return Err(Error::invalid("reflection trigger", format!("its pool has {} values, not a whole number of {shape:?} images", self.pool.len())));
        }
        if !(self.alpha_t > 0.0 && self.alpha_t < 1.0) || !(0.0..=1.0).contains(&self.ghost_rate) {
            return Err(Error::invalid(
                "reflection trigger",
                format!("alpha_t {} must be in (0, 1) and ghost_rate {} in [0, 1] (BackdoorBench: 0.4 and 0.49)", self.alpha_t, self.ghost_rate),
            ));
        }
        Ok(())
    }

    /// Mix a reflection into one CHW image in place, drawing the reflection image and the
    /// reflection model's parameters from `rng`.
    pub fn apply(&self, image: &mut [f32], rng: &mut SeededRng) {
        let (c, h, w) = self.shape;
        let n = c * h * w;
        let k = rng.random_range(0..self.len());
        let reflection: Vec<f32> = self.pool[k * n..(k + 1) * n].iter().map(|v| v.clamp(0.0, 1.0).powf(GAMMA)).collect();
        let linear: Vec<f32> = image.iter().map(|v| v.clamp(0.0, 1.0).powf(GAMMA)).collect();
        let alpha_t = self.alpha_t;
        let layer = if rng.random::<f32>() < self.ghost_rate { self.ghost(&reflection, rng) } else { self.out_of_focus(&reflection, &linear, rng) };
        for ((x, t), r) in image.iter_mut().zip(&linear).zip(&layer) {
            *x = (r + t * alpha_t).powf(1.0 / GAMMA).clamp(0.0, 1.0);
        }
    }

    /// The ghost effect: the reflection and a shifted copy, weighted `a` and `1 - a`, cropped
    /// to where both lie and resized back, times `1 - alpha_t`.
    fn ghost(&self, reflection: &[f32], rng: &mut SeededRng) -> Vec<f32> {
        let (c, h, w) = self.shape;
        let scaled = |px: usize, side: usize| ((px * side) as f32 / 32.0).round().max(1.0) as usize;
        let shift = |side: usize, rng: &mut SeededRng| {
            let (lo, hi) = (scaled(3, side), scaled(8, side));
            rng.random_range(lo..=hi.max(lo)).min(side.saturating_sub(1)).max(1)
        };
        let (dy, dx) = (shift(h, rng), shift(w, rng));
        let weight = ((rng.random::<f32>().round()) - rng.random_range(0.15f32..0.5)).abs();
        let (ch, cw) = (h - dy, w - dx);
        let mut crop = vec![0f32; c * ch * cw];
        for k in 0..c {
            for y in 0..ch {
                for x in 0..cw {
                    let (yy, xx) = (y + dy, x + dx);
                    let first = reflection[(k * h + yy) * w + xx];
                    let second = reflection[(k * h + y) * w + x];
                    crop[(k * ch + y) * cw + x] = first * weight + second * (1.0 - weight);
                }
            }
        }
        let mut layer = vec![0f32; c * h * w];
        resize_image(&crop, (c, ch, cw), (h, w), &mut layer);
        layer.iter_mut().for_each(|v| *v *= 1.0 - self.alpha_t);
        layer
    }

    /// Focal blur: the reflection blurred (sigma in [1, 5]), darkened per channel where the
    /// sum with the image would overflow, and faded towards the borders by a Gaussian window,
    /// times `1 - alpha_t / 2`.
    fn out_of_focus(&self, reflection: &[f32], image: &[f32], rng: &mut SeededRng) -> Vec<f32> {
        let (c, h, w) = self.shape;
        let sigma = rng.random_range(1.0f32..5.0);
        let mut blurred = gaussian_blur(reflection, self.shape, sigma);
        let attenuation = 1.08 + rng.random::<f32>() / 10.0;
        let plane = h * w;
        for k in 0..c {
            let channel = k * plane..(k + 1) * plane;
            let (sum, count) = blurred[channel.clone()]
                .iter()
                .zip(&image[channel.clone()])
                .map(|(r, t)| r + t)
                .filter(|&s| s > 1.0)
                .fold((0f32, 0usize), |(s, n), v| (s + v, n + 1));
            let mean = (sum / (count as f32 + 1e-6)).max(1.0);
            for v in &mut blurred[channel] {
                *v = (*v - (mean - 1.0) * attenuation).clamp(0.0, 1.0);
            }
        }
        let window = gaussian_window(h.max(w), 3.0);
        let side = h.max(w);
        for k in 0..c {
            for y in 0..h {
                for x in 0..w {
                    blurred[(k * h + y) * w + x] *= window[y * side + x] * (1.0 - self.alpha_t / 2.0);
                }
            }
        }
        blurred
    }
}

/// The authors' `gen_kernel(side, nsig)`: a side x side window, the square root of the outer
/// product of a normal density's bin masses over [-nsig, nsig], scaled to a maximum of 1.
fn gaussian_window(side: usize, nsig: f64) -> Vec<f32> {
    let interval = (2.0 * nsig + 1.0) / side as f64;
    let edges: Vec<f64> = (0..=side).map(|i| -nsig - interval / 2.0 + i as f64 * (2.0 * nsig + interval) / side as f64).collect();
    let mass: Vec<f64> = edges.windows(2).map(|e| normal_cdf(e[1], 0.0, 1.0) - normal_cdf(e[0], 0.0, 1.0)).collect();
    let raw: Vec<f64> = (0..side * side).map(|i| (mass[i / side] * mass[i % side]).sqrt()).collect();
    let max = raw.iter().copied().fold(f64::MIN, f64::max).max(f64::MIN_POSITIVE);
    raw.iter().map(|v| (v / max) as f32).collect()
}

/// OpenCV's `GaussianBlur(r, (k, k), sigma)` with the authors' kernel size
/// `k = 2 ceil(2 sigma) + 1`, separable, borders mirrored without repeating the edge
/// (OpenCV's default, BORDER_REFLECT_101).
fn gaussian_blur(image: &[f32], (c, h, w): (usize, usize, usize), sigma: f32) -> Vec<f32> {
    let radius = (2.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let mirror = |i: isize, n: usize| -> usize {
        let n = n as isize;
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - m }) as usize
    };
    let mut rows = vec![0f32; image.len()];
    for k in 0..c {
        for y in 0..h {
            for x in 0..w {
                rows[(k * h + y) * w + x] = kernel.iter().enumerate().map(|(j, g)| g * image[(k * h + y) * w + mirror(x as isize + j as isize - radius, w)]).sum();
            }
        }
    }
    let mut out = vec![0f32; image.len()];
    for k in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[(k * h + y) * w + x] = kernel.iter().enumerate().map(|(j, g)| g * rows[(k * h + mirror(y as isize + j as isize - radius, h)) * w + x]).sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_matches_its_definition() {
        let w = gaussian_window(32, 3.0);
        assert!((w.iter().copied().fold(0f32, f32::max) - 1.0).abs() < 1e-6);
        // Symmetric, brightest in the middle, faint at the corners.
        assert!((w[0] - w[31 * 32 + 31]).abs() < 1e-6 && w[0] < 0.05 && w[16 * 32 + 16] > 0.9);
    }

    #[test]
    fn blur_keeps_a_constant_image_and_its_mass() {
        let flat = vec![0.3f32; 2 * 8 * 8];
        assert!(gaussian_blur(&flat, (2, 8, 8), 2.5).iter().all(|v| (v - 0.3).abs() < 1e-5));
        let mut dot = vec![0f32; 16 * 16];
        dot[8 * 16 + 8] = 1.0;
        let b = gaussian_blur(&dot, (1, 16, 16), 1.0);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-4 && b[8 * 16 + 8] < 0.2);
    }
}
