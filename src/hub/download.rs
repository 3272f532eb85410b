//! Fetching files: cache first, then the hub's `resolve` endpoint (HEAD for commit, etag and
//! size; GET, following the redirect to the CDN, resumed with `Range` after a dropped
//! connection), verified against the etag before it enters the cache.

use super::cache::RepoCache;
use super::config::HubConfig;
use crate::error::HubError;
use super::repo::Repo;
use crate::error::{Error, Result};
use crate::progress::{Progress, ProgressMode};
use sha1::Digest as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How many times a dropped download is resumed before giving up.
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
    /// Requests with no redirects followed: HEAD reads the hub's own headers from its 302.
    head_agent: ureq::Agent,
    /// Requests that follow redirects (GET to the CDN, API calls).
    get_agent: ureq::Agent,
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
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(20)))
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("transferlab/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
                .build()
                .into()
        };
        Self { config, head_agent: agent(0), get_agent: agent(10) }
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

    /// Download `file` even if cached under another commit (a branch may have moved).
    pub fn download(&self, repo: &Repo, file: &str) -> Result<PathBuf> {
        if self.config.offline {
            return Err(self.offline_missing(repo, file));
        }
        let meta = self.head(repo, file)?;
        let cache = self.repo_cache(repo);
        let blob = cache.blob_path(&meta.etag);
        if !blob.is_file() {
            self.fetch_blob(repo, file, &meta, &cache)?;
        }
        let path = cache.link_snapshot(&meta.commit, file, &meta.etag)?;
        cache.write_ref(&repo.revision, &meta.commit)?;
        Ok(path)
    }

    /// The error for a file that offline mode cannot provide.
    pub fn offline_missing(&self, repo: &Repo, file: &str) -> Error {
        HubError::OfflineMissing { repo: repo.to_string(), file: file.into(), cache: self.config.cache_dir.clone() }.into()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.config.endpoint, path)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.config.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
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
        if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
            return Err(protocol("the ETag is not a usable blob name"));
        }
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

    /// Download into `blobs/<etag>.incomplete`, resuming what a previous attempt (or run) left,
    /// verify, and move into place.
    fn fetch_blob(&self, repo: &Repo, file: &str, meta: &FileMeta, cache: &RepoCache) -> Result<()> {
        let part = cache.incomplete_path(&meta.etag);
        let dir = part.parent().expect("blob has a folder");
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mode = if self.config.progress { ProgressMode::Bar } else { ProgressMode::Hidden };
        let progress = Progress::new(&format!("download {repo}/{file}"), meta.size.unwrap_or(0), mode);
        let mut last_err = String::new();
        for _ in 0..ATTEMPTS {
            match self.fetch_once(repo, file, meta, &part, &progress) {
                Ok(()) => {
                    progress.finish();
                    return self.verify_and_commit(repo, file, meta, &part, &cache.blob_path(&meta.etag));
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => last_err = reason,
            }
        }
        Err(self.network(repo, file, &meta.location, format!("{last_err} (after {ATTEMPTS} attempts; run again to resume)")))
    }

    fn fetch_once(&self, repo: &Repo, file: &str, meta: &FileMeta, part: &PathBuf, progress: &Progress) -> Result<(), Attempt> {
        let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|s| have == s) {
            return Ok(());
        }
        let mut req = self.get_agent.get(&meta.location).header("Accept-Encoding", "identity");
        // The token goes to the hub only, never to a CDN on another host.
        if meta.location.starts_with(&self.config.endpoint) {
            req = self.auth(req);
        }
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            416 if have > 0 => {
                // The partial file is longer than the object: start over.
                let _ = fs::remove_file(part);
                return Err(Attempt::Retry("range not satisfiable".into()));
            }
            _ => {
                self.check_status(repo, file, &meta.location, status, None).map_err(Attempt::Fatal)?;
                return Err(Attempt::Retry(format!("HTTP status {status}")));
            }
        };
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(|e| Attempt::Fatal(Error::io("open", part, e)))?;
        progress.set_position(if append { have } else { 0 });
        let mut body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = out.flush();
                    return Err(Attempt::Retry(format!("connection dropped: {e}")));
                }
            };
            out.write_all(&buf[..n]).map_err(|e| Attempt::Fatal(Error::io("write", part, e)))?;
            progress.inc(n as u64);
        }
        out.sync_all().map_err(|e| Attempt::Fatal(Error::io("write", part, e)))?;
        let got = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        match meta.size {
            Some(s) if got < s => Err(Attempt::Retry(format!("connection closed after {got} of {s} bytes"))),
            _ => Ok(()),
        }
    }

    fn verify_and_commit(&self, repo: &Repo, file: &str, meta: &FileMeta, part: &PathBuf, blob: &PathBuf) -> Result<()> {
        let corrupt = |expected: String, got: String| -> Error {
            let _ = fs::remove_file(part);
            HubError::Corrupt { repo: repo.to_string(), file: file.into(), expected, got }.into()
        };
        let len = fs::metadata(part).map_err(|e| Error::io("read", part, e))?.len();
        if let Some(s) = meta.size {
            if len != s {
                return Err(corrupt(format!("{s} bytes"), format!("{len} bytes")));
            }
        }
        if let Some(kind) = etag_kind(&meta.etag) {
            let got = hash_file(part, kind, len)?;
            if got != meta.etag.to_ascii_lowercase() {
                let name = if kind == HashKind::Sha256 { "sha256" } else { "git sha1" };
                return Err(corrupt(format!("{name} {}", meta.etag), format!("{name} {got}")));
            }
        }
        fs::rename(part, blob).map_err(|e| Error::io("move into the cache", blob, e))
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
        let resp = self.auth(self.get_agent.get(&url)).call().map_err(|e| self.network(repo, "(listing)", &url, e.to_string()))?;
        let status = resp.status().as_u16();
        self.check_status(repo, "(listing)", &url, status, resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()))?;
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| self.network(repo, "(listing)", &url, e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::from(HubError::Protocol { repo: repo.to_string(), file: "(listing)".into(), url: url.clone(), reason: e.to_string() })
        })?;
        let commit = json["sha"].as_str().unwrap_or_default().to_string();
        let files: Vec<String> = json["siblings"]
            .as_array()
            .map(|s| s.iter().filter_map(|f| f["rfilename"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if commit.is_empty() {
            return Err(HubError::Protocol { repo: repo.to_string(), file: "(listing)".into(), url, reason: "no commit (\"sha\")".into() }.into());
        }
        let info = RepoInfo { commit, files };
        crate::fsutil::write_bytes_atomic(&saved, &serde_json::to_vec(&info).expect("serialisable"))?;
        cache.write_ref(&repo.revision, &info.commit)?;
        Ok(info)
    }
}

enum Attempt {
    Retry(String),
    Fatal(Error),
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

fn hash_file(path: &PathBuf, kind: HashKind, len: u64) -> Result<String> {
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
