//! Byte-level helpers shared by the readers: 8-bit <-> [0, 1] conversion, gzip detection, and
//! PNG/JPEG decoding and PNG encoding into CHW float buffers.

use crate::error::{Error, Result};
use crate::fsutil;
use image::{ColorType, DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat};
use std::io::Read;
use std::path::Path;

/// `v / 255` for every byte value, so that decoding is a table lookup and every reader maps a
/// byte to exactly the same float (round trips compare bit for bit).
fn unit_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (v, slot) in t.iter_mut().enumerate() {
        *slot = v as f32 / 255.0;
    }
    t
}

/// Bytes as floats in [0, 1].
pub(crate) fn bytes_to_unit(bytes: &[u8]) -> Vec<f32> {
    let t = unit_table();
    bytes.iter().map(|&b| t[b as usize]).collect()
}

/// A float in [0, 1] as the nearest byte; values outside are clamped.
pub(crate) fn unit_to_byte(x: f32) -> u8 {
    // NaN maps to 0 through the saturating cast.
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Whether `bytes` start with the gzip magic number.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Read a file, transparently decompressing it if it is gzip (detected by content, not name).
pub(crate) fn read_maybe_gzip(path: &Path, format: &'static str) -> Result<Vec<u8>> {
    let raw = fsutil::read(path)?;
    gunzip_if_needed(raw, path, format)
}

/// Decompress `raw` if it is gzip, naming `path` in the error if the stream is damaged.
pub(crate) fn gunzip_if_needed(raw: Vec<u8>, path: &Path, format: &'static str) -> Result<Vec<u8>> {
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::format(
                path,
                format,
                format!("the gzip stream is damaged or truncated ({e}); download the file again"),
            )
        })?;
    Ok(out)
}

/// Gzip-compress a buffer in memory.
pub(crate) fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

/// One decoded image: CHW floats in [0, 1].
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<f32>,
}

impl Decoded {
    /// Replicate a single channel into three; RGB images are returned unchanged.
    pub fn into_rgb(self) -> Decoded {
        if self.channels == 3 {
            return self;
        }
        let plane = self.height * self.width;
        let mut pixels = Vec::with_capacity(3 * plane);
        for _ in 0..3 {
            pixels.extend_from_slice(&self.pixels[..plane]);
        }
        Decoded { channels: 3, pixels, ..self }
    }
}

/// The formats readers accept, by content sniffing.
pub(crate) fn sniff_png_or_jpeg(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => Some(f),
        _ => None,
    }
}

/// Decode a PNG or JPEG held in memory. Grayscale images (with or without alpha) stay one
/// channel; everything else becomes RGB. Alpha is dropped.
pub(crate) fn decode_image(bytes: &[u8], what: &Path, format: &'static str) -> Result<Decoded> {
    let kind = sniff_png_or_jpeg(bytes).ok_or_else(|| {
        Error::format(
            what,
            format,
            "not a PNG or JPEG image (unrecognised content); remove it or convert it to PNG",
        )
    })?;
    let img = image::load_from_memory_with_format(bytes, kind)
        .map_err(|e| Error::format(what, format, format!("cannot decode the {kind:?} image: {e}")))?;
    Ok(to_chw(&img))
}

fn to_chw(img: &DynamicImage) -> Decoded {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let plane = width * height;
    let gray = matches!(img.color(), ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16);
    let eight_bit = matches!(img.color(), ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8);
    if gray {
        let pixels = if eight_bit {
            bytes_to_unit(img.to_luma8().as_raw())
        } else {
            img.to_luma32f().into_raw()
        };
        return Decoded { channels: 1, height, width, pixels };
    }
    // Interleaved HWC -> planar CHW.
    let hwc: Vec<f32> = if eight_bit {
        bytes_to_unit(img.to_rgb8().as_raw())
    } else {
        img.to_rgb32f().into_raw()
    };
    let mut pixels = vec![0f32; 3 * plane];
    for (p, px) in hwc.chunks_exact(3).enumerate() {
        pixels[p] = px[0];
        pixels[plane + p] = px[1];
        pixels[2 * plane + p] = px[2];
    }
    Decoded { channels: 3, height, width, pixels }
}

/// Encode one CHW image (1 or 3 channels, values in [0, 1]) as an 8-bit PNG.
pub(crate) fn encode_png(chw: &[f32], shape: (usize, usize, usize)) -> Result<Vec<u8>> {
    let (c, h, w) = shape;
    let color = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => {
            return Err(Error::invalid(
                "image channels",
                format!("PNG export needs 1 or 3 channels, the images have {c}; use to_rgb or to_grayscale first"),
            ))
        }
    };
    let (wu, hu) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(wu), Ok(hu)) => (wu, hu),
        _ => return Err(Error::invalid("image size", format!("{h}x{w} is too large for PNG"))),
    };
    let plane = h * w;
    let mut hwc = vec![0u8; c * plane];
    for p in 0..plane {
        for ch in 0..c {
            hwc[p * c + ch] = unit_to_byte(chw[ch * plane + p]);
        }
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&hwc, wu, hu, color)
        .map_err(|e| Error::invalid("image", format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

/// Stack decoded images into one NCHW buffer. All must share a size; if any is RGB, grayscale
/// ones are promoted. `names` label the images in errors (a file path, a row number).
pub(crate) fn stack(
    decoded: Vec<Decoded>,
    names: &[String],
    source: &Path,
    format: &'static str,
) -> Result<(Vec<f32>, (usize, usize, usize))> {
    let Some(first) = decoded.first() else {
        return Err(Error::format(source, format, "no images found"));
    };
    let (h, w) = (first.height, first.width);
    if let Some((i, d)) = decoded.iter().enumerate().find(|(_, d)| (d.height, d.width) != (h, w)) {
        return Err(Error::format(
            source,
            format,
            format!(
                "{} is {}x{} (height x width) but {} is {h}x{w}; images of different sizes need a resize target",
                names[i], d.height, d.width, names[0]
            ),
        ));
    }
    let channels = if decoded.iter().all(|d| d.channels == 1) { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(decoded.len() * channels * h * w);
    for d in decoded {
        let d = if channels == 3 { d.into_rgb() } else { d };
        pixels.extend_from_slice(&d.pixels);
    }
    Ok((pixels, (channels, h, w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_is_exact() {
        let all: Vec<u8> = (0..=255).collect();
        let back: Vec<u8> = bytes_to_unit(&all).into_iter().map(unit_to_byte).collect();
        assert_eq!(all, back);
    }

    #[test]
    fn png_round_trip_rgb() {
        let shape = (3, 2, 3);
        let px: Vec<f32> = (0..18u8).map(|v| (v * 13) as f32 / 255.0).collect();
        let png = encode_png(&px, shape).unwrap();
        let d = decode_image(&png, Path::new("mem"), "PNG").unwrap();
        assert_eq!((d.channels, d.height, d.width), shape);
        assert_eq!(d.pixels, px);
    }

    #[test]
    fn garbage_is_not_an_image() {
        let err = decode_image(b"hello world", Path::new("x.txt"), "PNG").unwrap_err();
        assert!(err.to_string().contains("not a PNG or JPEG"), "{err}");
    }
}
