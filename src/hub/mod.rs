//! Hugging Face hub access, offline-first: models and datasets by hub id, cached in the
//! standard cache that Python's huggingface_hub shares.
//!
//! - [`HubConfig`]: `HF_HOME` / `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.
//! - [`Hub::get`]: a cached file is used without touching the network; otherwise it is
//!   downloaded (progress shown, resumed after a dropped connection, verified against the
//!   hub's sha256/git-sha1 etag) into `models--org--name/{blobs,snapshots,refs}`.
//! - [`LoopbackHub`]: a local hub for tests and notebooks.
//! - [`ModelRegistry`]: models by hub id; [`ModelRegistry::load_clip`] and
//!   [`ModelRegistry::load_vit`] read HF-layout repositories (`config.json`, weights,
//!   `vocab.json` + `merges.txt`, `preprocessor_config.json`) into our own ViT and CLIP
//!   ([`crate::models::Vit`], [`crate::models::Clip`]; not candle-transformers, whose build
//!   is too costly on 2 cores and again in every notebook kernel).
//!
//! Why not the `hf-hub` crate: its 1.0 release is async (tokio + reqwest + hf-xet), a large
//! build for what is four HTTP requests; this module does the same protocol over `ureq`
//! (rustls, no OpenSSL) and keeps the cache layout byte-compatible with Python.

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
pub use datasets::{fetch_split, CIFAR10, load_dataset, parse_card_features, split_files, DatasetRequest, Feature, HUB_DATASETS};
mod models;
pub use models::{statistics_from_config, timm_to_ours, ClipBundle, Family, ModelEntry, ModelRegistry, Preprocess, Source, CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD};
mod fetch;
pub use fetch::{fetch, files_to_fetch, repo_for_id};
