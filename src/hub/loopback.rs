//! A hub on 127.0.0.1 that answers as huggingface.co does for the endpoints transferlab (and
//! Python's `hf_hub_download`) use, serving files put into it by tests and notebooks:
//!
//! - `HEAD|GET /{datasets/}{id}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag` (git blob
//!   sha1) for small files; for LFS files a `302` to `/cdn/{sha256}` with `X-Linked-Etag`
//!   and `X-Linked-Size`, as the hub redirects to its CDN;
//! - `Range` on both (`206` with `Content-Range`; `bytes=0-0` is hf-hub's size probe);
//! - `GET /api/{models|datasets}/{id}/revision/{rev}`: `{"sha", "siblings": [{"rfilename"}]}`;
//! - `404` with `X-Error-Code: RepoNotFound | EntryNotFound`.
//!
//! Faults can be injected (a corrupted body, a connection dropped mid-file, a required
//! token), and every request is logged, so tests can assert what went over the wire.

use super::download::{git_sha1_hex, hex, sha256_hex};
use super::config::HubConfig;
use super::download::Hub;
use super::models::{ModelRegistry, Preprocess};
use super::repo::{Repo, RepoKind};
use crate::models::Network;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Files above this size are served as LFS files (via the CDN redirect), like the hub's
/// 10 MB rule scaled down so tests exercise both paths with small files.
pub const LFS_THRESHOLD: usize = 1024;

/// Something for the server to get wrong, once or always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Flip a byte of this file's body (every time): the download must fail verification.
    Corrupt { file: String },
    /// Send the full headers but only `after` bytes of this file's body, then close; only
    /// the first `times` GETs.
    Drop { file: String, after: usize, times: usize },
    /// Answer 401 unless `Authorization: Bearer <token>` is sent.
    RequireToken { token: String },
}

#[derive(Debug, Default)]
struct State {
    /// (kind, id) -> path -> bytes.
    repos: BTreeMap<(RepoKind, String), BTreeMap<String, Vec<u8>>>,
    /// sha256 -> bytes (the CDN).
    cdn: BTreeMap<String, (String, Vec<u8>, (RepoKind, String))>,
    faults: Vec<Fault>,
    log: Vec<String>,
}

