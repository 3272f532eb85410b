//! safetensors reading and (atomic) writing.

use super::{NamedTensors, TensorInfo};
use crate::error::{Error, Result};
use crate::fsutil;
use candle_core::Device;
use std::collections::HashMap;
use std::path::Path;

/// Read every tensor of a safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = fsutil::read(path)?;
    safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    Ok(map.into_iter().collect())
}

/// The free-form `__metadata__` of a safetensors file (empty if it has none).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = fsutil::read(path)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, "safetensors", e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Names, candle dtypes and shapes from a safetensors header, in data order, without reading
/// the tensor data.
pub(crate) fn describe_safetensors(path: &Path) -> Result<Vec<TensorInfo>> {
    use std::io::Read;
    // safetensors' own limit on header size; a larger length field means a corrupt file.
    const MAX_HEADER: u64 = 100_000_000;
    let bad = |reason: String| Error::format(path, "safetensors", reason);
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("no header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} is implausibly large")));
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header).map_err(|e| Error::io("read", path, e))?;
    if header.len() as u64 != n {
        return Err(bad("the file ends inside the header (truncated file?)".into()));
    }
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let mut infos = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let info: safetensors::tensor::TensorInfo =
            serde_json::from_value(v).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let dtype = candle_core::DType::try_from(info.dtype).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        infos.push((info.data_offsets.0, TensorInfo { name, dtype, shape: info.shape }));
    }
    infos.sort_by_key(|(offset, _)| *offset);
    Ok(infos.into_iter().map(|(_, i)| i).collect())
}

/// Write tensors (and optional string metadata) as safetensors, atomically.
pub fn write_safetensors(path: &Path, tensors: &NamedTensors, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let contiguous: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(contiguous.iter().map(|(k, t)| (k.as_str(), t)), metadata)
        .map_err(|e| Error::invalid("tensors to save", e.to_string()))?;
    fsutil::write_bytes_atomic(path, &bytes)
}
