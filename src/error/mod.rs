//! One error type for the whole crate. It depends on nothing else in the crate (the hub's
//! error type lives here too), so every module can use it without pulling in the others.
//!
//! Every variant says what was wrong and, where there is one, what to do about it: a
//! researcher reading the message in a notebook cell should not need the source to recover.

mod hub;

pub use hub::HubError;
use std::path::PathBuf;

/// The crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in transferlab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what its format requires.
    #[error("{path}: not a valid {format} file: {reason}")]
    Format {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    /// A caller passed a value outside what the method accepts.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },

    /// Tensor shapes do not fit together.
    #[error("shape mismatch in {context}: {reason}")]
    Shape { context: String, reason: String },

    /// Weights do not fit the model they are loaded into; every offending tensor is named.
    #[error("weights do not match the model: {0}")]
    WeightMismatch(String),

    /// A pickle asked for something a tensor-only unpickler must not do.
    #[error("refused to unpickle {path}: {reason}. Only tensors and plain containers are read; \
             this file would run code or build arbitrary objects if loaded in Python. \
             Re-save it as a plain state_dict or as safetensors from a trusted environment.")]
    UnsafePickle { path: PathBuf, reason: String },

    /// Training produced a NaN or infinite loss or gradient.
    #[error("training diverged at epoch {epoch}, step {step}: {what} is {value}. \
             Lower the learning rate, enable gradient clipping, or check the input data.")]
    NonFinite {
        epoch: usize,
        step: usize,
        what: &'static str,
        value: f32,
    },

    /// An error raised inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// An error raised inside polars.
    #[error("table operation failed: {0}")]
    Polars(#[from] polars::prelude::PolarsError),

    /// Fetching from the Hugging Face hub (or its cache) failed.
    #[error(transparent)]
    Hub(#[from] HubError),

    /// A cluster scheduler (Slurm) refused a request or is not there.
    #[error("cluster scheduler: {0}")]
    Scheduler(String),

    /// Rendering a figure failed.
    #[error("figure rendering failed: {0}")]
    Figure(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, format: &'static str, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            format,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Shape {
            context: context.into(),
            reason: reason.into(),
        }
    }
}
