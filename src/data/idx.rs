//! MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), plain or gzip.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, an element-type byte, a dimension
//! count), one big-endian u32 per dimension, then the row-major payload.

use super::codec;
use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::fsutil;
use std::path::Path;

const FORMAT: &str = "IDX";
/// Magic number of an unsigned-byte IDX file with 3 dimensions (N, H, W): images.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with 1 dimension (N): labels.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// An unsigned-byte IDX array: its dimensions and row-major payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// The payload, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Read any unsigned-byte IDX file (gzip detected by content).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("labels-idx1-ubyte");
/// std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 2, 7, 3]).unwrap();
/// let a = transferlab::data::read_idx(&path).unwrap();
/// assert_eq!(a.dims, vec![2]);
/// assert_eq!(a.data, vec![7, 3]);
/// ```
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = codec::read_maybe_gzip(path, FORMAT)?;
    parse_idx(&bytes, path, None)
}

/// Read an images file (magic 0x00000803) and a labels file (magic 0x00000801) into a
/// dataset of `(1, H, W)` images scaled to [0, 1].
///
/// There are 10 classes named "0".."9" if every label is below 10, otherwise `max + 1`.
/// Both files may be gzip-compressed.
///
/// ```no_run
/// let test = transferlab::data::read_idx_dataset(
///     "../shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz",
///     "../shared/data/mnist-t10k/t10k-labels-idx1-ubyte.gz",
/// )?;
/// assert_eq!(test.shape, (1, 28, 28));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_idx_dataset(images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<Dataset> {
    let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
    let images = parse_idx(&codec::read_maybe_gzip(images_path, FORMAT)?, images_path, Some(IDX_IMAGES_MAGIC))?;
    let labels = parse_idx(&codec::read_maybe_gzip(labels_path, FORMAT)?, labels_path, Some(IDX_LABELS_MAGIC))?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(Error::format(
            labels_path,
            FORMAT,
            format!(
                "it holds {} labels but {} holds {n} images; pass the labels file that belongs to these images",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::format(images_path, FORMAT, format!("images have an empty size {h}x{w}")));
    }
    let max = labels.data.iter().copied().max().unwrap_or(0) as usize;
    let num_classes = if max < 10 { 10 } else { max + 1 };
    let labels: Vec<u32> = labels.data.iter().map(|&y| y as u32).collect();
    Dataset::new(codec::bytes_to_unit(&images.data), (1, h, w), labels, Dataset::numbered_classes(num_classes))
}

/// Write a single-channel dataset as an IDX images file and an IDX labels file, each gzip
/// compressed if its name ends in `.gz`. Pixels are rounded to bytes (`x * 255`), labels must
/// fit a byte. Both files are written atomically.
///
/// ```
/// use transferlab::data::{read_idx_dataset, write_idx_dataset, Dataset};
/// # let dir = tempfile::tempdir().unwrap();
/// let ds = Dataset::new(vec![0.0, 1.0, 1.0, 0.0], (1, 2, 2), vec![3], Dataset::numbered_classes(10))?;
/// let (img, lab) = (dir.path().join("img.gz"), dir.path().join("lab"));
/// write_idx_dataset(&ds, &img, &lab)?;
/// assert_eq!(read_idx_dataset(&img, &lab)?.pixels(), ds.pixels());
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn write_idx_dataset(ds: &Dataset, images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<()> {
    let (c, h, w) = ds.shape;
    if c != 1 {
        return Err(Error::invalid(
            "IDX export",
            format!("IDX image files hold one channel, the images have {c}; convert with to_grayscale first"),
        ));
    }
    if let Some((i, &y)) = ds.labels.iter().enumerate().find(|(_, &y)| y > 255) {
        return Err(Error::invalid("IDX export", format!("label {y} of sample {i} does not fit in a byte")));
    }
    let dim = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| Error::invalid("IDX export", format!("{what} {v} does not fit in 32 bits")))
    };
    let mut images = Vec::with_capacity(16 + ds.pixels().len());
    images.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
    for (v, what) in [(ds.len(), "sample count"), (h, "height"), (w, "width")] {
        images.extend_from_slice(&dim(v, what)?.to_be_bytes());
    }
    images.extend(ds.pixels().iter().map(|&x| codec::unit_to_byte(x)));
    let mut labels = Vec::with_capacity(8 + ds.len());
    labels.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    labels.extend_from_slice(&dim(ds.len(), "sample count")?.to_be_bytes());
    labels.extend(ds.labels.iter().map(|&y| y as u8));
    write_maybe_gzip(images_path.as_ref(), &images)?;
    write_maybe_gzip(labels_path.as_ref(), &labels)
}

