//! The hub client against a loopback hub: downloads, the cache layout shared with Python,
//! cache hits without a server, offline mode, corruption, 404s, dropped connections, tokens.

use std::path::Path;
use transferlab::hub::{sha256_hex, git_sha1_hex, Fault, Hub, HubConfig, HubError, LoopbackHub, Repo, LFS_THRESHOLD};
use transferlab::Error;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn hub(server: &LoopbackHub, cache: &Path) -> Hub {
    let mut c = HubConfig::new(&server.endpoint(), cache);
    c.progress = false;
    Hub::new(c)
}

fn server_with_model() -> (LoopbackHub, Vec<u8>, Vec<u8>) {
    let s = LoopbackHub::start().unwrap();
    let weights = bytes(5000, 1);
    let config = br#"{"architecture": "resnet18"}"#.to_vec();
    s.add_model_file("org/tiny", "model.safetensors", weights.clone());
    s.add_model_file("org/tiny", "config.json", config.clone());
    s.add_model_file("org/tiny", "sub/dir/notes.txt", b"nested".to_vec());
    (s, weights, config)
}

#[test]
fn download_fills_the_standard_cache_layout() {
    let (server, weights, config) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&server, dir.path());
    let repo = Repo::model("org/tiny");
    let w = hub.get(&repo, "model.safetensors").unwrap();
    let c = hub.get(&repo, "config.json").unwrap();
    let n = hub.get(&repo, "sub/dir/notes.txt").unwrap();
    assert_eq!(std::fs::read(&w).unwrap(), weights);
    assert_eq!(std::fs::read(&c).unwrap(), config);
    assert_eq!(std::fs::read(&n).unwrap(), b"nested");

    let root = dir.path().join("models--org--tiny");
    let commit = std::fs::read_to_string(root.join("refs/main")).unwrap();
    assert_eq!(commit.len(), 40);
    assert_eq!(w, root.join("snapshots").join(&commit).join("model.safetensors"));
    // LFS file: blob named by its sha256; git file: by its blob sha1; snapshots are relative links.
    assert!(root.join("blobs").join(sha256_hex(&weights)).is_file());
    assert!(root.join("blobs").join(git_sha1_hex(&config)).is_file());
    let link = std::fs::read_link(&n).unwrap();
    assert_eq!(link, Path::new("../../../../blobs").join(git_sha1_hex(b"nested")));
    assert!(std::fs::read_dir(root.join("blobs")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part")));

    // The LFS file: a size probe of the resolve URL answered by a 302, then the CDN.
    let log = server.requests();
    assert!(log.iter().any(|r| r == "GET /org/tiny/resolve/main/model.safetensors bytes=0-0"), "{log:?}");
    assert!(log.iter().any(|r| r.starts_with("GET /cdn/") && r.ends_with("bytes=0-")), "{log:?}");
}

#[test]
fn cached_files_need_no_server() {
    let (server, weights, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::model("org/tiny");
    let endpoint = server.endpoint();
    hub(&server, dir.path()).get(&repo, "model.safetensors").unwrap();
    let before = server.requests().len();
    // Online, a cache hit makes no request at all.
    hub(&server, dir.path()).get(&repo, "model.safetensors").unwrap();
    assert_eq!(server.requests().len(), before);
    drop(server);
    let mut c = HubConfig::new(&endpoint, dir.path());
    c.progress = false;
    let p = Hub::new(c.clone()).get(&repo, "model.safetensors").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), weights);
    c.offline = true;
    assert!(Hub::new(c.clone()).get(&repo, "model.safetensors").is_ok());
    // Pinned to the commit, found too.
    let commit = std::fs::read_to_string(dir.path().join("models--org--tiny/refs/main")).unwrap();
    assert!(Hub::new(c).get(&Repo::model("org/tiny").at(&commit), "model.safetensors").is_ok());
}

