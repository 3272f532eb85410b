//! safetensors reading and (atomic) writing.

use super::NamedTensors;
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
