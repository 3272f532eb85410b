//! Datasets by hub id, as the Parquet files the hub stores them in: the split's shards are
//! located in the repository listing (`<config>/<split>-00000-of-0000N.parquet`, or a
//! `<split>/` folder), downloaded into the cache, decoded with
//! [`crate::data::read_hf_parquet`], and labelled with the class names of the dataset card
//! (the `dataset_info.features` of `README.md`, where `datasets` writes `ClassLabel` names).

use super::download::Hub;
use crate::error::HubError;
use super::repo::Repo;
use crate::data::{read_hf_parquet, Dataset};
use crate::error::{Error, Result};

/// CIFAR-10's hub id (Krizhevsky 2009; 50,000 training and 10,000 test images).
pub const CIFAR10: &str = "uoft-cs/cifar10";

/// Image-classification datasets known to load this way (any hub id with Parquet files and
/// an image + class-label feature works).
pub const HUB_DATASETS: &[(&str, &str)] = &[
    ("ylecun/mnist", "MNIST: 28x28 gray digits, 10 classes; splits train (60k), test (10k)"),
    ("zalando-datasets/fashion_mnist", "Fashion-MNIST: 28x28 gray clothing, 10 classes; train, test"),
    ("uoft-cs/cifar10", "CIFAR-10: 32x32 colour, 10 classes; train (50k), test (10k)"),
    ("uoft-cs/cifar100", "CIFAR-100: 32x32 colour, 100 fine (`fine_label`) / 20 coarse (`coarse_label`) classes; train, test"),
];

/// Which part of a hub dataset to load.
///
/// ```
/// use transferlab::hub::DatasetRequest;
/// let req = DatasetRequest::new("uoft-cs/cifar100", "test").label("coarse_label");
/// assert_eq!(req.split, "test");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRequest {
    pub id: String,
    /// `train`, `test`, `validation`...
    pub split: String,
    /// The dataset configuration (first folder of the Parquet paths); needed only when a
    /// repository has several.
    pub config: Option<String>,
    /// The label column; by default the card's first class-label feature.
    pub label: Option<String>,
    /// Branch, tag or commit.
    pub revision: String,
}

impl DatasetRequest {
    pub fn new(id: &str, split: &str) -> Self {
        Self { id: id.into(), split: split.into(), config: None, label: None, revision: "main".into() }
    }

    pub fn label(mut self, column: &str) -> Self {
        self.label = Some(column.into());
        self
    }

    pub fn config(mut self, config: &str) -> Self {
        self.config = Some(config.into());
        self
    }

    fn repo(&self) -> Repo {
        Repo::dataset(&self.id).at(&self.revision)
    }
}

/// One feature of a dataset card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    /// `image`, `class_label`, or the card's dtype (`int64`, `string`...).
    pub dtype: String,
    /// Class names, for class-label features.
    pub names: Vec<String>,
}

/// The features a dataset card (`README.md` YAML header) declares, first configuration wins.
///
/// ```
/// use transferlab::hub::parse_card_features;
/// let card = "---\ndataset_info:\n  features:\n  - name: img\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': airplane\n          '1': 'auto mobile'\n---\n# CIFAR";
/// let f = parse_card_features(card);
/// assert_eq!(f[0].dtype, "image");
/// assert_eq!(f[1].names, vec!["airplane", "auto mobile"]);
/// ```
pub fn parse_card_features(readme: &str) -> Vec<Feature> {
    let mut lines = readme.lines();
    if lines.next().map(str::trim) != Some("---") {
        return Vec::new();
    }
    let mut out: Vec<Feature> = Vec::new();
    let mut current: Option<Feature> = None;
    let mut in_names = false;
    // Only `- name:` items under `features:` are features (splits have names too).
    let mut in_features = false;
    let push = |f: Option<Feature>, out: &mut Vec<Feature>| {
        if let Some(f) = f {
            if !out.iter().any(|o| o.name == f.name) {
                out.push(f);
            }
        }
    };
    for line in lines {
        let t = line.trim();
        if t == "---" {
            break;
        }
        if t == "features:" {
            in_features = true;
            continue;
        }
        if ["splits:", "config_name:", "- config_name:", "download_size:", "dataset_size:", "configs:"].iter().any(|k| t.starts_with(k)) {
            push(current.take(), &mut out);
            in_features = false;
            in_names = false;
            continue;
        }
        if !in_features {
            continue;
        }
        if let Some(name) = t.strip_prefix("- name:") {
            push(current.take(), &mut out);
            current = Some(Feature { name: unquote(name.trim()), dtype: String::new(), names: Vec::new() });
            in_names = false;
            continue;
        }
        let Some(f) = current.as_mut() else { continue };
        if let Some(d) = t.strip_prefix("dtype:") {
            f.dtype = unquote(d.trim());
            in_names = false;
        } else if t == "class_label:" {
            f.dtype = "class_label".into();
        } else if t == "names:" && f.dtype == "class_label" {
            in_names = true;
        } else if in_names {
            match t.split_once(": ").or_else(|| t.strip_suffix(':').map(|k| (k, ""))) {
                Some((k, v)) if unquote(k).parse::<usize>().is_ok() => {
                    let i: usize = unquote(k).parse().expect("checked");
                    if f.names.len() <= i {
                        f.names.resize(i + 1, String::new());
                    }
                    f.names[i] = unquote(v.trim());
                }
                // `- name` lists (another card style) or the end of the names block.
                _ => match t.strip_prefix("- ") {
                    Some(v) => f.names.push(unquote(v.trim())),
                    None => in_names = false,
                },
            }
        }
    }
    push(current, &mut out);
    out
}

fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].replace("\\\"", "\"")
    } else {
        s.to_string()
    }
}

/// The Parquet files of `split` in a repository listing (sorted), and the configurations
/// they belong to.
pub fn split_files<'a>(files: &'a [String], split: &str, config: Option<&str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.ends_with(".parquet"))
        .filter(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            let name = parts[parts.len() - 1];
            let folder_match = parts[..parts.len() - 1].contains(&split);
            let name_match = name.starts_with(&format!("{split}-")) || name == format!("{split}.parquet");
            folder_match || name_match
        })
        .filter(|f| config.is_none_or(|c| f.split('/').next() == Some(c)))
        .collect();
    out.sort();
    out
}

/// The splits a listing has Parquet files for (for error messages).
fn available_splits(files: &[String]) -> Vec<String> {
    let mut s: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.split(['-', '.']).next().unwrap_or(name).to_string()
        })
        .collect();
    s.sort();
    s.dedup();
    s
}

/// Load a split of a hub dataset into a [`Dataset`] (cached; offline-first).
///
/// ```
/// use transferlab::hub::{load_dataset, DatasetRequest, Hub, HubConfig, LoopbackHub};
/// use transferlab::data::{write_hf_parquet, Dataset};
/// let server = LoopbackHub::start()?;
/// let dir = tempfile::tempdir().unwrap();
/// let ds = Dataset::new(vec![0.0, 1.0], (1, 1, 1), vec![1, 0], Dataset::numbered_classes(2))?;
/// let pq = dir.path().join("x.parquet");
/// write_hf_parquet(&pq, &ds, "image", "label")?;
/// server.add_dataset_file("org/bits", "plain/test-00000-of-00001.parquet", std::fs::read(&pq).unwrap());
/// let hub = Hub::new(HubConfig::new(&server.endpoint(), dir.path().join("cache")));
/// let back = load_dataset(&hub, &DatasetRequest::new("org/bits", "test"))?;
/// assert_eq!(back.labels, vec![1, 0]);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn load_dataset(hub: &Hub, req: &DatasetRequest) -> Result<Dataset> {
    let repo = req.repo();
    let files = fetch_split(hub, req).map_err(|e| with_local_copy_hint(e, &req.id))?;
    let features = match hub.info(&repo)?.files.iter().any(|f| f == "README.md") {
        true => {
            let readme = hub.get(&repo, "README.md")?;
            let text = std::fs::read_to_string(&readme).map_err(|e| Error::io("read", &readme, e))?;
            parse_card_features(&text)
        }
        false => Vec::new(),
    };
    let image_col = features.iter().find(|f| f.dtype == "image").map(|f| f.name.clone()).unwrap_or_else(|| "image".into());
    let label = match &req.label {
        Some(l) => features.iter().find(|f| &f.name == l).cloned().unwrap_or(Feature { name: l.clone(), dtype: String::new(), names: Vec::new() }),
        None => features
            .iter()
            .find(|f| f.dtype == "class_label")
            .cloned()
            .unwrap_or(Feature { name: "label".into(), dtype: String::new(), names: Vec::new() }),
    };
    let names = (!label.names.is_empty()).then(|| label.names.clone());
    let mut out: Option<Dataset> = None;
    for path in files {
        let part = read_hf_parquet(&path, &image_col, &label.name, names.clone())?;
        out = Some(match out {
            None => part,
            Some(acc) => acc.concat(&part)?,
        });
    }
    out.ok_or_else(|| Error::invalid("hub dataset", format!("{} has no rows in split {:?}", req.id, req.split)))
}

