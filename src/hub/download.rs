//! Fetching files: cache first, then the `hf-hub` crate's blocking client (the hub's
//! `resolve` endpoint, the redirect to the CDN, a download resumed with `Range` after a
//! dropped connection, a lock per blob, the snapshot link and the ref), then our own check of
//! the bytes against the etag. What `hf-hub` does not do stays here: offline mode
//! (`HF_HUB_OFFLINE`), reuse of a blob the cache already holds under another commit, the
//! checksum, and errors that say whether the repository, the revision or the file is missing.

use super::cache::RepoCache;
use super::config::HubConfig;
use crate::error::HubError;
use super::repo::{Repo, RepoKind};
use crate::error::{Error, Result};
use crate::progress::{Progress, ProgressMode};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use sha1::Digest as _;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many times a dropped download is tried (resumed from where it stopped) before giving up.
const ATTEMPTS: usize = 4;

/// A client of the hub and its local cache.
///
/// ```no_run
/// use transferlab::hub::{Hub, Repo};
/// let hub = Hub::from_env();
/// let config = hub.get(&Repo::model("timm/resnet18.a1_in1k"), "config.json")?;
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Hub {
    pub config: HubConfig,
    /// The `hf-hub` client: metadata, downloads, listings.
    api: Api,
    /// Our HEAD with no redirects followed: the hub's own headers (commit, etag, `X-Error-Code`)
    /// read from its 302 or 404, to say what a failed request lacked.
    head_agent: ureq::Agent,
}

/// What the hub says about one file (from the HEAD of its `resolve` URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub commit: String,
    /// sha256 for LFS files, git blob sha1 otherwise; names the blob in the cache.
    pub etag: String,
    pub size: Option<u64>,
    /// Where the bytes are (the CDN for LFS files).
    pub location: String,
}

/// A repository's commit and file list at a revision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<String>,
}

impl Hub {
    /// A client configured from the environment (see [`HubConfig::from_env`]).
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    pub fn new(config: HubConfig) -> Self {
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(config.cache_dir.clone()))
            .with_endpoint(config.endpoint.clone())
            // Ours, not hf-hub's own lookup: HubConfig reads HF_TOKEN and HF_TOKEN_PATH too.
            .with_token(config.token.clone())
            // Our progress (a bar on a terminal, lines in a notebook) is passed per download.
            .with_progress(false)
            .with_retries(ATTEMPTS - 1)
            .with_user_agent("transferlab", env!("CARGO_PKG_VERSION"))
            .build()
            // With the rustls provider (no `native-tls` feature) hf-hub's builder has no failure path.
            .expect("hf-hub's rustls client builder is infallible");
        let head_agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("transferlab/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .build()
            .into();
        Self { config, api, head_agent }
    }

    /// The cache folder of `repo`.
    pub fn repo_cache(&self, repo: &Repo) -> RepoCache {
        RepoCache::new(&self.config.cache_dir, repo)
    }

    /// `file` of `repo` from the cache, without any network access.
    pub fn cached(&self, repo: &Repo, file: &str) -> Option<PathBuf> {
        self.repo_cache(repo).get(&repo.revision, file)
    }

    /// A local path of `file` of `repo`: the cached copy if there is one (no network
    /// access at all), otherwise downloaded, verified and cached. Offline, a missing file is
    /// an error saying how to fetch it.
    pub fn get(&self, repo: &Repo, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(repo, file) {
            return Ok(p);
        }
        self.download(repo, file)
    }

