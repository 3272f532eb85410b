//! Synthetic image classification data with controlled structure.
//!
//! Each class has its own shape, texture and colour; every sample jitters position, size,
//! rotation, colour, texture phase and background and adds pixel noise, so the task is
//! learnable but not trivial. On top, a spurious feature can be tied to a class at a chosen
//! rate, and a class can contain an under-represented subgroup drawn differently: the
//! ingredients of bias-transfer, spurious-correlation and subgroup-robustness experiments.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::{self, normal, permutation, SeededRng};
use rand::Rng;
use rayon::prelude::*;
use std::f32::consts::PI;

/// Bit set in `attributes.group` for samples carrying the spurious feature.
pub const GROUP_SPURIOUS: u32 = 1;
/// Bit set in `attributes.group` for samples of the minority subgroup.
pub const GROUP_SUBGROUP: u32 = 2;

/// What the spurious feature looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpuriousKind {
    /// A solid magenta square in the top-left corner, side `size / 8` (at least 2 pixels).
    CornerPatch,
    /// The background is tinted orange (an even mix of its colour and orange).
    BackgroundTint,
    /// A second, co-occurring object: a yellow disc of diameter `size / 4` (at least 3
    /// pixels) in a random corner, drawn over the main object. [`object_box`] says where.
    Object,
}

/// A feature that co-occurs with one class: `rate` of that class's samples carry it, and
/// `other_rate` of every other class's (0 for a feature unique to the class).
/// Counts are exact: `round(rate * samples_per_class)` samples of the class, chosen at random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spurious {
    /// The class the feature is correlated with.
    pub class: u32,
    /// Fraction of `class`'s samples with the feature, in [0, 1].
    pub rate: f32,
    /// Fraction of each other class's samples with the feature, in [0, 1].
    pub other_rate: f32,
    /// What the feature looks like.
    pub kind: SpuriousKind,
}

impl Spurious {
    /// A feature carried by `rate` of `class`'s samples and by no other class.
    pub fn new(class: u32, rate: f32, kind: SpuriousKind) -> Self {
        Self { class, rate, other_rate: 0.0, kind }
    }
}

/// How the minority subgroup differs from the rest of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubgroupKind {
    /// The complementary hue (hue + 0.5) instead of the class colour.
    Colour,
    /// A different texture from the class's.
    Texture,
}

/// An under-represented subgroup: `round(fraction * samples_per_class)` samples of `class`
/// are drawn with a different colour or texture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subgroup {
    /// The class that contains the subgroup.
    pub class: u32,
    /// Fraction of `class`'s samples in the subgroup, in [0, 1].
    pub fraction: f32,
    /// How the subgroup is drawn differently.
    pub kind: SubgroupKind,
}

/// Configuration of [`generate`]. Defaults: 10 classes, 100 samples per class, 32x32 RGB
/// images, pixel noise with standard deviation 0.05, seed 0, no spurious feature, no
/// subgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Number of classes (at least 1).
    pub num_classes: usize,
    /// Samples generated per class (at least 1).
    pub samples_per_class: usize,
    /// Image side in pixels (at least 8); images are `(3, size, size)`.
    pub size: usize,
    /// Standard deviation of the Gaussian pixel noise (before clamping to [0, 1]).
    pub noise: f32,
    /// Seed of every random choice.
    pub seed: u64,
    /// An optional spurious feature correlated with a class.
    pub spurious: Option<Spurious>,
    /// An optional minority subgroup within a class.
    pub subgroup: Option<Subgroup>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { num_classes: 10, samples_per_class: 100, size: 32, noise: 0.05, seed: 0, spurious: None, subgroup: None }
    }
}

const SHAPES: [&str; 8] = ["circle", "square", "triangle", "cross", "ring", "bar", "diamond", "frame"];
const TEXTURES: [&str; 6] = ["solid", "hstripes", "vstripes", "checker", "dots", "diagonal"];

