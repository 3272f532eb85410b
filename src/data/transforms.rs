//! Deterministic transforms (normalisation, resizing, channel conversion) and the random
//! training augmentation applied to batch buffers.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use rand::Rng;

/// Per-channel `(x - mean[c]) / std[c]`.
///
/// ```
/// use transferlab::data::{normalise, Dataset};
/// let ds = Dataset::new(vec![0.5, 1.0], (1, 1, 2), vec![0], vec!["a".into()])?;
/// let n = normalise(&ds, &[0.5], &[0.25])?;
/// assert_eq!(n.pixels(), &[0.0, 2.0]);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn normalise(ds: &Dataset, mean: &[f32], std: &[f32]) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    if mean.len() != c || std.len() != c {
        return Err(Error::invalid(
            "normalisation",
            format!("the images have {c} channels but {} means and {} standard deviations were given", mean.len(), std.len()),
        ));
    }
    if let Some((i, s)) = std.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s != 0.0)) {
        return Err(Error::invalid("normalisation", format!("standard deviation {s} of channel {i} must be finite and non-zero")));
    }
    if let Some((i, m)) = mean.iter().enumerate().find(|(_, m)| !m.is_finite()) {
        return Err(Error::invalid("normalisation", format!("mean {m} of channel {i} must be finite")));
    }
    let plane = h * w;
    let mut out = ds.pixels().to_vec();
    for img in out.chunks_exact_mut(c * plane) {
        for (ch, p) in img.chunks_exact_mut(plane).enumerate() {
            let (m, inv) = (mean[ch], 1.0 / std[ch]);
            p.iter_mut().for_each(|x| *x = (*x - m) * inv);
        }
    }
    ds.with_pixels(out, ds.shape)
}

/// Bilinear resize of every image to `(height, width)`, sampling at pixel centres (the
/// convention of PyTorch's `align_corners=False`, without antialiasing).
///
/// ```
/// use transferlab::data::{resize, Dataset};
/// let ds = Dataset::new(vec![0.25; 3 * 4 * 4], (3, 4, 4), vec![0], vec!["a".into()])?;
/// let r = resize(&ds, (2, 6))?;
/// assert_eq!(r.shape, (3, 2, 6));
/// assert!(r.pixels().iter().all(|&x| (x - 0.25).abs() < 1e-6));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn resize(ds: &Dataset, size: (usize, usize)) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    let (oh, ow) = size;
    if oh == 0 || ow == 0 {
        return Err(Error::invalid("resize target", format!("{oh}x{ow} has a zero side")));
    }
    let mut out = vec![0f32; ds.len() * c * oh * ow];
    for (src, dst) in ds.pixels().chunks_exact(c * h * w).zip(out.chunks_exact_mut(c * oh * ow)) {
        resize_image(src, (c, h, w), size, dst);
    }
    ds.with_pixels(out, (c, oh, ow))
}

/// Paste every image `copies` times at a uniformly random position on a black canvas of
/// `canvas = (height, width)` and add Gaussian pixel noise (standard deviation `noise`, then
/// clamp to [0, 1]): a dataset with nuisance variation in position and noise, for example a
/// pre-training source that is more varied than the target. Copies keep their sample's label
/// and attributes; the output holds all first copies, then all second copies, and so on.
/// Same seed, same dataset.
///
/// ```
/// use transferlab::data::{place_on_canvas, Dataset};
/// let ds = Dataset::new(vec![1.0; 4], (1, 2, 2), vec![0], vec!["a".into()])?;
/// let placed = place_on_canvas(&ds, (5, 5), 3, 0.0, 7)?;
/// assert_eq!((placed.len(), placed.shape), (3, (1, 5, 5)));
/// assert!(placed.pixels().chunks(25).all(|img| img.iter().sum::<f32>() == 4.0));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn place_on_canvas(ds: &Dataset, canvas: (usize, usize), copies: usize, noise: f32, seed: u64) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    let (ch, cw) = canvas;
    if ch < h || cw < w {
        return Err(Error::invalid(
            "canvas",
            format!("{ch}x{cw} is smaller than the {h}x{w} images; give a canvas at least as large as the images"),
        ));
    }
    if copies == 0 {
        return Err(Error::invalid("copies", "0; place each image at least once"));
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::invalid("pixel noise", format!("{noise} must be finite and non-negative")));
    }
    let mut r = crate::rng::stream(seed, "place_on_canvas");
    let plane = ch * cw;
    let mut pixels = vec![0f32; copies * ds.len() * c * plane];
    for (k, out) in pixels.chunks_exact_mut(c * plane).enumerate() {
        let img = ds.image(k % ds.len());
        let (oy, ox) = (r.random_range(0..=ch - h), r.random_range(0..=cw - w));
        for ci in 0..c {
            for y in 0..h {
                let row = &img[(ci * h + y) * w..][..w];
                out[ci * plane + (oy + y) * cw + ox..][..w].copy_from_slice(row);
            }
        }
        if noise > 0.0 {
            out.iter_mut().for_each(|v| *v = (*v + noise * crate::rng::normal(&mut r)).clamp(0.0, 1.0));
        }
    }
    let order: Vec<usize> = (0..copies * ds.len()).map(|k| k % ds.len()).collect();
    ds.select(&order)?.with_pixels(pixels, (c, ch, cw))
}

