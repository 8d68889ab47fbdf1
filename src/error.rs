//! The library's error type. Every error names what was wrong (shapes, file, field) so a user can act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: tensors on different devices ({a} vs {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
    #[error("device {device}: {detail}")]
    Device { device: String, detail: String },
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid argument {field}: {detail}")]
    InvalidArgument { field: String, detail: String },
    #[error("model weights: {0}")]
    Weights(String),
    #[error("non-finite {what} at step {step}: {detail}")]
    NonFinite {
        what: String,
        step: usize,
        detail: String,
    },
    #[error("autograd: {0}")]
    Autograd(String),
    /// The error of a file-format or workflow module (checkpoint, npy, NIfTI, metrics, ...), kept
    /// whole: its message already names the file and field, and `source()` reaches the cause.
    /// Each such module converts into it with `wrap_into_error!` (in `src/error.rs`).
    #[error(transparent)]
    Wrapped(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("{0}")]
    Other(String),
}

/// `impl From<E> for Error` (as [`Error::Wrapped`]) for a module's own error types, so `?` keeps
/// them whole instead of flattening them to a string. Written in the module that owns `E`, so
/// this file names nothing above the core.
macro_rules! wrap_into_error {
    ($($t:ty),+ $(,)?) => {
        $(impl From<$t> for $crate::error::Error {
            fn from(e: $t) -> Self {
                $crate::error::Error::Wrapped(Box::new(e))
            }
        })+
    };
}
pub(crate) use wrap_into_error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn file(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            detail: detail.into(),
        }
    }
    /// Keeps an error of another library whole ([`Error::Wrapped`]).
    pub fn wrap(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Wrapped(Box::new(e))
    }
    pub fn arg(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            detail: detail.into(),
        }
    }
}
