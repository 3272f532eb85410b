//! Backdoor triggers: stamped patches (solid, checkerboard or any image) at a fixed corner or a
//! random location, blended full-image patterns, additive signals (SIG's sinusoid, FTrojan's
//! frequency pattern), image transforms (WaNet's warp, BppAttack's colour-depth squeeze) and
//! ReFool's reflections.

use super::frequency_trigger::FrequencyTrigger;
use super::reflection_trigger::ReflectionTrigger;
use super::warp_trigger::WarpTrigger;
use crate::error::{Error, Result};
use crate::rng::{stream, SeededRng};
use crate::data::Dataset;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// What a patch looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PatchFill {
    /// Every pixel of every channel set to this value (1.0 is white).
    Solid(f32),
    /// Alternating 1/0 pixels starting with 1 at the patch's top-left (BadNets' pattern).
    Checkerboard,
    /// Explicit CHW pixels of the patch (channels must match the image or be 1).
    Image { channels: usize, pixels: Vec<f32> },
    /// A row-major size x size stencil, the same on every channel: `Some(v)` sets the pixel,
    /// `None` leaves the image's own (Blind backdoors' 5x3 pattern in a 5x5 patch).
    Stencil(Vec<Option<f32>>),
}

/// Where a patch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    BottomRight,
    BottomLeft,
    TopRight,
    TopLeft,
    /// Top-left corner of the patch at (row, column).
    At(usize, usize),
    /// A uniformly random location per image.
    Random,
    /// The same patch in all four corners (Turner et al.'s label-consistent trigger, which
    /// survives horizontal flips and crops of one corner).
    FourCorners,
}

/// A full-image pattern blended into the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlendPattern {
    /// Uniform noise in [0, 1] drawn from this seed (Chen et al. 2017's random pattern).
    Noise { seed: u64 },
    /// Explicit CHW pixels matching the image shape (or one channel, broadcast).
    Image { channels: usize, pixels: Vec<f32> },
}

/// A backdoor trigger.
///
/// ```
/// use transferlab::attacks::Trigger;
/// let t = Trigger::badnets(3);
/// let mut img = vec![0.0f32; 8 * 8];
/// t.apply(&mut img, (1, 8, 8), None).unwrap();
/// assert_eq!(img[7 * 8 + 7], 1.0);
/// assert_eq!(img[0], 0.0);
/// assert!(Trigger::badnets(9).validate((1, 8, 8)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    /// A `size` x `size` patch stamped over the image.
    Patch { size: usize, fill: PatchFill, placement: Placement },
    /// x' = (1 - alpha) x + alpha * pattern.
    Blend { pattern: BlendPattern, alpha: f32 },
    /// SIG (Barni et al. 2019): x' = clip(x + delta * sin(2 pi j frequency / W)) on every channel,
    /// a horizontal sinusoid over the columns j of a W-wide image.
    Sinusoid { delta: f32, frequency: f32 },
    /// FTrojan (Wang et al. 2022): raised DCT coefficients, a fixed additive pattern.
    Frequency(FrequencyTrigger),
    /// WaNet (Nguyen & Tran 2021): a fixed smooth warp of the whole image.
    Warp(WarpTrigger),
    /// BppAttack (Wang et al. 2022): every channel quantised to `levels` values, with
    /// Floyd-Steinberg error diffusion when `dither` (the paper's default), so that the
    /// quantisation is invisible but its statistics are the trigger.
    ColorDepth { levels: u32, dither: bool },
    /// A fixed pattern added to the image, x' = clip(x + pattern, 0, 1): Low Frequency's smooth
    /// universal perturbation (Zeng et al. 2021). `channels` is 1 (the same on every channel)
    /// or the images' C; `pixels` is channels x H x W.
    Additive { channels: usize, pixels: Vec<f32> },
    /// ReFool (Liu et al. 2020): a reflection of a pool image mixed in, as a ghost or out of
    /// focus, drawn per image.
    Reflection(ReflectionTrigger),
}

impl Trigger {
    /// BadNets' default: a white `size` x `size` square in the bottom-right corner
    /// (BackdoorBench uses 3x3).
    pub fn badnets(size: usize) -> Self {
        Trigger::Patch { size, fill: PatchFill::Solid(1.0), placement: Placement::BottomRight }
    }

    /// A checkerboard patch in the bottom-right corner.
    pub fn checkerboard(size: usize) -> Self {
        Trigger::Patch { size, fill: PatchFill::Checkerboard, placement: Placement::BottomRight }
    }

    /// Blended's default (Chen et al. 2017): random noise blended at alpha 0.2.
    pub fn blend_noise(seed: u64, alpha: f32) -> Self {
        Trigger::Blend { pattern: BlendPattern::Noise { seed }, alpha }
    }

