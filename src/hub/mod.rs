//! Hugging Face hub access, offline-first: models and datasets by hub id, cached in the
//! standard cache that Python's huggingface_hub shares.
//!
//! - [`HubConfig`]: `HF_HOME` / `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.
//! - [`Hub::get`]: a cached file is used without touching the network; otherwise the
//!   `hf-hub` crate downloads it (progress shown, resumed after a dropped connection) into
//!   `models--org--name/{blobs,snapshots,refs}`, and we verify it against the hub's
//!   sha256/git-sha1 etag.
//! - [`LoopbackHub`]: a local hub for tests and notebooks.
//! - [`ModelRegistry`]: models by hub id; [`ModelRegistry::load_clip`] and
//!   [`ModelRegistry::load_vit`] read HF-layout repositories (`config.json`, weights,
//!   `vocab.json` + `merges.txt`, `preprocessor_config.json`) into our own ViT and CLIP
//!   ([`crate::models::Vit`], [`crate::models::Clip`]; not candle-transformers, whose build
//!   is too costly on 2 cores and again in every notebook kernel).
//! - Datasets by hub id ([`load_dataset`]): the Parquet shards of a split, decoded with the
//!   columns the dataset card names.
//!
//! What is `hf-hub`'s and what is ours: `hf-hub` 0.5 (its blocking `ureq` client, rustls, no
//! tokio) does the protocol (metadata, redirect to the CDN, resumable download, per-blob lock,
//! snapshot link, ref) and the listings. Ours are what it lacks: `HF_HUB_OFFLINE` and offline
//! listings, reuse of a blob already cached under another commit, the checksum, errors that
//! say whether the repository, the revision or the file is missing (the hub's `X-Error-Code`,
//! read with one more request only after a failure), progress in notebooks, and everything
//! above the file level. `hf-hub` 1.0 is async-only (tokio + reqwest + hf-xet; 148 more crates,
//! 14 minutes cold on 2 cores); 0.5 adds four small crates to our tree. Xet-backed files are
//! fetched through the hub's `resolve` redirect as any other file.

mod cache;
mod config;
mod download;
mod loopback;
mod repo;

pub use cache::RepoCache;
pub use config::{HubConfig, DEFAULT_ENDPOINT};
pub use download::{git_sha1_hex, sha256_hex, FileMeta, Hub, RepoInfo};
pub use crate::error::HubError;
pub use loopback::{Fault, LoopbackHub, LFS_THRESHOLD};
pub use repo::{is_commit, Repo, RepoKind};
mod datasets;
pub use datasets::{cifar10_subset, fetch_split, CIFAR10, load_dataset, parse_card_features, split_files, DatasetRequest, Feature, HUB_DATASETS};
mod models;
pub use models::{statistics_from_config, timm_to_ours, ClipBundle, Family, ModelEntry, ModelRegistry, Preprocess, Source, CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD};
mod fetch;
pub use fetch::{fetch, files_to_fetch, repo_for_id};
