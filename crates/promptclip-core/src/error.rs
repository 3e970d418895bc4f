//! One error type for the whole core. Every variant has a stable `code()` that the Node binding
//! forwards to JavaScript, so callers can branch on it without parsing messages.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("file not found: {}", .0.display())]
    FileNotFound(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {}: {msg}", path.display())]
    BadConfig { path: PathBuf, msg: String },
    #[error("tensor `{name}` is missing from {}", path.display())]
    MissingTensor { name: String, path: PathBuf },
    #[error("tensor `{name}` in {} has shape {actual:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot decode image {source_name}: {msg}")]
    ImageDecode { source_name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// `epoch` and `step` count from 1.
    #[error("training stopped: the loss became {value} at epoch {epoch}, step {step}{hint}")]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        step: usize,
        hint: String,
    },
    #[error("{0}")]
    NonFiniteParams(String),
    /// `checkpoint`: where a cancelled training run wrote its state, to resume from.
    #[error("cancelled{}", match checkpoint {
        Some(p) => format!("; the run was checkpointed to {} (pass it as resumeFrom to continue)", p.display()),
        None => String::new(),
    })]
    Cancelled { checkpoint: Option<PathBuf> },
    /// An image of a set that must be read whole (training, validation) could not be used. The
    /// code is the cause's (E_FILE_NOT_FOUND, E_IMAGE_DECODE, ...), so that callers can branch on
    /// why; the message adds which image it was.
    #[error("{what} {index} cannot be used: {source}")]
    UnusableImage {
        what: String,
        index: usize,
        source: Box<Error>,
    },
    #[error("busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Candle(candle_core::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// Writing a file (or creating its folder) failed: code E_IO, whatever the cause, since a
    /// missing folder when writing is not a missing input.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Stable machine-readable code, forwarded to JavaScript as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::FileNotFound(_) => "E_FILE_NOT_FOUND",
            Error::Io { .. } => "E_IO",
            Error::BadConfig { .. } => "E_BAD_CONFIG",
            Error::MissingTensor { .. } => "E_MISSING_TENSOR",
            Error::ShapeMismatch { .. } => "E_SHAPE_MISMATCH",
            Error::Unsupported(_) => "E_UNSUPPORTED",
            Error::ImageDecode { .. } => "E_IMAGE_DECODE",
            Error::Tokenizer(_) => "E_TOKENIZER",
            Error::InvalidArgument(_) => "E_INVALID_ARGUMENT",
            Error::CudaUnavailable(_) => "E_CUDA_UNAVAILABLE",
            Error::NonFiniteLoss { .. } => "E_NON_FINITE_LOSS",
            Error::NonFiniteParams(_) => "E_NON_FINITE_PARAMS",
            Error::Cancelled { .. } => "E_CANCELLED",
            Error::UnusableImage { source, .. } => source.code(),
            Error::Busy(_) => "E_BUSY",
            Error::Candle(_) => "E_TENSOR",
            Error::Internal(_) => "E_INTERNAL",
            Error::Write { .. } => "E_IO",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound(path)
        } else {
            Error::Io { path, source }
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            source,
        }
    }

    /// Cancelled without a checkpoint to resume from.
    pub fn cancelled() -> Self {
        Error::Cancelled { checkpoint: None }
    }

    /// The same error, its message naming `path` first where it does not already name it (for
    /// errors found while rebuilding something read from that file); the code is kept.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        let shown = path.display().to_string();
        if self.to_string().contains(&shown) {
            return self;
        }
        let named = |msg: String| format!("{shown}: {msg}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(named(m)),
            Error::Unsupported(m) => Error::Unsupported(named(m)),
            Error::Tokenizer(m) => Error::Tokenizer(named(m)),
            Error::NonFiniteParams(m) => Error::NonFiniteParams(named(m)),
            Error::Internal(m) => Error::Internal(named(m)),
            Error::Candle(e) => Error::Candle(e.context(shown)),
            e => e,
        }
    }

    pub(crate) fn bad_config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadConfig {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    /// candle attaches a backtrace when RUST_BACKTRACE is set; it belongs in a debugger, not in
    /// the message users read.
    fn from(e: candle_core::Error) -> Self {
        fn strip(e: candle_core::Error) -> candle_core::Error {
            use candle_core::Error as E;
            match e {
                E::WithBacktrace { inner, .. } => strip(*inner),
                E::Context { inner, context } => E::Context {
                    inner: Box::new(strip(*inner)),
                    context,
                },
                E::WithPath { inner, path } => E::WithPath {
                    inner: Box::new(strip(*inner)),
                    path,
                },
                e => e,
            }
        }
        Error::Candle(strip(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let with_bt = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let wrapped = with_bt.context("in layer 3");
        let e = Error::from(wrapped);
        assert_eq!(e.to_string(), "in layer 3\nshape mismatch");
        assert_eq!(e.code(), "E_TENSOR");
    }
}
