//! Result tables: polars DataFrames saved as parquet or CSV, atomically.

use crate::error::{Error, Result};
use crate::fsutil;
use polars::prelude::*;
use std::path::Path;

/// Save `df` as parquet or CSV by the file extension, atomically (a reader never sees a
/// half-written table).
pub fn save_table(df: &DataFrame, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut df = df.clone();
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let mut buf = Vec::new();
    match ext.as_deref() {
        Some("parquet") => {
            ParquetWriter::new(&mut buf).finish(&mut df)?;
        }
        Some("csv") => {
            CsvWriter::new(&mut buf).include_header(true).finish(&mut df)?;
        }
        _ => {
            return Err(Error::invalid("table path", format!("{}: use a .parquet or .csv extension", path.display())));
        }
    }
    fsutil::write_bytes_atomic(path, &buf)
}

/// Load a table saved by [`save_table`].
pub fn load_table(path: impl AsRef<Path>) -> Result<DataFrame> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let df = match ext.as_deref() {
        Some("parquet") => ParquetReader::new(file).finish(),
        Some("csv") => CsvReader::new(file).finish(),
        _ => return Err(Error::invalid("table path", format!("{}: use a .parquet or .csv extension", path.display()))),
    };
    df.map_err(|e| Error::format(path, "table", e.to_string()))
}
