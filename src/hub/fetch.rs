//! `tlab fetch ID`: everything a model or dataset needs, into the cache, so later work runs
//! offline (`HF_HUB_OFFLINE=1`).

use super::datasets::{split_files, HUB_DATASETS};
use super::download::Hub;
use super::repo::Repo;
use crate::error::Result;
use std::path::PathBuf;

/// What to fetch for an id: `datasets/ORG/NAME` (or a known dataset id such as
/// `uoft-cs/cifar10`) is a dataset, anything else a model repository.
pub fn repo_for_id(id: &str) -> Repo {
    if let Some(d) = id.strip_prefix("datasets/") {
        return Repo::dataset(d);
    }
    if HUB_DATASETS.iter().any(|(d, _)| *d == id) {
        return Repo::dataset(id);
    }
    Repo::model(id.strip_prefix("models/").unwrap_or(id))
}

/// The files of a listing worth fetching: for datasets the card and the Parquet shards (of
/// `split` only, if given); for models configuration, tokenizer and safetensors weights
/// (PyTorch `.bin`, TensorFlow, Flax and ONNX copies of the same weights are skipped).
pub fn files_to_fetch(repo: &Repo, files: &[String], split: Option<&str>) -> Vec<String> {
    match repo.kind {
        super::RepoKind::Dataset => {
            let mut out: Vec<String> = files.iter().filter(|f| *f == "README.md").cloned().collect();
            match split {
                Some(s) => out.extend(split_files(files, s, None).into_iter().map(str::to_string)),
                None => out.extend(files.iter().filter(|f| f.ends_with(".parquet")).cloned()),
            }
            out
        }
        super::RepoKind::Model => files
            .iter()
            .filter(|f| !f.contains('/'))
            .filter(|f| f.ends_with(".json") || f.ends_with(".safetensors") || f.ends_with(".txt") || *f == "README.md")
            .cloned()
            .collect(),
    }
}

/// Download `id` into the cache (already cached files are not fetched again); the local paths.
pub fn fetch(hub: &Hub, id: &str, split: Option<&str>) -> Result<Vec<PathBuf>> {
    let repo = repo_for_id(id);
    let info = hub.info(&repo)?;
    let pinned = repo.clone().at(&info.commit);
    let wanted = files_to_fetch(&repo, &info.files, split);
    let mut out = Vec::new();
    for f in wanted {
        out.push(hub.get(&pinned, &f)?);
    }
    Ok(out)
}
