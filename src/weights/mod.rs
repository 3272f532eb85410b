//! Weight files: safetensors (read and write) and PyTorch `.pth` (read), as named tensors.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use transferlab::weights::{self, NamedTensors};
//! use candle_core::{Device, Tensor};
//! let mut t = NamedTensors::new();
//! t.insert("fc.weight".into(), Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap());
//! let path = dir.path().join("w.safetensors");
//! weights::write_safetensors(&path, &t, None).unwrap();
//! let back = weights::read_weights(&path).unwrap();
//! assert_eq!(back["fc.weight"].dims(), &[2, 3]);
//! ```

mod pickle;
mod pth;
mod safetensors_io;

pub use pth::{read_pth, strip_prefix, unwrap_wrappers};
pub use safetensors_io::{read_safetensors, read_safetensors_metadata, write_safetensors};

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Tensors by parameter name, sorted by name.
pub type NamedTensors = BTreeMap<String, Tensor>;

/// The weight-file formats transferlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Hugging Face safetensors.
    Safetensors,
    /// PyTorch >= 1.6 `torch.save` (a zip archive holding `data.pkl` and raw storages).
    PthZip,
    /// PyTorch < 1.6 `torch.save` (a sequence of pickles followed by raw storages).
    PthLegacy,
}

/// Detect a weight file's format from its first bytes.
pub fn detect_format(path: &Path) -> Result<WeightFormat> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut head = Vec::with_capacity(9);
    f.take(9).read_to_end(&mut head).map_err(|e| Error::io("read", path, e))?;
    let n = head.len();
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        Ok(WeightFormat::PthZip)
    } else if n == 9 && head[8] == b'{' {
        // A safetensors header length (u64, little endian) can start with the byte 0x80 of a
        // pickle; the JSON header that follows it cannot be mistaken, so it is checked first.
        Ok(WeightFormat::Safetensors)
    } else if n >= 2 && head[0] == 0x80 {
        Ok(WeightFormat::PthLegacy)
    } else if n >= 8 {
        Ok(WeightFormat::Safetensors)
    } else {
        Err(Error::format(path, "weights", "the file is too short to hold any tensor"))
    }
}

/// Read every tensor of a weight file, whatever its format, onto the CPU.
///
/// PyTorch files go through a tensor-only unpickler: see [`read_pth`] for which dict of a
/// checkpoint is read, how dtypes map, and why some files are refused as unsafe.
pub fn read_weights(path: &Path) -> Result<NamedTensors> {
    match detect_format(path)? {
        WeightFormat::Safetensors => read_safetensors(path),
        WeightFormat::PthZip | WeightFormat::PthLegacy => read_pth(path),
    }
}

/// One tensor of a weight file, described without loading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name [`read_weights`] gives it.
    pub name: String,
    /// The dtype [`read_weights`] loads it as (for `.pth`, after the widening [`read_pth`]
    /// documents, e.g. int32 is reported as I64).
    pub dtype: DType,
    /// Its dimensions.
    pub shape: Vec<usize>,
}

/// The format of a weight file and its tensors' names, dtypes and shapes, in file order.
///
/// No tensor is built: only the safetensors JSON header or the `.pth` pickle is parsed (a
/// zip `.pth` reads just its `data.pkl`; a legacy `.pth` is read whole, its pickles lying in
/// front of the data). The pickle is checked against the same allow-list as [`read_weights`],
/// so an unsafe file fails here too.
pub fn describe_weights(path: &Path) -> Result<(WeightFormat, Vec<TensorInfo>)> {
    let format = detect_format(path)?;
    let infos = match format {
        WeightFormat::Safetensors => safetensors_io::describe_safetensors(path)?,
        WeightFormat::PthZip | WeightFormat::PthLegacy => pth::describe_pth(path, format)?,
    };
    Ok((format, infos))
}

/// How the tensors of a file compare with those a model expects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Names present in both with the same shape, loaded.
    pub loaded: Vec<String>,
    /// Names the model expects that the file lacks.
    pub missing: Vec<String>,
    /// Names the file has that the model does not expect.
    pub unexpected: Vec<String>,
    /// Names present in both with different shapes: (name, model shape, file shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// Compare `expected` (model) with `found` (file) shapes.
    pub fn compare(expected: &BTreeMap<String, Vec<usize>>, found: &NamedTensors) -> Self {
        let mut r = LoadReport::default();
        for (name, shape) in expected {
            match found.get(name) {
                None => r.missing.push(name.clone()),
                Some(t) if t.dims() != shape.as_slice() => {
                    r.mismatched.push((name.clone(), shape.clone(), t.dims().to_vec()))
                }
                Some(_) => r.loaded.push(name.clone()),
            }
        }
        r.unexpected = found.keys().filter(|k| !expected.contains_key(*k)).cloned().collect();
        r
    }

    /// Whether every expected tensor was found with the right shape and nothing else was there.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// A one-paragraph description naming every offending tensor.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing from the file: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("not in the model: {}", self.unexpected.join(", ")));
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|(n, e, f)| format!("{n} (model {e:?}, file {f:?})"))
                .collect();
            parts.push(format!("wrong shape: {}", m.join(", ")));
        }
        if parts.is_empty() {
            format!("all {} tensors match", self.loaded.len())
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_whose_header_length_starts_like_a_pickle_is_still_safetensors() {
        let mut header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
        header.resize(0x80, b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        assert_eq!(bytes[0], 0x80);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(detect_format(&path).unwrap(), WeightFormat::Safetensors);
        let w = read_weights(&path).unwrap();
        assert_eq!(w["w"].to_vec1::<f32>().unwrap(), vec![1.5]);
    }
}