#[test]
fn offline_missing_file_says_what_and_how() {
    let (server, _, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let mut c = HubConfig::new(&server.endpoint(), dir.path());
    c.offline = true;
    let err = Hub::new(c).get(&Repo::model("org/tiny"), "model.safetensors").unwrap_err();
    assert!(matches!(err, Error::Hub(HubError::OfflineMissing { .. })));
    let msg = err.to_string();
    for needle in ["org/tiny", "model.safetensors", "tlab fetch org/tiny", "HF_HUB_OFFLINE"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(server.requests().is_empty(), "offline mode touched the network");
}

#[test]
fn corrupted_download_is_rejected_and_not_cached() {
    let (server, _, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&server, dir.path());
    let repo = Repo::model("org/tiny");
    for file in ["model.safetensors", "config.json"] {
        server.inject(Fault::Corrupt { file: file.into() });
        let err = hub.get(&repo, file).unwrap_err();
        assert!(matches!(err, Error::Hub(HubError::Corrupt { .. })), "{err}");
        assert!(err.to_string().contains(file) && err.to_string().contains("run again"), "{err}");
        assert!(hub.cached(&repo, file).is_none());
    }
    let blobs = dir.path().join("models--org--tiny/blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0, "corrupt bytes left in the cache");
    server.clear_faults();
    assert!(hub.get(&repo, "model.safetensors").is_ok());
}

#[test]
fn not_found_names_repo_and_file() {
    let (server, _, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&server, dir.path());
    let err = hub.get(&Repo::model("org/tiny"), "missing.bin").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Hub(HubError::NotFound { what: "file", .. })), "{msg}");
    assert!(msg.contains("missing.bin") && msg.contains("org/tiny"), "{msg}");
    let err = hub.get(&Repo::model("org/nope"), "config.json").unwrap_err();
    assert!(matches!(err, Error::Hub(HubError::NotFound { what: "repository", .. })), "{err}");
    // Nothing reachable at all: a network error that points at HF_ENDPOINT and offline mode.
    let endpoint = server.endpoint();
    drop(server);
    let mut c = HubConfig::new(&endpoint, dir.path());
    c.progress = false;
    let err = Hub::new(c).get(&Repo::model("org/tiny"), "config.json").unwrap_err();
    assert!(matches!(err, Error::Hub(HubError::Network { .. })), "{err}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn dropped_connection_resumes_with_range() {
    let (server, weights, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&server, dir.path());
    server.inject(Fault::Drop { file: "model.safetensors".into(), after: 1500, times: 2 });
    let p = hub.get(&Repo::model("org/tiny"), "model.safetensors").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), weights);
    // Each attempt asks the CDN for what is still missing (size probes left out).
    let ranges: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /cdn/") && !r.ends_with("bytes=0-0"))
        .map(|r| r.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(ranges, ["bytes=0-", "bytes=1500-", "bytes=3000-"]);
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let (server, weights, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{}.part", sha256_hex(&weights)));
    std::fs::write(&part, &weights[..4000]).unwrap();
    let p = hub(&server, dir.path()).get(&Repo::model("org/tiny"), "model.safetensors").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), weights);
    assert!(server.requests().iter().any(|r| r.ends_with("bytes=4000-")));
    // A part file that is already complete (a run stopped before moving it into place) is
    // checked and moved, not asked for again past its end.
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.part", sha256_hex(&weights))), &weights).unwrap();
    let before = server.requests().len();
    let p = hub(&server, dir.path()).get(&Repo::model("org/tiny"), "model.safetensors").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), weights);
    assert!(server.requests()[before..].iter().all(|r| r.ends_with("bytes=0-0")), "{:?}", &server.requests()[before..]);
    // One longer than the file is no prefix of it: dropped, and the file downloaded afresh.
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.part", sha256_hex(&weights))), vec![7u8; weights.len() + 10]).unwrap();
    let p = hub(&server, dir.path()).get(&Repo::model("org/tiny"), "model.safetensors").unwrap();
    assert_eq!(std::fs::read(p).unwrap(), weights);
}

#[test]
fn token_is_sent_to_the_hub_and_required_by_gated_repos() {
    let (server, _, _) = server_with_model();
    server.inject(Fault::RequireToken { token: "hf_secret".into() });
    let dir = tempfile::tempdir().unwrap();
    let err = hub(&server, dir.path()).get(&Repo::model("org/tiny"), "model.safetensors").unwrap_err();
    assert!(matches!(err, Error::Hub(HubError::Unauthorized { status: 401, .. })), "{err}");
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let mut c = HubConfig::new(&server.endpoint(), dir.path());
    c.progress = false;
    c.token = Some("hf_secret".into());
    assert!(Hub::new(c).get(&Repo::model("org/tiny"), "model.safetensors").is_ok());
}

#[test]
fn listing_is_saved_for_offline_use() {
    let (server, _, _) = server_with_model();
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::model("org/tiny");
    let info = hub(&server, dir.path()).info(&repo).unwrap();
    assert_eq!(info.files, vec!["config.json", "model.safetensors", "sub/dir/notes.txt"]);
    let endpoint = server.endpoint();
    drop(server);
    let mut c = HubConfig::new(&endpoint, dir.path());
    c.offline = true;
    assert_eq!(Hub::new(c).info(&repo).unwrap(), info);
}

#[test]
fn large_files_go_through_the_cdn_and_small_ones_do_not() {
    let s = LoopbackHub::start().unwrap();
    s.add_model_file("a/b", "small.bin", bytes(LFS_THRESHOLD, 3));
    let dir = tempfile::tempdir().unwrap();
    let meta = hub(&s, dir.path()).head(&Repo::model("a/b"), "small.bin").unwrap();
    assert_eq!(meta.etag, git_sha1_hex(&bytes(LFS_THRESHOLD, 3)));
    assert!(meta.location.contains("/resolve/"));
}