    /// SIG's signal with BackdoorBench's defaults: delta 40/255, 6 periods across the image.
    /// (Barni et al. train with delta 20/255 on MNIST-sized digits and test with more.)
    pub fn sig() -> Self {
        Trigger::Sinusoid { delta: 40.0 / 255.0, frequency: 6.0 }
    }

    /// FTrojan's trigger with the paper's CIFAR-10 defaults ([`FrequencyTrigger::default`]).
    pub fn ftrojan() -> Self {
        Trigger::Frequency(FrequencyTrigger::default())
    }

    /// WaNet's warp with the paper's CIFAR-10 defaults ([`WarpTrigger::default`]).
    pub fn wanet() -> Self {
        Trigger::Warp(WarpTrigger::default())
    }

    /// BppAttack's squeeze with BackdoorBench's defaults: 8 levels per channel (3 bits),
    /// dithered.
    pub fn bpp() -> Self {
        Trigger::ColorDepth { levels: 8, dither: true }
    }

    /// Blind backdoors' pattern (Bagdasaryan & Shmatikov 2021, the authors' `PatternSynthesizer`):
    /// a 5x3 pattern of white and black pixels, the rest of its 5x5 patch transparent, with its
    /// top-left at row 3, column 23 (the top right of a 32x32 image; other sizes need
    /// [`Trigger::at`]).
    pub fn blind_pattern() -> Self {
        let (w, b, o) = (Some(1.0), Some(0.0), None);
        #[rustfmt::skip]
        let cells = vec![
            w, b, w, o, o,
            o, w, o, o, o,
            o, o, b, o, o,
            o, w, o, o, o,
            w, b, w, o, o,
        ];
        Trigger::Patch { size: 5, fill: PatchFill::Stencil(cells), placement: Placement::At(3, 23) }
    }

    /// The same trigger at another placement (patches only).
    pub fn at(self, placement: Placement) -> Self {
        match self {
            Trigger::Patch { size, fill, .. } => Trigger::Patch { size, fill, placement },
            other => other,
        }
    }