    /// Download `file` even if cached under another commit (a branch may have moved); a blob
    /// the cache already holds is linked, not fetched again.
    pub fn download(&self, repo: &Repo, file: &str) -> Result<PathBuf> {
        if self.config.offline {
            return Err(self.offline_missing(repo, file));
        }
        let remote = self.api.repo(hf_repo(repo));
        let url = remote.url(file);
        let meta = self.api.metadata(&url).map_err(|e| self.explain(repo, file, &url, e))?;
        let (commit, etag) = (meta.commit_hash().to_string(), meta.etag().to_string());
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            let reason = "the ETag is not a usable blob name".into();
            return Err(HubError::Protocol { repo: repo.to_string(), file: file.into(), url, reason }.into());
        }
        let cache = self.repo_cache(repo);
        let (blob, part) = (cache.blob_path(&etag), cache.blob_path(&etag).with_extension("part"));
        if fs::metadata(&part).is_ok_and(|m| m.len() > meta.size() as u64) {
            // Longer than the file: not a prefix of it, and hf-hub refuses to resume it.
            fs::remove_file(&part).map_err(|e| Error::io("remove a stale partial download", &part, e))?;
        }
        if fs::metadata(&part).is_ok_and(|m| m.len() == meta.size() as u64) && !blob.is_file() {
            // Complete but never moved into place (a run stopped in between): hf-hub would
            // ask for the bytes after the end, which the hub refuses.
            self.verify(repo, file, &cache, &part, &etag, Some(meta.size() as u64))?;
            fs::rename(&part, &blob).map_err(|e| Error::io("move into the cache", &blob, e))?;
        }
        if blob.is_file() {
            let path = cache.link_snapshot(&commit, file, &etag)?;
            cache.write_ref(&repo.revision, &commit)?;
            return Ok(path);
        }
        let mode = if self.config.progress { ProgressMode::Bar } else { ProgressMode::Hidden };
        let bar = DownloadBar { label: format!("download {repo}/{file}"), mode, bar: None };
        let path = remote.download_with_progress(file, bar).map_err(|e| self.explain(repo, file, &url, e))?;
        // The blob hf-hub wrote is the one its snapshot link names (the branch may have moved
        // since our metadata request); its size is known only if it is the one we asked about.
        let written = fs::read_link(&path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let written = written.unwrap_or(etag.clone());
        let size = (written == etag).then_some(meta.size() as u64);
        self.verify(repo, file, &cache, &path, &written, size)?;
        Ok(path)
    }

