//! Errors of the datastore crate.
//!
//! The store reports failures of requests as [`ErrorReply`] (a code plus a
//! message naming the object and the numbers involved), the same value that
//! travels to clients, so a client sees exactly what the worker decided.
//! [`Error`] adds what can only go wrong on the client side of the socket.
//! Starting a worker fails with [`WorkerError`], which keeps the cause typed
//! ([`StoreError`], itself keeping the [`SpillError`]); a configuration that
//! does not validate is a [`ConfigError`] naming the field.
//!
//! The codec's own errors stay beside the codec ([`DecodeError`],
//! [`FrameError`] in `protocol`, [`SpillError`] in `spill`): they are
//! what those modules return, and this module wraps them.

use crate::protocol::{DecodeError, ErrorCode, ErrorReply, FrameError};
use crate::spill::SpillError;
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

/// Why a [`crate::Store`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The config breaks a rule the store relies on (see
    /// `StoreConfig::validate`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The shared-memory arena could not be created or mapped (no memory,
    /// a zero size, a refused memfd).
    #[error(transparent)]
    Arena(io::Error),
    /// The spill folder could not be opened: it is in use by another store,
    /// cannot be created or locked, or the I/O engine asked for is missing.
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// Why a data worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket could not be bound (busy, missing folder, bad address), a
    /// thread could not be started, or announcing readiness failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A data worker setting that does not validate; [`ConfigError::field`]
/// names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A watermark is not a fraction of the arena in (0, 1].
    #[error("{field} must be a fraction of the arena in (0, 1] (watermarks satisfy 0 < low < high <= 1), got {value}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// The low watermark is not below the high one.
    #[error(
        "low_watermark must be below high_watermark (watermarks satisfy 0 < low < high <= 1), \
         got low {low}, high {high}"
    )]
    WatermarkOrder {
        /// The low watermark given.
        low: f64,
        /// The high watermark given.
        high: f64,
    },
    /// A size that must be positive is zero.
    #[error("{field} must be greater than zero")]
    ZeroSize {
        /// The setting.
        field: &'static str,
    },
    /// A required setting is missing or empty.
    #[error("{field} must be set")]
    Missing {
        /// The setting.
        field: &'static str,
    },
    /// A transfer address without a cluster secret: the port would serve
    /// anyone who connects.
    #[error(
        "cluster_secret must be set when transfer_address is: the transfer port only serves \
         data workers that prove they hold the cluster's secret"
    )]
    SecretNeeded,
}

impl ConfigError {
    /// The name of the offending setting (its serde name; the CLI flag is
    /// the same with dashes).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::OutOfRange { field, .. }
            | ConfigError::ZeroSize { field }
            | ConfigError::Missing { field } => field,
            ConfigError::WatermarkOrder { .. } => "low_watermark",
            ConfigError::SecretNeeded => "cluster_secret",
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
