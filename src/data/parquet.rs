//! Hugging Face `datasets`-style Parquet files: an image column holding encoded PNG/JPEG
//! (a struct `{bytes: binary, path: string}` as `datasets.Image` writes it, or plain binary)
//! and an integer label column.

use super::codec::{self, Decoded};
use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::fsutil;
use polars::prelude::*;
use rayon::prelude::*;
use std::fs::File;
use std::path::Path;

const FORMAT: &str = "Parquet (Hugging Face datasets)";

/// Read a Hugging Face `datasets`-style Parquet file.
///
/// `image_col` is a struct column with a `bytes` field (or a plain binary column) of encoded
/// PNG or JPEG images; `label_col` holds non-negative integer labels. With `class_names`
/// every label must be below their count; without, classes are named "0".."max". Images must
/// all have one size; they stay one channel only if all are grayscale.
///
/// ```
/// use transferlab::data::{read_hf_parquet, write_hf_parquet, Dataset};
/// # let dir = tempfile::tempdir().unwrap();
/// let ds = Dataset::new(vec![0.0, 1.0, 1.0, 0.0], (1, 2, 1), vec![1, 0], Dataset::numbered_classes(2))?;
/// let path = dir.path().join("test-00000-of-00001.parquet");
/// write_hf_parquet(&path, &ds, "image", "label")?;
/// let back = read_hf_parquet(&path, "image", "label", Some(vec!["cat".into(), "dog".into()]))?;
/// assert_eq!(back.pixels(), ds.pixels());
/// assert_eq!(back.class_names[back.labels[0] as usize], "dog");
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_hf_parquet(
    path: impl AsRef<Path>,
    image_col: &str,
    label_col: &str,
    class_names: Option<Vec<String>>,
) -> Result<Dataset> {
    let path = path.as_ref();
    let err = |reason: String| Error::format(path, FORMAT, reason);
    if image_col == label_col {
        return Err(Error::invalid("Parquet columns", format!("image and label columns are both named {image_col:?}")));
    }
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader.schema().map_err(|e| {
        err(format!("cannot read the Parquet footer ({e}); the file is truncated or not Parquet: download it again"))
    })?;
    let available: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    for col in [image_col, label_col] {
        if !available.iter().any(|a| a == col) {
            return Err(err(format!("no column named {col:?}; available columns: {}", available.join(", "))));
        }
    }
    let reader = reader.with_columns(Some(vec![image_col.to_string(), label_col.to_string()]));
    // polars asserts on some corrupt pages instead of returning an error; a damaged download
    // must not take the notebook kernel down with it.
    let df = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.finish()))
        .map_err(|_| err("the data pages are corrupt (the Parquet decoder panicked); download the file again".into()))?
        .map_err(|e| err(format!("cannot read the data pages ({e}); the file is damaged: download it again")))?;

    let images = image_bytes(&df, image_col, path)?;
    let labels = read_labels(&df, label_col, path, class_names.as_ref().map(|c| c.len()))?;
    let decoded: Vec<Result<Decoded>> = images
        .par_iter()
        .enumerate()
        .map(|(row, bytes)| {
            codec::decode_image(bytes, path, FORMAT).map_err(|e| match e {
                Error::Format { reason, .. } => err(format!("row {row}, column {image_col:?}: {reason}")),
                other => other,
            })
        })
        .collect();
    let decoded = decoded.into_iter().collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = (0..decoded.len()).map(|r| format!("row {r}")).collect();
    let (pixels, shape) = codec::stack(decoded, &names, path, FORMAT)?;
    let class_names = match class_names {
        Some(c) => c,
        None => {
            let max = labels.iter().copied().max().unwrap_or(0) as usize;
            Dataset::numbered_classes(max + 1)
        }
    };
    Dataset::new(pixels, shape, labels, class_names)
}