/// One source coordinate's two neighbours and the weight of the second.
fn taps(out_len: usize, in_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// Bilinear resize of one CHW image into `dst` (length `c * size.0 * size.1`).
pub fn resize_image(src: &[f32], shape: (usize, usize, usize), size: (usize, usize), dst: &mut [f32]) {
    let (c, h, w) = shape;
    let (oh, ow) = size;
    let (ys, xs) = (taps(oh, h), taps(ow, w));
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut dst[ch * oh * ow..(ch + 1) * oh * ow];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
                out[oy * ow + ox] = top + (bottom - top) * fy;
            }
        }
    }
}

/// RGB to one luminance channel with the ITU-R BT.601 weights (as PIL and torchvision);
/// single-channel datasets are returned unchanged.
///
/// ```
/// use transferlab::data::{to_grayscale, Dataset};
/// let ds = Dataset::new(vec![1.0, 0.0, 0.0], (3, 1, 1), vec![0], vec!["a".into()])?;
/// assert!((to_grayscale(&ds)?.pixels()[0] - 0.299).abs() < 1e-6);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn to_grayscale(ds: &Dataset) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    match c {
        1 => Ok(ds.clone()),
        3 => {
            let plane = h * w;
            let mut out = Vec::with_capacity(ds.len() * plane);
            for img in ds.pixels().chunks_exact(3 * plane) {
                let (r, rest) = img.split_at(plane);
                let (g, b) = rest.split_at(plane);
                out.extend((0..plane).map(|p| 0.299 * r[p] + 0.587 * g[p] + 0.114 * b[p]));
            }
            ds.with_pixels(out, (1, h, w))
        }
        _ => Err(Error::invalid("grayscale conversion", format!("expects 1 or 3 channels, the images have {c}"))),
    }
}

/// One channel replicated into three; RGB datasets are returned unchanged.
pub fn to_rgb(ds: &Dataset) -> Result<Dataset> {
    let (c, h, w) = ds.shape;
    match c {
        3 => Ok(ds.clone()),
        1 => {
            let plane = h * w;
            let mut out = Vec::with_capacity(ds.len() * 3 * plane);
            for img in ds.pixels().chunks_exact(plane) {
                for _ in 0..3 {
                    out.extend_from_slice(img);
                }
            }
            ds.with_pixels(out, (3, h, w))
        }
        _ => Err(Error::invalid("RGB conversion", format!("expects 1 or 3 channels, the images have {c}"))),
    }
}

