//! Repository ids and where they live in the cache and on the hub.

use std::fmt;

/// Whether a repository holds a model or a dataset (they live in separate namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A hub repository at a revision (branch, tag or commit hash; `main` by default).
///
/// ```
/// use transferlab::hub::Repo;
/// let r = Repo::dataset("uoft-cs/cifar10");
/// assert_eq!(r.cache_folder(), "datasets--uoft-cs--cifar10");
/// assert_eq!(r.resolve_path("plain_text/test-00000-of-00001.parquet"),
///            "datasets/uoft-cs/cifar10/resolve/main/plain_text/test-00000-of-00001.parquet");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    pub kind: RepoKind,
    /// `org/name` (or a bare `name` for legacy repositories).
    pub id: String,
    pub revision: String,
}

impl Repo {
    /// A model repository at `main`.
    pub fn model(id: &str) -> Self {
        Self { kind: RepoKind::Model, id: id.to_string(), revision: "main".into() }
    }

    /// A dataset repository at `main`.
    pub fn dataset(id: &str) -> Self {
        Self { kind: RepoKind::Dataset, id: id.to_string(), revision: "main".into() }
    }

    /// The same repository at another revision.
    pub fn at(mut self, revision: &str) -> Self {
        self.revision = revision.to_string();
        self
    }

    /// The folder in the cache, as Python's huggingface_hub names it
    /// (`models--org--name`, `datasets--org--name`).
    pub fn cache_folder(&self) -> String {
        let kind = match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        format!("{kind}--{}", self.id.replace('/', "--"))
    }

    /// `resolve` path of a file relative to the endpoint.
    pub fn resolve_path(&self, file: &str) -> String {
        format!("{}{}/resolve/{}/{}", self.url_prefix(), self.id, encode_revision(&self.revision), file)
    }

    /// The API path that describes the repository at its revision (commit and file list).
    pub fn info_path(&self) -> String {
        let kind = match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        format!("api/{kind}/{}/revision/{}", self.id, encode_revision(&self.revision))
    }

    fn url_prefix(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }
}

/// Revisions such as `refs/convert/parquet` travel URL-encoded in one path segment.
fn encode_revision(rev: &str) -> String {
    rev.replace('/', "%2F")
}

/// Whether a revision is a full commit hash (then no `refs/` lookup is needed).
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RepoKind::Model => write!(f, "{}", self.id)?,
            RepoKind::Dataset => write!(f, "datasets/{}", self.id)?,
        }
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}