/// Generate the dataset: samples are ordered by class (all of class 0, then class 1, ...),
/// class names describe shape and texture (`"circle-solid"`, ...). If a spurious feature or a
/// subgroup is configured, `attributes.group` holds per sample the bits [`GROUP_SPURIOUS`]
/// and [`GROUP_SUBGROUP`] (so 0/1 with only a spurious feature). Identical for identical
/// configurations, on any machine and thread count.
///
/// ```
/// use transferlab::data::{generate, Spurious, SpuriousKind, SyntheticConfig};
/// let cfg = SyntheticConfig {
///     num_classes: 4,
///     samples_per_class: 20,
///     spurious: Some(Spurious::new(0, 0.9, SpuriousKind::CornerPatch)),
///     ..Default::default()
/// };
/// let ds = generate(&cfg)?;
/// assert_eq!(ds.shape, (3, 32, 32));
/// let flagged = ds.attributes.group.as_ref().unwrap().iter().filter(|&&g| g == 1).count();
/// assert_eq!(flagged, 18);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn generate(cfg: &SyntheticConfig) -> Result<Dataset> {
    generate_impl(cfg, None, 1.0, None)
}

/// Like [`generate`], but sample `i` is painted in the colour of class `colour_class[i]`
/// instead of its own: a colour cue that can agree with the label, be random, or point to a
/// wrong class (feature-prior and cue-conflict experiments). Shape and texture stay the
/// class's. `attributes.group` gets [`GROUP_SPURIOUS`] on the samples whose colour is their
/// own class's (replacing that bit's meaning; the subgroup bit is as in [`generate`]). Everything else, including the random
/// draws of each sample, is as in [`generate`]. Shorthand for [`generate_styled`] with only
/// `colour_class` set.
///
/// ```
/// use transferlab::data::{generate, generate_with_colours, SyntheticConfig};
/// let cfg = SyntheticConfig { num_classes: 3, samples_per_class: 2, size: 8, ..Default::default() };
/// let own = generate_with_colours(&cfg, &[0, 0, 1, 1, 2, 2])?;
/// assert_eq!(own.pixels(), generate(&cfg)?.pixels());
/// let swapped = generate_with_colours(&cfg, &[1, 0, 1, 1, 2, 0])?;
/// assert_eq!(swapped.attributes.group, Some(vec![0, 1, 1, 1, 1, 0]));
/// assert!(generate_with_colours(&cfg, &[0, 1]).is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn generate_with_colours(cfg: &SyntheticConfig, colour_class: &[u32]) -> Result<Dataset> {
    generate_styled(cfg, &SyntheticStyle { colour_class: Some(colour_class.to_vec()), ..SyntheticStyle::default() })
}

/// How [`generate_styled`] departs from [`generate`]'s look. The default departs in nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticStyle {
    /// Paint sample `i` in the colour of class `colour_class[i]` (one entry per sample); see
    /// [`generate_with_colours`].
    pub colour_class: Option<Vec<u32>>,
    /// Multiplies the period of the class textures (stripes, checks, dots), which is
    /// otherwise about 0.18 of the image side (3 pixels at 16x16, too fine for a 3x3 patch
    /// to read reliably). 2 makes them twice as coarse. Must be positive and finite.
    pub texture_scale: f32,
    /// Draw the class textures on the pixel grid instead (see [`PixelTextures`]); `None`:
    /// the usual scaled, rotated textures. Overrides `texture_scale`.
    pub pixel_textures: Option<PixelTextures>,
}

impl Default for SyntheticStyle {
    fn default() -> Self {
        Self { colour_class: None, texture_scale: 1.0, pixel_textures: None }
    }
}

/// Class textures a 3x3 patch can read: a grey pattern of period 2 on the pixel grid (not
/// rotated or scaled with the object), at a random phase, so every 2x2 cell shows the class's
/// pattern: solid (none), horizontal stripes, vertical stripes, checks, dots (one pixel of
/// four lit) and, for the sixth texture ("diagonal" in the class names: no diagonal pattern
/// has period 2), a grid (three of four lit). The pattern is *added* to the image with zero
/// mean (lit pixels brighter, unlit darker, by a lit-unlit difference, the contrast, drawn
/// per sample uniformly from `[min_contrast, max_contrast]`, so low-contrast samples drown in
/// the pixel noise), and it has period 2, so the central differences of a Sobel filter cancel
/// on it: the Sobel edges of a textured image are those of the untextured one (up to clamping
/// to [0, 1]), the outline without the texture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelTextures {
    /// Lowest per-sample contrast, in [0, 1].
    pub min_contrast: f32,
    /// Highest per-sample contrast, in [`min_contrast`](Self::min_contrast), 1].
    pub max_contrast: f32,
    /// Texture the background too, as a texture grain covering the whole scene: every patch
    /// then carries it, not only the object's (the ring's band and the cross's arms are about
    /// two pixels wide at 16x16). `false`: only the object (its coverage weights the pattern).
    pub background: bool,
}

