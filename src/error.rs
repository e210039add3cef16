//! The error type every layer returns, and the wire codes of SPEC §7.

/// Everything that can go wrong in a request, with the code clients see.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or a parameter is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No operation (or checkpoint) with that id.
    #[error("{0}")]
    NotFound(String),
    /// The status change is not allowed from the current status.
    #[error("{0}")]
    InvalidTransition(String),
    /// try_resume refused: not cancelled or failed, or another resume won.
    #[error("{0}")]
    NotResumable(String),
    /// The request line is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The peer is not allowed to talk to this daemon.
    #[error("{0}")]
    PermissionDenied(String),
    /// The daemon cannot serve this now (shutting down, store closed).
    #[error("{0}")]
    Unavailable(String),
    /// SQLite failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Anything else that is the daemon's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The `error.code` string of SPEC §7.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::InvalidTransition(_) => "invalid_transition",
            Error::NotResumable(_) => "not_resumable",
            Error::TooLarge(_) => "too_large",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unavailable(_) => "unavailable",
            Error::Database(_) | Error::Io { .. } | Error::Internal(_) => "internal",
        }
    }

    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::Unavailable(format!("no database connection: {e}"))
    }
}

/// Result with opsd's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
