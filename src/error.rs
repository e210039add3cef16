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
    /// The database failed (any backend), classified so the writer knows
    /// whether to wait, retry or report.
    #[error("database error: {0}")]
    Database(DbError),
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

/// A database failure, as the backend reported it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// What kind of failure it is.
    pub kind: DbErrorKind,
    /// What the database said.
    pub message: String,
}

/// The kinds of database failure that change what the daemon does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// Another connection holds a lock: worth waiting for.
    Busy,
    /// The disk, the file or the connection failed (full, I/O, gone): the
    /// whole batch is retried once it works again.
    Storage,
    /// Anything else (a constraint, a bad statement): the request's own.
    Other,
}

/// Result with opsd's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