/// [`generate`] with the departures of `style`: per-sample colours, coarser textures. With
/// `SyntheticStyle::default()` it is exactly [`generate`].
///
/// ```
/// use transferlab::data::{generate, generate_styled, SyntheticStyle, SyntheticConfig};
/// let cfg = SyntheticConfig { num_classes: 3, samples_per_class: 2, size: 16, ..Default::default() };
/// assert_eq!(generate_styled(&cfg, &SyntheticStyle::default())?.pixels(), generate(&cfg)?.pixels());
/// let coarse = generate_styled(&cfg, &SyntheticStyle { texture_scale: 2.0, ..SyntheticStyle::default() })?;
/// // Class 0 is solid (no texture to scale); class 1's stripes change.
/// assert_eq!(coarse.image(0), generate(&cfg)?.image(0));
/// assert_ne!(coarse.image(2), generate(&cfg)?.image(2));
/// assert!(generate_styled(&cfg, &SyntheticStyle { texture_scale: 0.0, ..SyntheticStyle::default() }).is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn generate_styled(cfg: &SyntheticConfig, style: &SyntheticStyle) -> Result<Dataset> {
    if let Some(t) = style.pixel_textures {
        if !((0.0..=1.0).contains(&t.min_contrast) && (t.min_contrast..=1.0).contains(&t.max_contrast)) {
            return Err(Error::invalid(
                "pixel texture contrast",
                format!("[{}, {}]; it must satisfy 0 <= min_contrast <= max_contrast <= 1", t.min_contrast, t.max_contrast),
            ));
        }
    }
    if !(style.texture_scale.is_finite() && style.texture_scale > 0.0) {
        return Err(Error::invalid("texture_scale", format!("{}; it must be positive and finite (1 = the usual texture, 2 = twice as coarse)", style.texture_scale)));
    }
    if let Some(colour_class) = &style.colour_class {
        let n = cfg.num_classes * cfg.samples_per_class;
        if colour_class.len() != n {
            return Err(Error::invalid(
                "colour classes",
                format!("{} given for {n} samples; give one class per sample (num_classes * samples_per_class)", colour_class.len()),
            ));
        }
        if let Some(&c) = colour_class.iter().find(|&&c| c as usize >= cfg.num_classes) {
            return Err(Error::invalid("colour classes", format!("class {c} is out of range for {} classes", cfg.num_classes)));
        }
    }
    generate_impl(cfg, style.colour_class.as_deref(), style.texture_scale, style.pixel_textures)
}

fn generate_impl(cfg: &SyntheticConfig, colour_class: Option<&[u32]>, texture_scale: f32, pixel: Option<PixelTextures>) -> Result<Dataset> {
    validate(cfg)?;
    let (nc, spc, s) = (cfg.num_classes, cfg.samples_per_class, cfg.size);
    let n = nc * spc;
    let mut groups = vec![0u32; n];
    if let Some(sp) = cfg.spurious {
        let mut r = rng::stream(cfg.seed, "data/synthetic/spurious");
        for c in 0..nc {
            let rate = if c == sp.class as usize { sp.rate } else { sp.other_rate };
            mark(&mut groups[c * spc..(c + 1) * spc], rate, GROUP_SPURIOUS, &mut r);
        }
    }
    if let Some(sg) = cfg.subgroup {
        let mut r = rng::stream(cfg.seed, "data/synthetic/subgroup");
        let c = sg.class as usize;
        mark(&mut groups[c * spc..(c + 1) * spc], sg.fraction, GROUP_SUBGROUP, &mut r);
    }
    let per = 3 * s * s;
    let mut pixels = vec![0f32; n * per];
    pixels.par_chunks_mut(per).enumerate().for_each(|(i, img)| {
        let mut r = rng::stream_at(cfg.seed, "data/synthetic/sample", i as u64);
        let hue_class = colour_class.map_or(i / spc, |c| c[i] as usize);
        // Its own stream, so that the other draws are those of `generate`.
        let pixel = pixel.map(|t| {
            let mut r = rng::stream_at(cfg.seed, "data/synthetic/pixel_texture", i as u64);
            let contrast = t.min_contrast + (t.max_contrast - t.min_contrast) * r.random::<f32>();
            (contrast, r.random_range(0..2usize), r.random_range(0..2usize), t.background)
        });
        render(img, s, i, (i / spc, hue_class, texture_scale, pixel), groups[i], cfg, &mut r);
    });
    let labels = (0..n).map(|i| (i / spc) as u32).collect();
    let mut ds = Dataset::new(pixels, (3, s, s), labels, class_names(nc))?;
    if let Some(cc) = colour_class {
        for (i, g) in groups.iter_mut().enumerate() {
            *g = (*g & !GROUP_SPURIOUS) | if cc[i] as usize == i / spc { GROUP_SPURIOUS } else { 0 };
        }
    }
    if cfg.spurious.is_some() || cfg.subgroup.is_some() || colour_class.is_some() {
        ds.attributes.group = Some(groups);
    }
    Ok(ds)
}

