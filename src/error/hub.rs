//! What can go wrong talking to the hub, each with what to do about it.

use std::path::PathBuf;

/// A failed hub operation. Every message names the repository and file involved and says how
/// to recover (fetch while online, set a token, unset the offline switch...).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Offline (`HF_HUB_OFFLINE`) and the file is not in the cache.
    #[error("{file} of {repo} is not in the cache ({cache}) and HF_HUB_OFFLINE is set. \
             Fetch it once with network access: `tlab fetch {repo}` (or unset HF_HUB_OFFLINE \
             and run again), or copy a Hugging Face cache that has it into HF_HOME")]
    OfflineMissing { repo: String, file: String, cache: PathBuf },

    /// The hub answered 404: repository, revision or file does not exist.
    #[error("{what} not found on the hub: {file} of {repo} ({url}). Check the id and the file name \
             (`tlab fetch {repo}` lists what it downloads); private repositories need HF_TOKEN")]
    NotFound { repo: String, file: String, url: String, what: &'static str },

    /// The hub refused access (401/403).
    #[error("access to {file} of {repo} refused (HTTP {status}). {hint}")]
    Unauthorized { repo: String, file: String, status: u16, hint: &'static str },

    /// The network or the server failed.
    #[error("cannot reach the hub for {file} of {repo} ({url}): {reason}. Check the connection \
             and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to work from the cache only")]
    Network { repo: String, file: String, url: String, reason: String },

    /// The hub's answer lacks something the protocol requires.
    #[error("unexpected answer from the hub for {file} of {repo} ({url}): {reason}. Is HF_ENDPOINT \
             a Hugging Face hub?")]
    Protocol { repo: String, file: String, url: String, reason: String },

    /// The downloaded bytes do not match the hub's checksum or size.
    #[error("download of {file} of {repo} is corrupt: expected {expected}, got {got}. The partial \
             file was deleted; run again to download it afresh")]
    Corrupt { repo: String, file: String, expected: String, got: String },

    /// A dataset that neither the hub nor the cache can provide (offline or unreachable).
    #[error("{cause}. Without network, a local copy in the hub layout of {id} (its Parquet shards \
             and README.md) serves as well: `tlab serve-hub --dataset {id}=DIR`, then set \
             HF_ENDPOINT to the address it prints")]
    DatasetUnavailable { id: String, cause: String },

    /// An id that the registry does not know.
    #[error("unknown {what} {id:?}. {hint}")]
    Unknown { what: &'static str, id: String, hint: String },
}
