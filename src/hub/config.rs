//! Where the cache is, which hub to ask, with which token, and whether to ask at all: the
//! environment variables Python's huggingface_hub reads, with the same meaning.

use std::path::{Path, PathBuf};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How [`crate::hub::Hub`] reaches the hub and where it caches.
///
/// [`HubConfig::from_env`] reads, like huggingface_hub:
/// - `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
///   `~/.cache/huggingface/hub`: the cache, shared with Python;
/// - `HF_ENDPOINT` (default `https://huggingface.co`): a mirror or a local test server;
/// - `HF_TOKEN`, else the token file `$HF_TOKEN_PATH` or `$HF_HOME/token` that
///   `huggingface-cli login` writes;
/// - `HF_HUB_OFFLINE` (`1`, `true`, `yes`, `on`): never touch the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub cache_dir: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    /// Show download progress (a bar on a terminal, lines in a notebook).
    pub progress: bool,
}

impl HubConfig {
    /// The configuration the environment describes.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// A configuration for an explicit endpoint and cache (tests, loopback hubs), online, no token.
    pub fn new(endpoint: &str, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            offline: false,
            progress: true,
        }
    }

    /// The configuration given an environment lookup (testable without touching the process
    /// environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache")).join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            read_token(&path)
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        let progress = !var("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| is_true(&v));
        Self { cache_dir, endpoint: endpoint.trim_end_matches('/').to_string(), token, offline, progress }
    }
}

fn read_token(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// huggingface_hub's notion of a true environment value.
fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn environment_is_read_like_huggingface_hub() {
        let c = cfg(&[("HOME", "/h")]);
        assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline && c.token.is_none());
        let c = cfg(&[("HF_HOME", "/x"), ("HF_HUB_OFFLINE", "True"), ("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_TOKEN", "hf_a")]);
        assert_eq!(c.cache_dir, PathBuf::from("/x/hub"));
        assert!(c.offline);
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.token.as_deref(), Some("hf_a"));
        let c = cfg(&[("HF_HOME", "/x"), ("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", "0")]);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert!(!c.offline);
        assert_eq!(cfg(&[("XDG_CACHE_HOME", "/xdg")]).cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn token_file_is_used_when_no_variable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_string_lossy().into_owned();
        assert_eq!(cfg(&[("HF_HOME", &home)]).token.as_deref(), Some("hf_file"));
        assert_eq!(cfg(&[("HF_HOME", &home), ("HF_TOKEN", "hf_var")]).token.as_deref(), Some("hf_var"));
    }
}