    /// The error for a file that offline mode cannot provide.
    pub fn offline_missing(&self, repo: &Repo, file: &str) -> Error {
        HubError::OfflineMissing { repo: repo.to_string(), file: file.into(), cache: self.config.cache_dir.clone() }.into()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.config.endpoint, path)
    }

    /// What a failed hf-hub request means: an HTTP status is asked about again with our HEAD,
    /// which reads the hub's `X-Error-Code` (repository, revision or file missing; gated).
    fn explain(&self, repo: &Repo, file: &str, url: &str, e: ApiError) -> Error {
        let mut cause = &e;
        while let ApiError::TooManyRetries(inner) = cause {
            cause = inner;
        }
        match cause {
            ApiError::RequestError(r) if matches!(r.as_ref(), ureq::Error::StatusCode(_)) => match self.head(repo, file) {
                Err(precise) => precise,
                Ok(_) => self.network(repo, file, url, e.to_string()),
            },
            // A dropped connection surfaces as an I/O error of the copy; what arrived is kept in
            // `blobs/<etag>.part` and the next run resumes it.
            ApiError::RequestError(_) | ApiError::IoError(_) => {
                self.network(repo, file, url, format!("{e}; what arrived is kept, run again to resume"))
            }
            _ => HubError::Protocol { repo: repo.to_string(), file: file.into(), url: url.into(), reason: e.to_string() }.into(),
        }
    }

    /// HEAD the `resolve` URL of `file`: commit, etag, size and the download location.
    pub fn head(&self, repo: &Repo, file: &str) -> Result<FileMeta> {
        let url = self.url(&repo.resolve_path(file));
        let req = self.auth(self.head_agent.head(&url).header("Accept-Encoding", "identity"));
        let resp = req.call().map_err(|e| self.network(repo, file, &url, e.to_string()))?;
        let status = resp.status().as_u16();
        self.check_status(repo, file, &url, status, resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()))?;
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let protocol = |reason: &str| -> Error {
            HubError::Protocol { repo: repo.to_string(), file: file.into(), url: url.clone(), reason: reason.into() }.into()
        };
        let commit = h("x-repo-commit").ok_or_else(|| protocol("no X-Repo-Commit header"))?;
        let etag = h("x-linked-etag").or_else(|| h("etag")).ok_or_else(|| protocol("no ETag header"))?;
        let etag = normalize_etag(&etag);
        let size = h("x-linked-size").or_else(|| h("content-length")).and_then(|s| s.parse().ok());
        let location = match h("location") {
            Some(loc) if (300..400).contains(&status) => {
                if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc
                } else {
                    self.url(loc.trim_start_matches('/'))
                }
            }
            _ => url.clone(),
        };
        Ok(FileMeta { commit, etag, size, location })
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.config.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn check_status(&self, repo: &Repo, file: &str, url: &str, status: u16, code: Option<&str>) -> Result<()> {
        let (repo_s, file_s, url_s) = (repo.to_string(), file.to_string(), url.to_string());
        match status {
            200..=399 => Ok(()),
            404 => {
                let what = match code {
                    Some("RepoNotFound") => "repository",
                    Some("RevisionNotFound") => "revision",
                    _ => "file",
                };
                Err(HubError::NotFound { repo: repo_s, file: file_s, url: url_s, what }.into())
            }
            401 | 403 => {
                let hint = if self.config.token.is_some() {
                    "The token in HF_TOKEN has no access: accept the repository's terms on the hub or use another token"
                } else {
                    "The repository is gated or private: set HF_TOKEN (or run `huggingface-cli login`)"
                };
                Err(HubError::Unauthorized { repo: repo_s, file: file_s, status, hint }.into())
            }
            _ => Err(self.network(repo, file, url, format!("HTTP status {status}"))),
        }
    }

    fn network(&self, repo: &Repo, file: &str, url: &str, reason: String) -> Error {
        HubError::Network { repo: repo.to_string(), file: file.into(), url: url.into(), reason }.into()
    }

    /// Check a freshly downloaded blob against its etag (sha256 for LFS files, git blob sha1
    /// otherwise) and size; a mismatch removes the blob, its lock and its snapshot link, so
    /// nothing corrupt is ever served from the cache.
    fn verify(&self, repo: &Repo, file: &str, cache: &RepoCache, path: &Path, etag: &str, size: Option<u64>) -> Result<()> {
        let blob = cache.blob_path(etag);
        let corrupt = |expected: String, got: String| -> Error {
            let _ = fs::remove_file(path);
            let _ = fs::remove_file(&blob);
            let _ = fs::remove_file(blob.with_extension("lock"));
            HubError::Corrupt { repo: repo.to_string(), file: file.into(), expected, got }.into()
        };
        let len = fs::metadata(path).map_err(|e| Error::io("read", path, e))?.len();
        if let Some(s) = size {
            if len != s {
                return Err(corrupt(format!("{s} bytes"), format!("{len} bytes")));
            }
        }
        if let Some(kind) = etag_kind(etag) {
            let got = hash_file(path, kind, len)?;
            if got != etag.to_ascii_lowercase() {
                let name = if kind == HashKind::Sha256 { "sha256" } else { "git sha1" };
                return Err(corrupt(format!("{name} {etag}"), format!("{name} {got}")));
            }
        }
        Ok(())
    }

    /// Whether every one of `repos` can be described (its listing is cached or the hub
    /// answers for it): the check a notebook makes before it takes its hub branch.
    ///
    /// ```
    /// use transferlab::hub::{Hub, HubConfig, LoopbackHub, Repo};
    /// let server = LoopbackHub::start()?;
    /// server.add_model_file("org/tiny", "config.json", b"{}".to_vec());
    /// let dir = tempfile::tempdir().unwrap();
    /// let hub = Hub::new(HubConfig::new(&server.endpoint(), dir.path()));
    /// assert!(hub.answers(&[Repo::model("org/tiny")]));
    /// assert!(!hub.answers(&[Repo::model("org/tiny"), Repo::dataset("org/missing")]));
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn answers(&self, repos: &[Repo]) -> bool {
        repos.iter().all(|repo| self.info(repo).is_ok())
    }

    /// Commit and file list of `repo` at its revision. Offline-first: a listing saved by an
    /// earlier call (in the repository's `.tlab/`) is used without network access; offline
    /// with none saved, the cached snapshot's files are listed.
    pub fn info(&self, repo: &Repo) -> Result<RepoInfo> {
        let cache = self.repo_cache(repo);
        let saved = cache.meta_path(&format!("info-{}.json", repo.revision.replace('/', "%2F")));
        if let Ok(bytes) = fs::read(&saved) {
            if let Ok(info) = serde_json::from_slice::<RepoInfo>(&bytes) {
                return Ok(info);
            }
        }
        if self.config.offline {
            let files = cache.snapshot_files(&repo.revision);
            return match cache.commit(&repo.revision) {
                Some(commit) if !files.is_empty() => Ok(RepoInfo { commit, files }),
                _ => Err(self.offline_missing(repo, "(repository listing)")),
            };
        }
        let url = self.url(&repo.info_path());
        let listing = self.api.repo(hf_repo(repo)).info().map_err(|e| self.explain(repo, "(listing)", &url, e))?;
        let (commit, files) = (listing.sha, listing.siblings.into_iter().map(|s| s.rfilename).collect::<Vec<_>>());
        if commit.is_empty() {
            return Err(HubError::Protocol { repo: repo.to_string(), file: "(listing)".into(), url, reason: "no commit (\"sha\")".into() }.into());
        }
        let info = RepoInfo { commit, files };
        crate::fsutil::write_bytes_atomic(&saved, &serde_json::to_vec(&info).expect("serialisable"))?;
        cache.write_ref(&repo.revision, &info.commit)?;
        Ok(info)
    }
}

