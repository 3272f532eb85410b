//! Edge images: the Sobel edge magnitude a shape prior sees (colour and fine texture removed).

use crate::data::Dataset;
use crate::error::{Error, Result};

/// Sobel edge magnitude of the grey-level image, one channel, each image divided by its
/// largest magnitude (a flat image stays 0). Borders mirror the image about the border
/// pixels.
///
/// ```
/// use transferlab::data::sobel_edges;
/// use transferlab::data::Dataset;
/// // A vertical step from black to white: edges only in the two middle columns.
/// let mut px = vec![0.0f32; 3 * 4 * 4];
/// for c in 0..3 { for y in 0..4 { for x in 2..4 { px[c * 16 + y * 4 + x] = 1.0; } } }
/// let ds = Dataset::new(px, (3, 4, 4), vec![0], vec!["a".into(), "b".into()])?;
/// let e = sobel_edges(&ds)?;
/// assert_eq!(e.shape, (1, 4, 4));
/// assert_eq!(&e.image(0)[..4], &[0.0, 1.0, 1.0, 0.0]);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn sobel_edges(ds: &Dataset) -> Result<Dataset> {
    smoothed_sobel_edges(ds, 0.0)
}

/// [`sobel_edges`] of the grey image smoothed by a Gaussian of standard deviation `sigma`
/// pixels first (kernel radius `ceil(3 sigma)`, borders of the smoothing replicated; 0 = no smoothing).
///
/// ```
/// use transferlab::data::{smoothed_sobel_edges, sobel_edges};
/// use transferlab::data::{generate, SyntheticConfig};
/// let ds = generate(&SyntheticConfig { num_classes: 2, samples_per_class: 1, size: 16, ..Default::default() })?;
/// assert_eq!(smoothed_sobel_edges(&ds, 0.0)?.pixels(), sobel_edges(&ds)?.pixels());
/// assert!(smoothed_sobel_edges(&ds, -1.0).is_err());
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn smoothed_sobel_edges(ds: &Dataset, sigma: f32) -> Result<Dataset> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::invalid("edge smoothing sigma", format!("{sigma}; it must be finite and >= 0 (0 = no smoothing)")));
    }
    let (c, h, w) = ds.shape;
    let plane = h * w;
    let kernel: Vec<f32> = if sigma > 0.0 {
        let r = (3.0 * sigma).ceil() as isize;
        let k: Vec<f32> = (-r..=r).map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp()).collect();
        let sum: f32 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect()
    } else {
        vec![1.0]
    };
    let mut out = vec![0f32; ds.len() * plane];
    for (i, dst) in out.chunks_mut(plane).enumerate() {
        let img = ds.image(i);
        let grey: Vec<f32> = (0..plane).map(|p| (0..c).map(|ch| img[ch * plane + p]).sum::<f32>() / c as f32).collect();
        let grey = blur(&grey, h, w, &kernel);
        let at = |y: isize, x: isize| grey[reflect(y, h) * w + reflect(x, w)];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let gx = at(y - 1, x + 1) + 2.0 * at(y, x + 1) + at(y + 1, x + 1) - at(y - 1, x - 1) - 2.0 * at(y, x - 1) - at(y + 1, x - 1);
                let gy = at(y + 1, x - 1) + 2.0 * at(y + 1, x) + at(y + 1, x + 1) - at(y - 1, x - 1) - 2.0 * at(y - 1, x) - at(y - 1, x + 1);
                dst[y as usize * w + x as usize] = (gx * gx + gy * gy).sqrt();
            }
        }
        let max = dst.iter().cloned().fold(0f32, f32::max);
        if max > 0.0 {
            dst.iter_mut().for_each(|v| *v /= max);
        }
    }
    ds.with_pixels(out, (1, h, w))
}

/// Index `i` mirrored into `0..n` about the border pixels (-1 -> 1, n -> n - 2), so that a
/// pattern of period 2, which the Sobel filter's central differences cancel inside the image,
/// cancels at the borders too (replicating the border pixel would make it an edge there).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }).clamp(0, n - 1) as usize
}

/// Separable convolution with `kernel` (odd length, centred) along rows, then columns;
/// borders replicate the edge pixels.
fn blur(img: &[f32], h: usize, w: usize, kernel: &[f32]) -> Vec<f32> {
    if kernel.len() == 1 {
        return img.to_vec();
    }
    let r = (kernel.len() / 2) as isize;
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut dst = vec![0f32; h * w];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (j, kv) in kernel.iter().enumerate() {
                    let d = j as isize - r;
                    let (yy, xx) = if horizontal { (y, (x + d).clamp(0, w as isize - 1)) } else { ((y + d).clamp(0, h as isize - 1), x) };
                    acc += kv * src[yy as usize * w + xx as usize];
                }
                dst[y as usize * w + x as usize] = acc;
            }
        }
        dst
    };
    pass(&pass(img, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticConfig;
    #[test]
    fn edges_ignore_colour_and_scale() {
        let ds = crate::data::generate(&SyntheticConfig { num_classes: 2, samples_per_class: 2, size: 12, noise: 0.0, ..Default::default() }).unwrap();
        let e = sobel_edges(&ds).unwrap();
        assert_eq!(e.shape, (1, 12, 12));
        for i in 0..e.len() {
            let m = e.image(i).iter().cloned().fold(0f32, f32::max);
            assert!((m - 1.0).abs() < 1e-6);
        }
        // Scaling the image's contrast leaves the normalised edges unchanged.
        let dim: Vec<f32> = ds.pixels().iter().map(|v| 0.5 * v).collect();
        let dim = ds.with_pixels(dim, ds.shape).unwrap();
        let e2 = sobel_edges(&dim).unwrap();
        for (a, b) in e.pixels().iter().zip(e2.pixels()) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