/// A running loopback hub; stops when dropped.
///
/// ```
/// use transferlab::hub::{Hub, HubConfig, LoopbackHub, Repo};
/// let server = LoopbackHub::start()?;
/// server.add_model_file("org/tiny", "config.json", b"{}".to_vec());
/// let dir = tempfile::tempdir().unwrap();
/// let hub = Hub::new(HubConfig::new(&server.endpoint(), dir.path()));
/// let path = hub.get(&Repo::model("org/tiny"), "config.json")?;
/// assert_eq!(std::fs::read(path).unwrap(), b"{}");
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug)]
pub struct LoopbackHub {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackHub {
    /// Start serving on a free port of 127.0.0.1.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("listen on", "127.0.0.1:0", e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("listen on", "127.0.0.1:0", e))?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let st = st.clone();
                    let port = addr.port();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &st, port);
                    });
                }
            }
        });
        Ok(Self { addr, state, stop, thread: Some(thread) })
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Put a file into a model repository.
    pub fn add_model_file(&self, id: &str, path: &str, bytes: Vec<u8>) {
        self.add_file(RepoKind::Model, id, path, bytes)
    }

    /// Put a file into a dataset repository.
    pub fn add_dataset_file(&self, id: &str, path: &str, bytes: Vec<u8>) {
        self.add_file(RepoKind::Dataset, id, path, bytes)
    }

    /// Put a file into a repository (a new commit of it).
    pub fn add_file(&self, kind: RepoKind, id: &str, path: &str, bytes: Vec<u8>) {
        let mut s = self.state.lock().expect("loopback state");
        if bytes.len() > LFS_THRESHOLD {
            s.cdn.insert(sha256_hex(&bytes), (path.to_string(), bytes.clone(), (kind, id.to_string())));
        }
        s.repos.entry((kind, id.to_string())).or_default().insert(path.to_string(), bytes);
    }

    /// Put every file under `dir` into a repository (paths relative to `dir`).
    pub fn add_dir(&self, kind: RepoKind, id: &str, dir: &std::path::Path) -> Result<()> {
        fn walk(root: &std::path::Path, d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
            for e in std::fs::read_dir(d)? {
                let p = e?.path();
                if p.is_dir() {
                    walk(root, &p, out)?;
                } else {
                    out.push(p);
                }
            }
            Ok(())
        }
        let mut files = Vec::new();
        walk(dir, dir, &mut files).map_err(|e| Error::io("list", dir, e))?;
        for p in files {
            let rel = p.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
            self.add_file(kind, id, &rel, bytes);
        }
        Ok(())
    }

    /// A client of this hub with an empty cache of its own (a folder under the system's
    /// temporary directory named by this hub's port, emptied first), progress hidden.
    pub fn client(&self) -> Result<Hub> {
        let cache = std::env::temp_dir().join(format!("transferlab-loopback-{}-cache", self.addr.port()));
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(|e| Error::io("empty the loopback hub's cache", &cache, e))?;
        }
        let mut config = HubConfig::new(&self.endpoint(), cache);
        config.progress = false;
        Ok(Hub::new(config))
    }

    /// Serve `net`'s weights as `model.safetensors` of model repository `id`, and register
    /// `id` in `registry` with `net`'s spec and `preprocess`: a model of ours published as a
    /// hub model, so that `registry.load_network(&server.client()?, id, ..)` loads it by id.
    ///
    /// ```
    /// use transferlab::hub::{LoopbackHub, ModelRegistry, Preprocess};
    /// use transferlab::models::{ModelSpec, Network};
    /// use candle_core::Device;
    /// let net = Network::new(&ModelSpec::named("mlp", (1, 8, 8), 10)?, 0, &Device::Cpu)?;
    /// let server = LoopbackHub::start()?;
    /// let mut registry = ModelRegistry::builtin();
    /// let identity = Preprocess { resize: 8, crop: 8, interpolation: "bilinear", mean: [0.0; 3], std: [1.0; 3] };
    /// server.publish_network("me/mlp-digits", &net, identity, &mut registry)?;
    /// let back = registry.load_network(&server.client()?, "me/mlp-digits", &Device::Cpu)?;
    /// assert_eq!(back.spec(), net.spec());
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn publish_network(&self, id: &str, net: &Network, preprocess: Preprocess, registry: &mut ModelRegistry) -> Result<()> {
        let staged = std::env::temp_dir().join(format!("transferlab-loopback-{}-{}.safetensors", self.addr.port(), id.replace('/', "--")));
        net.save(&staged)?;
        let bytes = std::fs::read(&staged).map_err(|e| Error::io("read", &staged, e));
        let _ = std::fs::remove_file(&staged);
        self.add_model_file(id, "model.safetensors", bytes?);
        registry.register_hub(id, Repo::model(id), "model.safetensors", net.spec().clone(), preprocess)
    }

    /// Inject a fault.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().expect("loopback state").faults.push(fault);
    }

    /// Remove all faults.
    pub fn clear_faults(&self) {
        self.state.lock().expect("loopback state").faults.clear();
    }

    /// Every request so far as `METHOD path [range]`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("loopback state").log.clone()
    }
}

impl Drop for LoopbackHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The commit of a repository: a hash of its content, so it changes when a file does.
fn commit_of(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut all = Vec::new();
    for (p, b) in files {
        all.extend_from_slice(p.as_bytes());
        all.extend_from_slice(git_sha1_hex(b).as_bytes());
    }
    git_sha1_hex(&all)
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Request { method, path, headers })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close after this many body bytes (a dropped connection).
    cut: Option<usize>,
}

