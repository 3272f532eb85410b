//! The UCI optical handwritten digits (8x8, as shipped with scikit-learn), embedded in the
//! crate so that examples and tests have real data with no download. See
//! `datasets/DIGITS-LICENSE.txt` for credit (E. Alpaydin, C. Kaynak; UCI) and licences.

use super::codec;
use super::dataset::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

const FORMAT: &str = "digits CSV";
const EMBEDDED: &[u8] = include_bytes!("../../datasets/digits.csv.gz");
const PIXELS: usize = 64;
/// Pixel values count the "on" pixels in a 4x4 block, so they run from 0 to 16.
const MAX_VALUE: u32 = 16;

/// The 1,797 embedded digits: `(1, 8, 8)` images with pixel values `/ 16` in [0, 1], labels
/// 0-9 named "0".."9", in the file's order.
///
/// ```
/// let ds = transferlab::data::digits()?;
/// assert_eq!(ds.len(), 1797);
/// assert_eq!(ds.shape, (1, 8, 8));
/// assert_eq!(ds.labels[0], 0);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn digits() -> Result<Dataset> {
    let path = Path::new("<embedded datasets/digits.csv.gz>");
    parse(&codec::gunzip_if_needed(EMBEDDED.to_vec(), path, FORMAT)?, path)
}

/// Read a digits CSV from disk (gzip or plain): one row per image, 64 integer pixel values in
/// 0..16 then the label 0..9, no header.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("digits.csv");
/// let row = std::iter::repeat("16").take(64).chain(["7"]).collect::<Vec<_>>().join(",");
/// std::fs::write(&path, row + "\n").unwrap();
/// let ds = transferlab::data::read_digits_csv(&path)?;
/// assert_eq!((ds.len(), ds.labels[0], ds.pixels()[0]), (1, 7, 1.0));
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_digits_csv(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    parse(&codec::read_maybe_gzip(path, FORMAT)?, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<Dataset> {
    let err = |reason: String| Error::format(path, FORMAT, reason);
    let text = std::str::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text ({e})")))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(err(format!(
                "line {line_no} has {} values; expected {} (64 pixel values 0..16, then the label 0..9)",
                fields.len(),
                PIXELS + 1
            )));
        }
        for (col, field) in fields.iter().enumerate() {
            let v = integer(field).ok_or_else(|| {
                err(format!("line {line_no}, column {}: {field:?} is not a non-negative integer", col + 1))
            })?;
            if col < PIXELS {
                if v > MAX_VALUE {
                    return Err(err(format!(
                        "line {line_no}, column {}: pixel value {v} is outside 0..{MAX_VALUE}",
                        col + 1
                    )));
                }
                pixels.push(v as f32 / MAX_VALUE as f32);
            } else {
                if v > 9 {
                    return Err(err(format!("line {line_no}: label {v} is outside 0..9")));
                }
                labels.push(v);
            }
        }
    }
    if labels.is_empty() {
        return Err(err("no data rows".into()));
    }
    Dataset::new(pixels, (1, 8, 8), labels, Dataset::numbered_classes(10))
}

/// A non-negative integer, also accepting integral floats such as `16.0` (some exports).
fn integer(s: &str) -> Option<u32> {
    if let Ok(v) = s.parse::<u32>() {
        return Some(v);
    }
    let f = s.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[&str]) -> String {
        values.join(",")
    }

    #[test]
    fn rejects_bad_rows() {
        let mut v = vec!["0"; 65];
        let p = Path::new("t.csv");
        v[3] = "x";
        assert!(parse(row(&v).as_bytes(), p).unwrap_err().to_string().contains("column 4"));
        v[3] = "17";
        assert!(parse(row(&v).as_bytes(), p).unwrap_err().to_string().contains("outside 0..16"));
        v[3] = "0";
        v[64] = "10";
        assert!(parse(row(&v).as_bytes(), p).unwrap_err().to_string().contains("label 10"));
        assert!(parse(row(&v[..60]).as_bytes(), p).unwrap_err().to_string().contains("has 60 values"));
        v[64] = "3.0";
        assert_eq!(parse(row(&v).as_bytes(), p).unwrap().labels, vec![3]);
    }
}