/// Where the [`SpuriousKind::Object`] of sample `index` of [`generate`]`(cfg)` is (or would be
/// drawn): `(x, y, side)` of its bounding square, in pixels. Drawn from its own random
/// stream, so it can be recomputed for any sample (after `select`, use
/// `attributes.source_index` to find the original index).
///
/// ```
/// use transferlab::data::{generate, object_box, Spurious, SpuriousKind, SyntheticConfig};
/// let cfg = SyntheticConfig { num_classes: 2, samples_per_class: 4, size: 16,
///     spurious: Some(Spurious::new(0, 1.0, SpuriousKind::Object)), ..Default::default() };
/// let (x, y, side) = object_box(&cfg, 0);
/// assert_eq!(side, 4);
/// assert!(x + side <= 16 && y + side <= 16);
/// ```
pub fn object_box(cfg: &SyntheticConfig, index: usize) -> (usize, usize, usize) {
    let s = cfg.size;
    let side = (s / 4).max(3).min(s);
    let mut r = rng::stream_at(cfg.seed, "data/synthetic/object", index as u64);
    let corner: u32 = r.random_range(0..4);
    let jitter = (s / 16).max(1);
    let (jx, jy): (usize, usize) = (r.random_range(0..=jitter), r.random_range(0..=jitter));
    let x = if corner % 2 == 0 { jx } else { s - side - jx };
    let y = if corner / 2 == 0 { jy } else { s - side - jy };
    (x, y, side)
}

/// The main object's pixels (coverage above one half) of sample `index` of
/// [`generate`]`(cfg)`, as an `H * W` mask: the "person" of person-removed and
/// background-removed views. Recomputed from the sample's random stream, so it matches the
/// rendered image exactly.
pub fn foreground_mask(cfg: &SyntheticConfig, index: usize) -> Vec<bool> {
    let mut r = rng::stream_at(cfg.seed, "data/synthetic/sample", index as u64);
    let p = Params::draw(&mut r);
    let s = cfg.size;
    let shape = (index / cfg.samples_per_class) % SHAPES.len();
    (0..s * s).map(|i| p.cover(shape, i % s, i / s, s) > 0.5).collect()
}

/// The class names [`generate`] uses for `n` classes.
pub fn class_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|c| {
            let base = format!("{}-{}", SHAPES[c % SHAPES.len()], TEXTURES[c % TEXTURES.len()]);
            // Shape and texture pairs repeat every 24 classes; the colour still differs.
            match c / 24 {
                0 => base,
                k => format!("{base}-{}", k + 1),
            }
        })
        .collect()
}

fn validate(cfg: &SyntheticConfig) -> Result<()> {
    if cfg.num_classes == 0 || cfg.samples_per_class == 0 {
        return Err(Error::invalid("synthetic config", "num_classes and samples_per_class must be at least 1"));
    }
    if cfg.size < 8 {
        return Err(Error::invalid("synthetic config", format!("size {} is below the minimum of 8 pixels", cfg.size)));
    }
    if !(cfg.noise.is_finite() && cfg.noise >= 0.0) {
        return Err(Error::invalid("synthetic config", format!("noise {} must be finite and non-negative", cfg.noise)));
    }
    let unit = |v: f32, what: &str| -> Result<()> {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(Error::invalid("synthetic config", format!("{what} {v} is outside [0, 1]")))
        }
    };
    let class = |c: u32, what: &str| -> Result<()> {
        if (c as usize) < cfg.num_classes {
            Ok(())
        } else {
            Err(Error::invalid(
                "synthetic config",
                format!("{what} class {c} is out of range for {} classes", cfg.num_classes),
            ))
        }
    };
    if let Some(sp) = cfg.spurious {
        unit(sp.rate, "spurious rate")?;
        unit(sp.other_rate, "spurious other_rate")?;
        class(sp.class, "spurious")?;
    }
    if let Some(sg) = cfg.subgroup {
        unit(sg.fraction, "subgroup fraction")?;
        class(sg.class, "subgroup")?;
    }
    Ok(())
}

