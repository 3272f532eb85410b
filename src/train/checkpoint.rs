//! Training checkpoints: model, optimiser state and progress in one safetensors file, written
//! atomically so that a run killed at any moment resumes from the last completed epoch.

use crate::error::{Error, Result};
use crate::weights::{self, NamedTensors};
use std::collections::HashMap;
use std::path::Path;

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Identifies the run (model, data size, configuration); resuming a different run is refused.
    pub fingerprint: String,
    /// The per-epoch history so far, as JSON.
    pub history: String,
}

const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const META: &str = "transferlab.checkpoint";

/// Write a checkpoint atomically.
pub fn save(path: &Path, model: &NamedTensors, optim: &NamedTensors, meta: &CheckpointMeta) -> Result<()> {
    let mut all = NamedTensors::new();
    for (k, v) in model {
        all.insert(format!("{MODEL}{k}"), v.clone());
    }
    for (k, v) in optim {
        all.insert(format!("{OPTIM}{k}"), v.clone());
    }
    let mut m = HashMap::new();
    m.insert(META.to_string(), serde_json::to_string(meta).expect("meta serialises"));
    weights::write_safetensors(path, &all, Some(m))
}

/// Read a checkpoint: (model tensors, optimiser tensors, meta).
pub fn load(path: &Path) -> Result<(NamedTensors, NamedTensors, CheckpointMeta)> {
    let meta = weights::read_safetensors_metadata(path)?;
    let json = meta
        .get(META)
        .ok_or_else(|| Error::format(path, "transferlab checkpoint", "no checkpoint metadata; is this a weights file?"))?;
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| Error::format(path, "transferlab checkpoint", format!("metadata unreadable: {e}")))?;
    let all = weights::read_safetensors(path)?;
    let mut model = NamedTensors::new();
    let mut optim = NamedTensors::new();
    for (k, v) in all {
        if let Some(n) = k.strip_prefix(MODEL) {
            model.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix(OPTIM) {
            optim.insert(n.to_string(), v);
        }
    }
    Ok((model, optim, meta))
}
