//! The cache layout shared with Python's huggingface_hub:
//!
//! ```text
//! <cache>/models--org--name/
//!     blobs/<etag>                         file contents, named by the hub's etag
//!     snapshots/<commit>/<path/in/repo>    relative symlinks into blobs/
//!     refs/<revision>                      the commit a branch or tag pointed to
//! ```
//!
//! Either side finds what the other downloaded. Our own bookkeeping (repository listings, for
//! offline dataset lookups) lives in `.tlab/`, which huggingface_hub ignores.

use super::repo::{is_commit, Repo};
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A repository's folder in a cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &Repo) -> Self {
        Self { dir: cache_dir.join(repo.cache_folder()) }
    }

    /// The commit `revision` resolves to in the cache: itself for a commit hash, else what
    /// `refs/<revision>` records.
    pub fn commit(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        let r = fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let r = r.trim();
        (!r.is_empty()).then(|| r.to_string())
    }

    /// The snapshot path of `file` at `commit` (which may not exist).
    pub fn snapshot_path(&self, commit: &str, file: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit).join(file)
    }

    /// `file` at `revision`, if the cache holds it.
    pub fn get(&self, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = self.commit(revision)?;
        let p = self.snapshot_path(&commit, file);
        // A dangling symlink (blob removed) is not a hit.
        p.is_file().then_some(p)
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// Record that `revision` points at `commit` (as Python does: the hash, no newline).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        crate::fsutil::write_bytes_atomic(&path, commit.as_bytes())
    }

    /// Point `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative symlink (a copy
    /// where the file system has no symlinks).
    pub fn link_snapshot(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dst = self.snapshot_path(commit, file);
        let parent = dst.parent().expect("snapshot path has a parent");
        fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        let blob = self.blob_path(etag);
        let _ = fs::remove_file(&dst);
        // snapshots/<commit>/a/b.txt -> ../../../blobs/<etag>: one `..` per folder below the repo.
        let depth = file.split('/').count() + 1;
        let rel: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag);
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(&rel, &dst).is_ok();
        #[cfg(not(unix))]
        let linked = false;
        if !linked {
            fs::copy(&blob, &dst).map_err(|e| Error::io("copy into the snapshot", &dst, e))?;
        }
        Ok(dst)
    }

    /// Files of the cached snapshot of `revision`, as repository paths.
    pub fn snapshot_files(&self, revision: &str) -> Vec<String> {
        let Some(commit) = self.commit(revision) else { return Vec::new() };
        let root = self.dir.join("snapshots").join(commit);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Our own bookkeeping file `name` (in `.tlab/`).
    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(".tlab").join(name)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.is_file() {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}