fn write_maybe_gzip(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        let z = codec::gzip(bytes).map_err(|e| Error::io("compress", path, e))?;
        fsutil::write_bytes_atomic(path, &z)
    } else {
        fsutil::write_bytes_atomic(path, bytes)
    }
}

fn element_type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => "unknown",
    }
}

/// Parse IDX bytes; with `expected` set, the magic number must match it exactly.
fn parse_idx(bytes: &[u8], path: &Path, expected: Option<u32>) -> Result<IdxArray> {
    let err = |reason: String| Error::format(path, FORMAT, reason);
    if bytes.len() < 4 {
        return Err(err(format!("the file is only {} bytes, too short for the 4-byte magic number", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if let Some(want) = expected {
        if magic != want {
            let role = if want == IDX_IMAGES_MAGIC { "unsigned-byte images, 3 dimensions" } else { "unsigned-byte labels, 1 dimension" };
            let hint = match magic {
                IDX_IMAGES_MAGIC => "; this is an images file: were the images and labels paths swapped?",
                IDX_LABELS_MAGIC => "; this is a labels file: were the images and labels paths swapped?",
                _ => "; check that this is an uncompressed or gzip IDX file",
            };
            return Err(err(format!("wrong magic number 0x{magic:08X}, expected 0x{want:08X} ({role}){hint}")));
        }
    } else if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!("wrong magic number 0x{magic:08X}: an IDX file starts with two zero bytes")));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "element type 0x{:02X} ({}) is not supported; only unsigned-byte (0x08) IDX files are read",
            bytes[2],
            element_type_name(bytes[2])
        )));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(err("the magic number declares zero dimensions".into()));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err(format!(
            "the header declares {ndims} dimensions ({header} header bytes) but the file has only {} bytes: it is truncated",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let declared = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(format!("dimensions {dims:?} overflow the address space")))?;
    let payload = &bytes[header..];
    if payload.len() < declared {
        return Err(err(format!(
            "the header declares dimensions {dims:?} = {declared} data bytes but only {} follow: the file is truncated; download it again",
            payload.len()
        )));
    }
    if payload.len() > declared {
        return Err(err(format!(
            "the header declares dimensions {dims:?} = {declared} data bytes but {} follow: header and data disagree",
            payload.len()
        )));
    }
    Ok(IdxArray { dims, data: payload.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, h: u32, w: u32, payload: usize) -> Vec<u8> {
        let mut b = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, h, w] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend(std::iter::repeat_n(9u8, payload));
        b
    }

    #[test]
    fn parses_declared_payload() {
        let a = parse_idx(&images(2, 3, 4, 24), Path::new("x"), Some(IDX_IMAGES_MAGIC)).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data.len(), 24);
    }

    #[test]
    fn rejects_truncation_trailing_bytes_and_type() {
        let e = parse_idx(&images(2, 3, 4, 23), Path::new("x"), None).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_idx(&images(2, 3, 4, 25), Path::new("x"), None).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
        let mut b = images(1, 1, 1, 4);
        b[2] = 0x0D;
        let e = parse_idx(&b, Path::new("x"), None).unwrap_err().to_string();
        assert!(e.contains("32-bit float"), "{e}");
        let e = parse_idx(&images(1, 1, 1, 1), Path::new("x"), Some(IDX_LABELS_MAGIC)).unwrap_err().to_string();
        assert!(e.contains("swapped"), "{e}");
        let e = parse_idx(&[0, 0, 8], Path::new("x"), None).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }
}