/// Our repository naming in hf-hub's.
fn hf_repo(repo: &Repo) -> hf_hub::Repo {
    let kind = match repo.kind {
        RepoKind::Model => hf_hub::RepoType::Model,
        RepoKind::Dataset => hf_hub::RepoType::Dataset,
    };
    hf_hub::Repo::with_revision(repo.id.clone(), kind, repo.revision.clone())
}

/// hf-hub's progress callbacks drawn with our progress report. hf-hub announces the size
/// (again) at every attempt, then the bytes already there.
struct DownloadBar {
    label: String,
    mode: ProgressMode,
    bar: Option<(u64, Progress)>,
}

impl hf_hub::api::Progress for DownloadBar {
    fn init(&mut self, size: usize, _filename: &str) {
        let size = size as u64;
        match &self.bar {
            Some((total, bar)) if *total == size => bar.set_position(0),
            _ => self.bar = Some((size, Progress::new(&self.label, size, self.mode))),
        }
    }

    fn update(&mut self, bytes: usize) {
        if let Some((_, bar)) = &self.bar {
            bar.inc(bytes as u64);
        }
    }

    fn finish(&mut self) {
        if let Some((_, bar)) = &self.bar {
            bar.finish();
        }
    }
}

/// `W/"abc"` -> `abc`, as huggingface_hub normalises etags.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashKind {
    Sha256,
    GitSha1,
}

fn etag_kind(etag: &str) -> Option<HashKind> {
    if !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match etag.len() {
        64 => Some(HashKind::Sha256),
        40 => Some(HashKind::GitSha1),
        _ => None,
    }
}

fn hash_file(path: &Path, kind: HashKind, len: u64) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    if kind == HashKind::GitSha1 {
        sha1.update(format!("blob {len}\0").as_bytes());
    }
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        match kind {
            HashKind::Sha256 => sha256.update(&buf[..n]),
            HashKind::GitSha1 => sha1.update(&buf[..n]),
        }
    }
    let digest: Vec<u8> = match kind {
        HashKind::Sha256 => sha256.finalize().to_vec(),
        HashKind::GitSha1 => sha1.finalize().to_vec(),
    };
    Ok(hex(&digest))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of bytes, hex (the etag of an LFS file).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// git blob sha1 of bytes, hex (the etag of a file stored in git).
pub fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised_and_hashes_match_git() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        // `git hash-object` of "hello\n".
        assert_eq!(git_sha1_hex(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