    /// Check that the trigger fits images of `shape` (C, H, W).
    pub fn validate(&self, shape: (usize, usize, usize)) -> Result<()> {
        let (c, h, w) = shape;
        match self {
            Trigger::Patch { size, fill, placement } => {
                if *size == 0 {
                    return Err(Error::invalid("trigger", "a patch must be at least 1x1"));
                }
                if *size > h || *size > w {
                    return Err(Error::invalid(
                        "trigger",
                        format!("a {size}x{size} patch is larger than the {h}x{w} image; use a patch of at most {}", h.min(w)),
                    ));
                }
                if let Placement::At(r, col) = placement {
                    if r + size > h || col + size > w {
                        return Err(Error::invalid(
                            "trigger placement",
                            format!("a {size}x{size} patch at ({r}, {col}) extends past the {h}x{w} image"),
                        ));
                    }
                }
                if let PatchFill::Stencil(cells) = fill {
                    if cells.len() != size * size {
                        return Err(Error::invalid("trigger", format!("stencil has {} cells, {} expected for {size}x{size}", cells.len(), size * size)));
                    }
                }
                if let PatchFill::Image { channels, pixels } = fill {
                    if *channels != 1 && *channels != c {
                        return Err(Error::invalid("trigger", format!("patch has {channels} channels, images have {c}")));
                    }
                    if pixels.len() != channels * size * size {
                        return Err(Error::invalid(
                            "trigger",
                            format!("patch image has {} values, {} expected for {channels}x{size}x{size}", pixels.len(), channels * size * size),
                        ));
                    }
                }
            }
            Trigger::Sinusoid { delta, frequency } => {
                if !(delta.is_finite() && *delta > 0.0 && *delta <= 1.0) {
                    return Err(Error::invalid("sinusoid trigger", format!("delta {delta} is outside (0, 1]; SIG uses 40/255 on images in [0, 1]")));
                }
                if !(frequency.is_finite() && *frequency > 0.0) {
                    return Err(Error::invalid("sinusoid trigger", format!("frequency {frequency} must be a positive number of periods across the image; SIG uses 6")));
                }
            }
            Trigger::Frequency(t) => t.validate(shape)?,
            Trigger::Warp(t) => t.validate(shape)?,
            Trigger::Reflection(t) => t.validate(shape)?,
            Trigger::Additive { channels, pixels } => {
                if *channels != 1 && *channels != c {
                    return Err(Error::invalid("trigger", format!("additive pattern has {channels} channels, images have {c}")));
                }
                if pixels.len() != channels * h * w {
                    return Err(Error::invalid("trigger", format!("additive pattern has {} values, {} expected for {channels}x{h}x{w}", pixels.len(), channels * h * w)));
                }
                if pixels.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid("trigger", "additive pattern has a value that is not finite"));
                }
            }
            Trigger::ColorDepth { levels, .. } => {
                if !(2..=256).contains(levels) {
                    return Err(Error::invalid("colour-depth trigger", format!("{levels} levels per channel; use 2 to 256 (BppAttack: 8)")));
                }
            }
            Trigger::Blend { pattern, alpha } => {
                if !(0.0..=1.0).contains(alpha) {
                    return Err(Error::invalid("blend alpha", format!("{alpha} is outside [0, 1]")));
                }
                if let BlendPattern::Image { channels, pixels } = pattern {
                    if *channels != 1 && *channels != c {
                        return Err(Error::invalid("trigger", format!("blend pattern has {channels} channels, images have {c}")));
                    }
                    if pixels.len() != channels * h * w {
                        return Err(Error::invalid(
                            "trigger",
                            format!("blend pattern has {} values, {} expected for {channels}x{h}x{w}", pixels.len(), channels * h * w),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stamp the trigger into one CHW image in place. `rng` is needed for random placement.
    pub fn apply(&self, image: &mut [f32], shape: (usize, usize, usize), rng: Option<&mut SeededRng>) -> Result<()> {
        self.validate(shape)?;
        let (c, h, w) = shape;
        if image.len() != c * h * w {
            return Err(Error::shape("trigger", format!("image has {} values, shape {shape:?} needs {}", image.len(), c * h * w)));
        }
        match self {
            Trigger::Patch { size, fill, placement } => {
                let s = *size;
                let corners = [(h - s, w - s), (h - s, 0), (0, w - s), (0, 0)];
                let origins: Vec<(usize, usize)> = match placement {
                    Placement::BottomRight => vec![corners[0]],
                    Placement::BottomLeft => vec![corners[1]],
                    Placement::TopRight => vec![corners[2]],
                    Placement::TopLeft => vec![corners[3]],
                    Placement::FourCorners => corners.to_vec(),
                    Placement::At(r, col) => vec![(*r, *col)],
                    Placement::Random => {
                        let rng = rng.ok_or_else(|| Error::invalid("trigger", "random placement needs a random generator"))?;
                        vec![(rng.random_range(0..=h - s), rng.random_range(0..=w - s))]
                    }
                };
                for (r0, c0) in origins {
                    for ch in 0..c {
                        for i in 0..s {
                            for j in 0..s {
                                let v = match fill {
                                    PatchFill::Solid(v) => *v,
                                    PatchFill::Checkerboard => ((i + j + 1) % 2) as f32,
                                    PatchFill::Image { channels, pixels } => {
                                        let pc = if *channels == 1 { 0 } else { ch };
                                        pixels[(pc * s + i) * s + j]
                                    }
                                    PatchFill::Stencil(cells) => match cells[i * s + j] {
                                        Some(v) => v,
                                        None => continue,
                                    },
                                };
                                image[(ch * h + r0 + i) * w + c0 + j] = v;
                            }
                        }
                    }
                }
            }
            Trigger::Blend { pattern, alpha } => {
                let pat = blend_pixels(pattern, shape);
                for (x, p) in image.iter_mut().zip(pat.iter()) {
                    *x = (1.0 - alpha) * *x + alpha * p;
                }
            }
            Trigger::Sinusoid { .. } | Trigger::Frequency(_) | Trigger::Additive { .. } => {
                let delta = self.additive_pattern(shape)?.expect("an additive trigger");
                for (x, d) in image.iter_mut().zip(&delta) {
                    *x = (*x + d).clamp(0.0, 1.0);
                }
            }
            Trigger::Warp(t) => t.warp(image, shape)?,
            Trigger::ColorDepth { levels, dither } => squeeze(image, shape, *levels, *dither),
            // Without a generator, the first draw of a fixed one: the same reflection each call.
            Trigger::Reflection(t) => match rng {
                Some(rng) => t.apply(image, rng),
                None => t.apply(image, &mut stream(0, "trigger.reflection")),
            },
        }
        Ok(())
    }

    /// What an additive trigger (SIG, FTrojan, Low Frequency) adds to every image before clipping to [0, 1],
    /// CHW; `None` for patches and blends, which replace pixels rather than add to them.
    pub fn additive_pattern(&self, shape: (usize, usize, usize)) -> Result<Option<Vec<f32>>> {
        let (c, h, w) = shape;
        match self {
            Trigger::Sinusoid { delta, frequency } => {
                self.validate(shape)?;
                let row: Vec<f32> = (0..w)
                    .map(|j| delta * (2.0 * std::f32::consts::PI * j as f32 * frequency / w as f32).sin())
                    .collect();
                Ok(Some((0..c * h).flat_map(|_| row.iter().copied()).collect()))
            }
            Trigger::Frequency(t) => Ok(Some(t.perturbation(shape)?)),
            Trigger::Additive { channels, pixels } => {
                self.validate(shape)?;
                Ok(Some(if *channels == c { pixels.clone() } else { (0..c).flat_map(|_| pixels.iter().copied()).collect() }))
            }
            _ => Ok(None),
        }
    }

    /// A copy of `ds` with the trigger applied to the samples at `indices` (random placements
    /// drawn from `seed`); labels are unchanged.
    pub fn apply_to(&self, ds: &Dataset, indices: &[usize], seed: u64) -> Result<Dataset> {
        self.validate(ds.shape)?;
        let mut out = ds.clone();
        let mut rng = stream(seed, "trigger.placement");
        for &i in indices {
            if i >= ds.len() {
                return Err(Error::invalid("sample index", format!("{i} is out of range for {} samples", ds.len())));
            }
            self.apply(out.image_mut(i), ds.shape, Some(&mut rng))?;
        }
        Ok(out)
    }

    /// The trigger drawn on a black image of `shape` (additive signals on mid-grey), for display.
    pub fn preview(&self, shape: (usize, usize, usize)) -> Result<Vec<f32>> {
        let mut img = vec![0.0; shape.0 * shape.1 * shape.2];
        let mut rng = stream(0, "trigger.preview");
        match self {
            Trigger::Blend { pattern, .. } => img = blend_pixels(pattern, shape),
            // An additive signal shows on mid-grey, where it is not clipped.
            Trigger::Sinusoid { .. } | Trigger::Frequency(_) | Trigger::Additive { .. } => {
                img = vec![0.5; img.len()];
                self.apply(&mut img, shape, None)?;
            }
            // A transform shows on a pattern: grid lines for a warp, a smooth ramp for a squeeze.
            Trigger::Warp(_) => {
                let (_, h, w) = shape;
                img = (0..img.len()).map(|p| if (p % w) % 4 == 0 || ((p / w) % h) % 4 == 0 { 1.0 } else { 0.0 }).collect();
                self.apply(&mut img, shape, None)?;
            }
            Trigger::ColorDepth { .. } => {
                let (_, h, w) = shape;
                img = (0..img.len()).map(|p| ((p % w) + (p / w) % h) as f32 / (w + h - 2).max(1) as f32).collect();
                self.apply(&mut img, shape, None)?;
            }
            _ => self.apply(&mut img, shape, Some(&mut rng))?,
        }
        Ok(img)
    }
}

/// Quantise every channel to `levels` values in [0, 1]; with `dither`, Floyd-Steinberg error
/// diffusion in raster order (7/16 right, 3/16 below-left, 5/16 below, 1/16 below-right).
fn squeeze(image: &mut [f32], shape: (usize, usize, usize), levels: u32, dither: bool) {
    let (c, h, w) = shape;
    let steps = (levels - 1) as f32;
    for plane in image.chunks_mut(h * w).take(c) {
        for i in 0..h {
            for j in 0..w {
                let old = plane[i * w + j];
                let new = ((old * steps).round() / steps).clamp(0.0, 1.0);
                plane[i * w + j] = new;
                if !dither {
                    continue;
                }
                let err = old - new;
                let mut spread = |r: usize, col: isize, weight: f32| {
                    if r < h && col >= 0 && (col as usize) < w {
                        plane[r * w + col as usize] += err * weight;
                    }
                };
                let j = j as isize;
                spread(i, j + 1, 7.0 / 16.0);
                spread(i + 1, j - 1, 3.0 / 16.0);
                spread(i + 1, j, 5.0 / 16.0);
                spread(i + 1, j + 1, 1.0 / 16.0);
            }
        }
    }
}

fn blend_pixels(pattern: &BlendPattern, shape: (usize, usize, usize)) -> Vec<f32> {
    let (c, h, w) = shape;
    match pattern {
        BlendPattern::Noise { seed } => {
            let mut rng = stream(*seed, "trigger.blend.noise");
            (0..c * h * w).map(|_| rng.random::<f32>()).collect()
        }
        BlendPattern::Image { channels, pixels } => {
            if *channels == c {
                pixels.clone()
            } else {
                (0..c).flat_map(|_| pixels.iter().copied()).collect()
            }
        }
    }
}
