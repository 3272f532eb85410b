//! Data sources named by a short string, for the command line and sweep configurations.

use super::Dataset;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Where a dataset comes from.
///
/// | string | source |
/// |---|---|
/// | `digits` | the embedded UCI/scikit-learn digits (1,797 8x8 images) |
/// | `synthetic` | the synthetic shapes generator with its defaults |
/// | `idx:IMAGES,LABELS` | MNIST-format IDX files (gzip or not) |
/// | `cifar10:FILE[,FILE...]` | CIFAR-10 binary batches |
/// | `cifar100:FILE[,FILE...]` | CIFAR-100 binary (fine labels) |
/// | `folder:DIR` | an image folder, one sub-folder per class |
/// | `parquet:FILE` | Hugging Face datasets parquet (`image`, `label` columns) |
///
/// ```
/// use transferlab::data::DataSource;
/// assert_eq!(DataSource::parse("digits").unwrap(), DataSource::Digits);
/// assert!(DataSource::parse("mnist").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    Digits,
    Synthetic,
    Idx { images: PathBuf, labels: PathBuf },
    Cifar10(Vec<PathBuf>),
    Cifar100(Vec<PathBuf>),
    Folder(PathBuf),
    Parquet(PathBuf),
}

impl DataSource {
    /// Parse a source string (see the table above).
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let paths = || -> Vec<PathBuf> { rest.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect() };
        let need = |n: usize, form: &str| -> Result<Vec<PathBuf>> {
            let p = paths();
            if p.len() < n {
                return Err(Error::invalid("data source", format!("{s:?}: expected {form}")));
            }
            Ok(p)
        };
        Ok(match kind {
            "digits" => DataSource::Digits,
            "synthetic" => DataSource::Synthetic,
            "idx" => {
                let p = need(2, "idx:IMAGES,LABELS")?;
                DataSource::Idx { images: p[0].clone(), labels: p[1].clone() }
            }
            "cifar10" => DataSource::Cifar10(need(1, "cifar10:FILE[,FILE...]")?),
            "cifar100" => DataSource::Cifar100(need(1, "cifar100:FILE[,FILE...]")?),
            "folder" => DataSource::Folder(need(1, "folder:DIR")?.remove(0)),
            "parquet" => DataSource::Parquet(need(1, "parquet:FILE")?.remove(0)),
            _ => {
                return Err(Error::invalid(
                    "data source",
                    format!("{s:?} is not a known source; use digits, synthetic, idx:IMAGES,LABELS, cifar10:FILES, cifar100:FILES, folder:DIR or parquet:FILE"),
                ))
            }
        })
    }

    /// Load the dataset.
    pub fn load(&self) -> Result<Dataset> {
        match self {
            DataSource::Digits => super::digits(),
            DataSource::Synthetic => super::synthetic::generate(&super::synthetic::SyntheticConfig::default()),
            DataSource::Idx { images, labels } => super::read_idx_dataset(images, labels),
            DataSource::Cifar10(p) => super::read_cifar10(p),
            DataSource::Cifar100(p) => super::read_cifar100(p, true),
            DataSource::Folder(p) => super::read_image_folder(p, None),
            DataSource::Parquet(p) => super::read_hf_parquet(p, "image", "label", None),
        }
    }
}