/// Random training augmentation: a crop after zero padding (a random shift of up to
/// `crop_padding` pixels each way), then a horizontal flip with probability 1/2.
///
/// ```
/// use transferlab::data::Augment;
/// let mut batch = vec![0.5f32; 4 * 3 * 8 * 8];
/// Augment::cifar().apply_batch(&mut batch, (3, 8, 8), &mut transferlab::rng::stream_at(0, "augment", 0))?;
/// assert_eq!(batch.len(), 4 * 3 * 8 * 8);
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Zero padding on each side before the random crop back to the original size; 0 disables.
    pub crop_padding: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Self { crop_padding: 0, hflip: false }
    }

    /// The standard CIFAR recipe: 4 pixels of padding and random horizontal flips.
    pub fn cifar() -> Self {
        Self { crop_padding: 4, hflip: true }
    }

    /// Whether this augmentation changes anything.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// Augment a batch of NCHW images in place; N is `pixels.len() / (c * h * w)`. Draws, per
    /// image in order, the vertical then horizontal offset (if padding) then the flip (if
    /// enabled), so the result depends only on the generator's state.
    pub fn apply_batch(&self, pixels: &mut [f32], shape: (usize, usize, usize), rng: &mut SeededRng) -> Result<()> {
        let (c, h, w) = shape;
        let per = c * h * w;
        if per == 0 || pixels.len() % per != 0 {
            return Err(Error::shape(
                "augmenting a batch",
                format!("{} values are not a whole number of {shape:?} images", pixels.len()),
            ));
        }
        if self.is_identity() {
            return Ok(());
        }
        let p = self.crop_padding as i64;
        // One plane of scratch for the whole batch: shifting in place would overwrite sources.
        let mut scratch = vec![0f32; h * w];
        for img in pixels.chunks_exact_mut(per) {
            let (dy, dx) = if p > 0 {
                // i64 rather than isize: rand's portable sampling gives the same draws everywhere.
                (rng.random_range(-p..=p) as isize, rng.random_range(-p..=p) as isize)
            } else {
                (0, 0)
            };
            let flip = self.hflip && rng.random::<bool>();
            if dy == 0 && dx == 0 && !flip {
                continue;
            }
            for plane in img.chunks_exact_mut(h * w) {
                scratch.copy_from_slice(plane);
                shift_flip(&scratch, plane, h, w, dy, dx, flip);
            }
        }
        Ok(())
    }
}

/// `dst[y][x] = src[y + dy][x' + dx]` with `x' = w - 1 - x` when flipping, zero outside.
fn shift_flip(src: &[f32], dst: &mut [f32], h: usize, w: usize, dy: isize, dx: isize, flip: bool) {
    let (hi, wi) = (h as isize, w as isize);
    for y in 0..hi {
        let row = &mut dst[(y * wi) as usize..((y + 1) * wi) as usize];
        let sy = y + dy;
        if sy < 0 || sy >= hi {
            row.fill(0.0);
            continue;
        }
        let srow = &src[(sy * wi) as usize..((sy + 1) * wi) as usize];
        // Valid crop columns x satisfy 0 <= x + dx < w; copy them as one slice, zero the rest.
        let lo = (-dx).clamp(0, wi) as usize;
        let hi_x = (wi - dx).clamp(0, wi) as usize;
        row.fill(0.0);
        if lo < hi_x {
            let s0 = (lo as isize + dx) as usize;
            row[lo..hi_x].copy_from_slice(&srow[s0..s0 + (hi_x - lo)]);
        }
        if flip {
            row.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn shift_moves_content_and_pads_with_zero() {
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 9];
        shift_flip(&src, &mut dst, 3, 3, 1, -1, false);
        assert_eq!(dst, vec![0.0, 4.0, 5.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0]);
        shift_flip(&src, &mut dst, 3, 3, 0, 0, true);
        assert_eq!(dst, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0]);
        shift_flip(&src, &mut dst, 3, 3, 0, 5, false);
        assert!(dst.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn resize_identity_and_upscale() {
        let src = [0.0, 1.0, 2.0, 3.0];
        let mut same = [0.0; 4];
        resize_image(&src, (1, 2, 2), (2, 2), &mut same);
        assert_eq!(same, src);
        let mut up = [0.0; 4];
        resize_image(&[0.0, 1.0], (1, 1, 2), (1, 4), &mut up);
        assert_eq!(up, [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn augment_rejects_ragged_buffer() {
        let mut buf = vec![0.0; 10];
        assert!(Augment::cifar().apply_batch(&mut buf, (1, 3, 3), &mut stream(0, "a")).is_err());
    }
}
