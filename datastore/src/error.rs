//! Errors of the datastore crate.
//!
//! The store reports failures as [`ErrorReply`] (a code plus a message naming
//! the object and the numbers involved), the same value that travels to
//! clients, so a client sees exactly what the worker decided. [`Error`] adds
//! what can only go wrong on the client side of the socket.

use crate::protocol::{DecodeError, ErrorCode, ErrorReply, FrameError};
use std::io;
use std::path::PathBuf;

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

impl ErrorReply {
    /// Builds a reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// Everything a datastore client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The worker refused the request; the reply says why.
    #[error("{0}")]
    Store(#[from] ErrorReply),
    /// The worker's socket could not be reached.
    #[error("cannot connect to data worker at {path}: {source}")]
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The connection failed mid-conversation (worker gone, socket error).
    #[error("data worker connection failed: {0}")]
    Io(#[from] io::Error),
    /// The worker sent something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The store error code, when the worker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Store(e) => Some(e.code),
            _ => None,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Error::Io(e),
            FrameError::Closed => Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "data worker closed the connection",
            )),
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