impl Reply {
    fn status(status: u16, code: Option<&str>) -> Self {
        let mut headers = Vec::new();
        if let Some(c) = code {
            headers.push(("X-Error-Code".into(), c.into()));
        }
        Self { status, headers, body: Vec::new(), cut: None }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, port: u16) -> std::io::Result<()> {
    let req = read_request(&stream)?;
    let reply = {
        let mut s = state.lock().expect("loopback state");
        let range = req.header("range").map(|r| format!(" {r}")).unwrap_or_default();
        s.log.push(format!("{} {}{range}", req.method, req.path));
        route(&req, &mut s, port)
    };
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", reply.status);
    let has_len = reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        let n = reply.cut.unwrap_or(reply.body.len()).min(reply.body.len());
        stream.write_all(&reply.body[..n])?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn route(req: &Request, s: &mut State, port: u16) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    if let Some(Fault::RequireToken { token }) = s.faults.iter().find(|f| matches!(f, Fault::RequireToken { .. })) {
        let ok = req.header("authorization") == Some(&format!("Bearer {token}"));
        if !ok && !path.starts_with("/cdn/") {
            return Reply::status(401, Some("GatedRepo"));
        }
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return cdn(req, s, sha);
    }
    if let Some(rest) = path.strip_prefix("/api/") {
        return api(s, rest);
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (RepoKind::Dataset, r),
        None => (RepoKind::Model, path.trim_start_matches('/')),
    };
    let Some((id, after)) = rest.split_once("/resolve/") else { return Reply::status(404, None) };
    let Some((_rev, file)) = after.split_once('/') else { return Reply::status(404, None) };
    let file = percent_decode(file);
    let Some(files) = s.repos.get(&(kind, id.to_string())) else { return Reply::status(404, Some("RepoNotFound")) };
    let commit = commit_of(files);
    let Some(bytes) = files.get(&file) else {
        let mut r = Reply::status(404, Some("EntryNotFound"));
        r.headers.push(("X-Repo-Commit".into(), commit));
        return r;
    };
    let mut headers = vec![("X-Repo-Commit".to_string(), commit)];
    if bytes.len() > LFS_THRESHOLD {
        let sha = sha256_hex(bytes);
        headers.push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
        headers.push(("X-Linked-Size".into(), bytes.len().to_string()));
        headers.push(("ETag".into(), format!("\"{}\"", &hex(&sha.as_bytes()[..20]))));
        headers.push(("Location".into(), format!("http://127.0.0.1:{port}/cdn/{sha}")));
        Reply { status: 302, headers, body: Vec::new(), cut: None }
    } else {
        headers.push(("ETag".into(), format!("\"{}\"", git_sha1_hex(bytes))));
        let mut r = ranged(req, bytes);
        r.headers.extend(headers);
        apply_faults(s, &file, &mut r, req.method == "GET");
        r
    }
}

fn cdn(req: &Request, s: &mut State, sha: &str) -> Reply {
    let Some((file, bytes, key)) = s.cdn.get(sha).cloned() else { return Reply::status(404, None) };
    // Clients that follow the redirect on HEAD (huggingface_hub treats a same-host redirect
    // as relative) read the commit from here.
    let commit = s.repos.get(&key).map(commit_of).unwrap_or_default();
    let mut r = ranged(req, &bytes);
    r.headers.push(("ETag".into(), format!("\"{sha}\"")));
    r.headers.push(("Accept-Ranges".into(), "bytes".into()));
    r.headers.push(("X-Repo-Commit".into(), commit));
    apply_faults(s, &file, &mut r, req.method == "GET");
    r
}

/// The answer to a request's `Range` (`bytes=START-` or `bytes=START-END`, END inclusive):
/// `206` with `Content-Range`, `416` past the end, `200` with every byte when none is asked.
/// Clients probe with `bytes=0-0` for the size (hf-hub reads it from `Content-Range`).
fn ranged(req: &Request, bytes: &[u8]) -> Reply {
    let total = bytes.len();
    let whole = || Reply { status: 200, headers: Vec::new(), body: bytes.to_vec(), cut: None };
    let Some((start, end)) = req.header("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) else {
        return whole();
    };
    let Ok(start) = start.trim().parse::<usize>() else { return whole() };
    if total == 0 {
        let mut r = whole();
        r.headers.push(("Content-Range".into(), "bytes */0".into()));
        return r;
    }
    let end = end.trim().parse::<usize>().map_or(total - 1, |e| e.min(total - 1));
    if start > end {
        return Reply::status(416, None);
    }
    Reply {
        status: 206,
        headers: vec![("Content-Range".into(), format!("bytes {start}-{end}/{total}"))],
        body: bytes[start..=end].to_vec(),
        cut: None,
    }
}

fn apply_faults(s: &mut State, file: &str, r: &mut Reply, is_get: bool) {
    if !is_get {
        return;
    }
    for f in s.faults.iter_mut() {
        match f {
            Fault::Corrupt { file: f } if f == file && !r.body.is_empty() => {
                let i = r.body.len() / 2;
                r.body[i] ^= 0xff;
            }
            // A size probe (`bytes=0-0`) is too short to drop; only transfers count.
            Fault::Drop { file: f, after, times } if f == file && *times > 0 && r.body.len() > *after => {
                *times -= 1;
                r.cut = Some(*after);
            }
            _ => {}
        }
    }
}

fn api(s: &State, rest: &str) -> Reply {
    let (kind, rest) = if let Some(r) = rest.strip_prefix("models/") {
        (RepoKind::Model, r)
    } else if let Some(r) = rest.strip_prefix("datasets/") {
        (RepoKind::Dataset, r)
    } else {
        return Reply::status(404, None);
    };
    let id = rest.split_once("/revision/").map(|(i, _)| i).unwrap_or(rest);
    let Some(files) = s.repos.get(&(kind, id.to_string())) else { return Reply::status(404, Some("RepoNotFound")) };
    let siblings: Vec<serde_json::Value> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
    let body = serde_json::json!({ "id": id, "sha": commit_of(files), "siblings": siblings }).to_string().into_bytes();
    Reply { status: 200, headers: vec![("Content-Type".into(), "application/json".into())], body, cut: None }
}