/// Set `bit` on exactly `round(rate * len)` randomly chosen entries.
fn mark(groups: &mut [u32], rate: f32, bit: u32, r: &mut SeededRng) {
    let k = (rate as f64 * groups.len() as f64).round() as usize;
    for &j in permutation(r, groups.len()).iter().take(k) {
        groups[j] |= bit;
    }
}

fn class_hue(c: usize) -> f32 {
    // Golden-ratio spacing keeps any number of classes' hues spread out.
    (c as f32 * 0.618_034).fract()
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h6 as u32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn box_sdf(x: f32, y: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (x.abs() - bx, y.abs() - by);
    (dx.max(0.0).powi(2) + dy.max(0.0).powi(2)).sqrt() + dx.max(dy).min(0.0)
}

/// Signed distance (negative inside) to shape `k` of radius `r` at local point (x, y).
fn shape_sdf(k: usize, x: f32, y: f32, r: f32) -> f32 {
    match k {
        0 => (x * x + y * y).sqrt() - r,
        1 => box_sdf(x, y, 0.8 * r, 0.8 * r),
        2 => {
            // Equilateral triangle, apex up.
            let k3 = 3f32.sqrt();
            let (mut px, mut py) = (x.abs() - r, -y + r / k3);
            if px + k3 * py > 0.0 {
                (px, py) = ((px - k3 * py) / 2.0, (-k3 * px - py) / 2.0);
            }
            px -= px.clamp(-2.0 * r, 0.0);
            -(px * px + py * py).sqrt() * py.signum()
        }
        3 => box_sdf(x, y, r, 0.3 * r).min(box_sdf(x, y, 0.3 * r, r)),
        4 => ((x * x + y * y).sqrt() - 0.7 * r).abs() - 0.25 * r,
        5 => box_sdf(x, y, r, 0.35 * r),
        6 => (x.abs() + y.abs() - r) / 2f32.sqrt(),
        _ => box_sdf(x, y, 0.8 * r, 0.8 * r).abs() - 0.18 * r,
    }
}

/// Whether texture `k` is "on" at shape-normalised point (u, v).
fn texture_on(k: usize, u: f32, v: f32, freq: f32, phase: f32) -> bool {
    let w = PI * freq;
    match k {
        0 => true,
        1 => (w * v + phase).sin() > 0.0,
        2 => (w * u + phase).sin() > 0.0,
        3 => (w * u + phase).sin() * (w * v + phase).sin() > 0.0,
        4 => {
            let (a, b) = (u * freq * 0.5 + phase / PI, v * freq * 0.5);
            let (fa, fb) = (a - a.floor() - 0.5, b - b.floor() - 0.5);
            fa * fa + fb * fb < 0.09
        }
        _ => (w * (u + v) * std::f32::consts::FRAC_1_SQRT_2 + phase).sin() > 0.0,
    }
}

/// Every random parameter of one sample, drawn up front in a fixed order so rendering
/// choices never shift the random sequence (and masks can be recomputed).
struct Params {
    bg_level: f32,
    bg_jitter: [f32; 3],
    grad_angle: f32,
    grad: f32,
    cx: f32,
    cy: f32,
    radius: f32,
    angle: f32,
    hue_jitter: f32,
    sat: f32,
    val: f32,
    freq: f32,
    phase: f32,
}

impl Params {
    fn draw(r: &mut SeededRng) -> Self {
        let bg_level: f32 = r.random_range(0.25..0.55);
        let bg_jitter: [f32; 3] = [r.random_range(-0.05..0.05), r.random_range(-0.05..0.05), r.random_range(-0.05..0.05)];
        let grad_angle: f32 = r.random_range(0.0..2.0 * PI);
        let grad: f32 = r.random_range(0.0..0.12);
        let (cx, cy): (f32, f32) = (0.5 + r.random_range(-0.12..0.12), 0.5 + r.random_range(-0.12..0.12));
        let radius: f32 = r.random_range(0.22..0.32);
        let angle: f32 = r.random_range(-0.35..0.35);
        let hue_jitter: f32 = r.random_range(-0.05..0.05);
        let sat: f32 = r.random_range(0.55..0.9);
        let val: f32 = r.random_range(0.65..1.0);
        let freq: f32 = r.random_range(2.5..3.5);
        let phase: f32 = r.random_range(0.0..2.0 * PI);
        Self { bg_level, bg_jitter, grad_angle, grad, cx, cy, radius, angle, hue_jitter, sat, val, freq, phase }
    }

    /// Pixel (x, y) in the object's rotated frame.
    fn local(&self, x: usize, y: usize, s: usize) -> (f32, f32) {
        let sf = s as f32;
        let (dx, dy) = ((x as f32 + 0.5) / sf - self.cx, (y as f32 + 0.5) / sf - self.cy);
        let (ca, sa) = (self.angle.cos(), self.angle.sin());
        (ca * dx + sa * dy, -sa * dx + ca * dy)
    }

    /// Coverage of pixel (x, y) by shape `k`: from the signed distance in pixels, so edges
    /// are antialiased.
    fn cover(&self, k: usize, x: usize, y: usize, s: usize) -> f32 {
        let (lx, ly) = self.local(x, y, s);
        (0.5 - shape_sdf(k, lx, ly, self.radius) * s as f32).clamp(0.0, 1.0)
    }
}

/// Pixel texture `k` (see [`PixelTextures`]) of unit contrast at pixel (x, y), phase
/// (px, py): `1 - f` where lit and `-f` where not, `f` being the lit share (zero mean).
fn pixel_texture(k: usize, x: usize, y: usize, px: usize, py: usize) -> f32 {
    let (ex, ey) = ((x + px) % 2 == 0, (y + py) % 2 == 0);
    let (lit, f) = match k {
        0 => return 0.0,
        1 => (ey, 0.5),
        2 => (ex, 0.5),
        3 => (ex == ey, 0.5),
        4 => (ex && ey, 0.25),
        _ => (ex || ey, 0.75),
    };
    if lit {
        1.0 - f
    } else {
        -f
    }
}

/// A pixel texture's contrast, phase, and whether it covers the background.
type PixelLook = Option<(f32, usize, usize, bool)>;

/// `look` is (class, class whose colour to paint, texture period multiplier, pixel texture).
fn render(img: &mut [f32], s: usize, index: usize, look: (usize, usize, f32, PixelLook), group: u32, cfg: &SyntheticConfig, r: &mut SeededRng) {
    let (class, hue_class, texture_scale, pixel) = look;
    let p = Params::draw(r);
    let Params { bg_level, bg_jitter, grad_angle, grad, hue_jitter, sat, val, phase, .. } = p;
    let freq = p.freq / texture_scale;
    let shape = class % SHAPES.len();
    let mut texture = class % TEXTURES.len();
    let mut hue = class_hue(hue_class);
    if group & GROUP_SUBGROUP != 0 {
        match cfg.subgroup.map(|g| g.kind) {
            Some(SubgroupKind::Colour) => hue += 0.5,
            Some(SubgroupKind::Texture) => texture = (texture + 3) % TEXTURES.len(),
            None => {}
        }
    }
    let fg = hsv(hue + hue_jitter, sat, val);
    let spurious = if group & GROUP_SPURIOUS != 0 { cfg.spurious.map(|sp| sp.kind) } else { None };
    let mut bg = [bg_level + bg_jitter[0], bg_level + bg_jitter[1], bg_level + bg_jitter[2]];
    if spurious == Some(SpuriousKind::BackgroundTint) {
        let tint = [0.95, 0.55, 0.1];
        for ch in 0..3 {
            bg[ch] = 0.5 * bg[ch] + 0.5 * tint[ch];
        }
    }
    let (gx, gy) = (grad_angle.cos() * grad, grad_angle.sin() * grad);
    let plane = s * s;
    let sf = s as f32;
    for y in 0..s {
        for x in 0..s {
            let (nx, ny) = ((x as f32 + 0.5) / sf, (y as f32 + 0.5) / sf);
            let (lx, ly) = p.local(x, y, s);
            let cover = p.cover(shape, x, y, s);
            let (shade, grain) = match pixel {
                Some((contrast, px, py, background)) => {
                    let t = contrast * pixel_texture(texture, x, y, px, py);
                    (1.0, if background { t } else { t * cover })
                }
                None if texture_on(texture, lx / p.radius, ly / p.radius, freq, phase) => (1.0, 0.0),
                None => (0.45, 0.0),
            };
            let g = gx * (nx - 0.5) + gy * (ny - 0.5);
            let p = y * s + x;
            for ch in 0..3 {
                let back = bg[ch] + g;
                img[ch * plane + p] = back * (1.0 - cover) + fg[ch] * shade * cover + grain;
            }
        }
    }
    if spurious == Some(SpuriousKind::CornerPatch) {
        let side = (s / 8).max(2);
        let magenta = [1.0, 0.0, 1.0];
        for ch in 0..3 {
            for y in 0..side {
                img[ch * plane + y * s..ch * plane + y * s + side].fill(magenta[ch]);
            }
        }
    }
    if spurious == Some(SpuriousKind::Object) {
        let (ox, oy, side) = object_box(cfg, index);
        let rad = side as f32 / 2.0;
        let yellow = [1.0, 0.85, 0.1];
        for y in oy..oy + side {
            for x in ox..ox + side {
                let (dx, dy) = (x as f32 + 0.5 - ox as f32 - rad, y as f32 + 0.5 - oy as f32 - rad);
                let cover = (rad + 0.5 - (dx * dx + dy * dy).sqrt()).clamp(0.0, 1.0);
                for ch in 0..3 {
                    let v = &mut img[ch * plane + y * s + x];
                    *v = *v * (1.0 - cover) + yellow[ch] * cover;
                }
            }
        }
    }
    for v in img.iter_mut() {
        let noisy = if cfg.noise > 0.0 { *v + cfg.noise * normal(r) } else { *v };
        *v = noisy.clamp(0.0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_contain_their_centre_and_exclude_far_points() {
        for k in 0..SHAPES.len() {
            let far = shape_sdf(k, 0.45, 0.45, 0.25);
            assert!(far > 0.0, "shape {k} covers a far point");
            // The ring and frame are hollow; test a point on their band instead.
            let (x, y) = match k {
                4 => (0.7 * 0.25, 0.0),
                7 => (0.8 * 0.25, 0.0),
                _ => (0.0, 0.0),
            };
            assert!(shape_sdf(k, x, y, 0.25) < 0.0, "shape {k} misses its body");
        }
    }

    #[test]
    fn object_changes_only_its_box_and_masks_match_the_shape() {
        let base = SyntheticConfig { num_classes: 2, samples_per_class: 3, size: 16, ..Default::default() };
        let with = SyntheticConfig { spurious: Some(Spurious::new(0, 1.0, SpuriousKind::Object)), ..base.clone() };
        let (a, b) = (generate(&base).unwrap(), generate(&with).unwrap());
        for i in 0..3 {
            let (ox, oy, side) = object_box(&with, i);
            let mut changed_inside = 0;
            for (k, (u, v)) in a.image(i).iter().zip(b.image(i)).enumerate() {
                let (x, y) = (k % 16, (k / 16) % 16);
                let inside = x >= ox && x < ox + side && y >= oy && y < oy + side;
                if inside {
                    changed_inside += (u != v) as usize;
                } else {
                    assert_eq!(u, v, "pixel {k} outside the object's box changed");
                }
            }
            assert!(changed_inside > 3 * side);
        }
        // The mask covers the shape: its pixels differ from the background on average.
        let m = foreground_mask(&base, 0);
        let fg = m.iter().filter(|&&v| v).count();
        assert!(fg > 10 && fg < 200, "{fg} foreground pixels");
    }

    #[test]
    fn validation_names_the_problem() {
        let cfg = SyntheticConfig { spurious: Some(Spurious::new(10, 0.5, SpuriousKind::CornerPatch)), ..Default::default() };
        assert!(generate(&cfg).unwrap_err().to_string().contains("out of range"));
        let cfg = SyntheticConfig {
            subgroup: Some(Subgroup { class: 0, fraction: 1.5, kind: SubgroupKind::Colour }),
            ..Default::default()
        };
        assert!(generate(&cfg).unwrap_err().to_string().contains("outside [0, 1]"));
    }
}