/// The first `n_train` training and `n_test` test images of CIFAR-10 by its hub id (the
/// notebooks' real-hub branches). The splits are shuffled on the hub, so the first images
/// cover every class; the shards are cached after the first call.
pub fn cifar10_subset(hub: &Hub, n_train: usize, n_test: usize) -> Result<(Dataset, Dataset)> {
    let take = |split: &str, n: usize| -> Result<Dataset> {
        let ds = load_dataset(hub, &DatasetRequest::new(CIFAR10, split))?;
        ds.select(&(0..n.min(ds.len())).collect::<Vec<_>>())
    };
    Ok((take("train", n_train)?, take("test", n_test)?))
}

/// Unreachable or offline: say how to serve a local copy too (a folder in the hub layout,
/// such as ../shared/data/cifar10-jpeg for `uoft-cs/cifar10`).
fn with_local_copy_hint(e: Error, id: &str) -> Error {
    match e {
        Error::Hub(h @ (HubError::OfflineMissing { .. } | HubError::Network { .. })) => {
            HubError::DatasetUnavailable { id: id.to_string(), cause: h.to_string() }.into()
        }
        other => other,
    }
}

/// Download (or find in the cache) the Parquet shards of a split; their local paths.
pub fn fetch_split(hub: &Hub, req: &DatasetRequest) -> Result<Vec<std::path::PathBuf>> {
    let repo = req.repo();
    let info = hub.info(&repo)?;
    let shards = split_files(&info.files, &req.split, req.config.as_deref());
    if shards.is_empty() {
        return Err(HubError::Unknown {
            what: "split",
            id: format!("{}:{}", req.id, req.split),
            hint: format!(
                "The repository has Parquet files for the splits: {}{}",
                available_splits(&info.files).join(", "),
                req.config.as_ref().map(|c| format!(" (looked only in configuration {c:?})")).unwrap_or_default()
            ),
        }
        .into());
    }
    let configs: std::collections::BTreeSet<&str> = shards.iter().filter(|f| f.contains('/')).filter_map(|f| f.split('/').next()).collect();
    if configs.len() > 1 {
        return Err(Error::invalid(
            "hub dataset configuration",
            format!(
                "{} has several configurations for split {:?} ({}): choose one with DatasetRequest::config",
                req.id,
                req.split,
                configs.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let pinned = repo.clone().at(&info.commit);
    shards.iter().map(|f| hub.get(&pinned, f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_are_found_in_both_layouts() {
        let files: Vec<String> = [
            "README.md",
            "plain_text/test-00000-of-00001.parquet",
            "plain_text/train-00001-of-00002.parquet",
            "plain_text/train-00000-of-00002.parquet",
            "other/train/0000.parquet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(split_files(&files, "test", None), vec!["plain_text/test-00000-of-00001.parquet"]);
        assert_eq!(split_files(&files, "train", Some("plain_text")).len(), 2);
        assert_eq!(split_files(&files, "train", Some("plain_text"))[0], "plain_text/train-00000-of-00002.parquet");
        assert_eq!(split_files(&files, "train", Some("other")), vec!["other/train/0000.parquet"]);
        assert!(split_files(&files, "validation", None).is_empty());
        assert_eq!(available_splits(&files), vec!["0000", "test", "train"]);
    }

    #[test]
    fn card_of_cifar100_keeps_both_label_features() {
        let card = "---\nlicense: unknown\ndataset_info:\n  config_name: cifar100\n  features:\n  - name: img\n    dtype: image\n  - name: fine_label\n    dtype:\n      class_label:\n        names:\n          '0': apple\n          '1': aquarium_fish\n  - name: coarse_label\n    dtype:\n      class_label:\n        names:\n          '0': aquatic_mammals\n  splits:\n  - name: train\n    num_bytes: 1\n---\n";
        let f = parse_card_features(card);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].names, vec!["apple", "aquarium_fish"]);
        assert_eq!(f[2].name, "coarse_label");
        assert_eq!(f[2].names, vec!["aquatic_mammals"]);
        assert!(parse_card_features("# no header").is_empty());
    }
}