/// Write a dataset as a Hugging Face `datasets`-style Parquet file (atomically): `image_col`
/// is a struct `{bytes, path}` of 8-bit PNGs named `<index>.png`, `label_col` an int64
/// column. Images need 1 or 3 channels; pixels are rounded to bytes.
pub fn write_hf_parquet(path: impl AsRef<Path>, ds: &Dataset, image_col: &str, label_col: &str) -> Result<()> {
    if image_col == label_col {
        return Err(Error::invalid("Parquet columns", format!("image and label columns are both named {image_col:?}")));
    }
    let pngs = (0..ds.len())
        .into_par_iter()
        .map(|i| codec::encode_png(ds.image(i), ds.shape))
        .collect::<Result<Vec<_>>>()?;
    let n = ds.len();
    let bytes = Series::new("bytes".into(), pngs);
    let names: Vec<String> = (0..n).map(|i| format!("{i}.png")).collect();
    let paths = Series::new("path".into(), names);
    let image = StructChunked::from_series(image_col.into(), n, [bytes, paths].iter())?.into_series();
    let labels: Vec<i64> = ds.labels.iter().map(|&y| y as i64).collect();
    let labels = Series::new(label_col.into(), labels);
    let mut df = DataFrame::new(n, vec![image.into(), labels.into()])?;
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf).finish(&mut df)?;
    fsutil::write_bytes_atomic(path.as_ref(), &buf)
}

/// The encoded image of every row, from a struct column's `bytes` field or a binary column.
fn image_bytes(df: &DataFrame, col: &str, path: &Path) -> Result<Vec<Vec<u8>>> {
    let err = |reason: String| Error::format(path, FORMAT, reason);
    let column = df.column(col)?;
    let binary = match column.dtype() {
        DataType::Struct(fields) => {
            if !fields.iter().any(|f| f.name().as_str() == "bytes") {
                let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
                return Err(err(format!(
                    "image column {col:?} is a struct without a \"bytes\" field (fields: {})",
                    names.join(", ")
                )));
            }
            column.struct_()?.field_by_name("bytes")?
        }
        DataType::Binary => column.as_materialized_series().clone(),
        other => {
            return Err(err(format!(
                "image column {col:?} has type {other}, expected a struct {{bytes, path}} or binary of encoded images"
            )))
        }
    };
    let binary = binary
        .binary()
        .map_err(|_| err(format!("the \"bytes\" field of image column {col:?} is not binary")))?;
    let mut out = Vec::with_capacity(binary.len());
    for (row, v) in binary.iter().enumerate() {
        match v {
            Some(b) => out.push(b.to_vec()),
            None => {
                return Err(err(format!(
                    "row {row} of image column {col:?} has no embedded image bytes (images stored only by path are not supported)"
                )))
            }
        }
    }
    Ok(out)
}

fn read_labels(df: &DataFrame, col: &str, path: &Path, num_classes: Option<usize>) -> Result<Vec<u32>> {
    let err = |reason: String| Error::format(path, FORMAT, reason);
    let column = df.column(col)?;
    if !column.dtype().is_integer() {
        return Err(err(format!("label column {col:?} has type {}, expected integers", column.dtype())));
    }
    let values = column.cast(&DataType::Int64)?;
    let values = values.i64()?;
    let mut out = Vec::with_capacity(values.len());
    for (row, v) in values.iter().enumerate() {
        let y = v.ok_or_else(|| err(format!("row {row} of label column {col:?} is null")))?;
        let bad = y < 0 || y > u32::MAX as i64 || num_classes.is_some_and(|n| y as u64 >= n as u64);
        if bad {
            let range = match num_classes {
                Some(n) => format!("0..{} for the {n} class names given", n.saturating_sub(1)),
                None => "non-negative".to_string(),
            };
            return Err(err(format!("label {y} in row {row} of column {col:?} is out of range: labels must be {range}")));
        }
        out.push(y as u32);
    }
    Ok(out)
}
