//! One error type for the whole core. Bindings map each variant to one exception class
//! (Python) or one JS error name, by one exhaustive match: see rust/binllm-py/src/lib.rs.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// A caller passed a value the operation cannot take (shape, dtype, range, sampling value).
    InvalidArgument(String),
    /// A model or tensor file is malformed: truncated, wrong magic, sizes that disagree.
    Format(String),
    /// Well-formed input that binllm does not support (an unknown quant type, an architecture).
    Unsupported(String),
    /// A requested compute backend is not usable on this CPU.
    Backend(String),
    /// Reading a file failed.
    Io(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) => write!(f, "{m}"),
            Error::Format(m) => write!(f, "malformed model file: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Backend(m) => write!(f, "{m}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The error as found in `file`: its message starts with the file's name. Loaders take
    /// bytes; whoever opened the file names it.
    pub fn in_file(self, file: &std::path::Path) -> Error {
        self.at(&file.display().to_string())
    }

    /// The error as found at `place` (a file, or a file and its key): its message starts with
    /// `place: `. Backend errors are about the CPU, not a place, and stay as they are.
    pub fn at(self, place: &str) -> Error {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{place}: {m}")),
            Error::Format(m) => Error::Format(format!("{place}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{place}: {m}")),
            Error::Backend(m) => Error::Backend(m),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), format!("{place}: {e}"))),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Shorthand used across the crate: `bail!(InvalidArgument, "x must be {}", y)`.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$kind(format!($($arg)*)))
    };
}
