//! The control plane's one error type.
//!
//! An error's kind is decided where the error arises and travels with it as a value: over gRPC
//! as the status code plus an [`ErrorDetail`] in the status details (see [`Error::to_status`] and
//! [`Error::from_status`]), into an `InvokeReply` as its [`ErrorKind`], and into REST as a
//! problem+json (the one mapping lives in `rest`). Nobody reads a kind back out of a message
//! text: the message is for people.
//!
//! Invariant: `Error::from_status(e.to_status())` has the same [`Error::kind`] as `e` for every
//! error (a unit test checks each variant).

use prost::Message;
use tonic::{Code, Status};
use yr_proto::{ErrorDetail, ErrorKind};

/// Shorthand for results of the control plane's library code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a control-plane component, by what a caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a request or of a configuration is invalid; `field` names it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The named function, instance or object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something to be created exists already (a function registered again with `create_only`).
    /// Its kind is [`ErrorKind::ErrorInvalidArgument`] (the caller must change the request); over
    /// gRPC it travels as the code `ALREADY_EXISTS`, which is how it is told apart.
    #[error("{0}")]
    AlreadyExists(String),
    /// The function already runs as many instances as its `max_instances` allows.
    #[error("{0}")]
    MaxInstances(String),
    /// No alive node has the resources (or labels) a request needs.
    #[error("{0}")]
    InsufficientResources(String),
    /// Something did not happen within its deadline.
    #[error("{0}")]
    Timeout(String),
    /// Too many calls are already waiting; the caller may try again later.
    #[error("{0}")]
    Busy(String),
    /// The instance failed for good (FATAL) or exited while serving the request.
    #[error("{0}")]
    InstanceFatal(String),
    /// The function's own code returned an error.
    #[error("{0}")]
    Function(String),
    /// The only copy of an object is gone with its node.
    #[error("{0}")]
    ObjectLost(String),
    /// A component or etcd could not be reached, or refused for a transient reason.
    #[error("{0}")]
    Unavailable(String),
    /// etcd answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// An etcd request failed; `request` says which ("put /yr/instances/f-1").
    #[error("etcd {request}: {source}")]
    EtcdRequest {
        request: String,
        source: etcd_client::Error,
    },
    /// A local file or socket operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// An invariant of yr itself did not hold, or a peer sent something that does not decode.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::InvalidArgument`] naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::EtcdRequest`] saying which request failed.
    pub fn etcd(request: impl Into<String>, source: etcd_client::Error) -> Error {
        Error::EtcdRequest {
            request: request.into(),
            source,
        }
    }

    /// An [`Error::Io`] saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The wire kind of this error, as an `InvokeReply` or an [`ErrorDetail`] carries it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } | Error::AlreadyExists(_) => {
                ErrorKind::ErrorInvalidArgument
            }
            Error::NotFound(_) => ErrorKind::ErrorNotFound,
            Error::MaxInstances(_) => ErrorKind::ErrorMaxInstances,
            Error::InsufficientResources(_) => ErrorKind::ErrorInsufficientResources,
            Error::Timeout(_) => ErrorKind::ErrorTimeout,
            Error::Busy(_) => ErrorKind::ErrorBusy,
            Error::InstanceFatal(_) => ErrorKind::ErrorInstanceFatal,
            Error::Function(_) => ErrorKind::ErrorFunction,
            Error::ObjectLost(_) => ErrorKind::ErrorObjectLost,
            Error::Unavailable(_) | Error::Etcd(_) | Error::EtcdRequest { .. } => {
                ErrorKind::ErrorUnavailable
            }
            Error::Io { .. } | Error::Internal(_) => ErrorKind::ErrorInternal,
        }
    }

    /// An error of wire kind `kind` with message `message` (the inverse of [`Error::kind`] up to
    /// the variants that share a kind).
    pub fn from_kind(kind: ErrorKind, message: String) -> Error {
        match kind {
            ErrorKind::ErrorInvalidArgument => {
                // The field travels in the message ("field: reason"), as `Display` wrote it.
                match message.split_once(": ") {
                    Some((field, reason)) => Error::invalid(field, reason),
                    None => Error::invalid("request", message),
                }
            }
            ErrorKind::ErrorNotFound => Error::NotFound(message),
            ErrorKind::ErrorMaxInstances => Error::MaxInstances(message),
            ErrorKind::ErrorInsufficientResources => Error::InsufficientResources(message),
            ErrorKind::ErrorTimeout => Error::Timeout(message),
            ErrorKind::ErrorBusy => Error::Busy(message),
            ErrorKind::ErrorInstanceFatal => Error::InstanceFatal(message),
            ErrorKind::ErrorFunction => Error::Function(message),
            ErrorKind::ErrorObjectLost => Error::ObjectLost(message),
            ErrorKind::ErrorUnavailable => Error::Unavailable(message),
            ErrorKind::ErrorInternal | ErrorKind::ErrorNone => Error::Internal(message),
        }
    }

    /// The gRPC status code for this error's kind.
    pub fn code(&self) -> Code {
        if let Error::AlreadyExists(_) = self {
            return Code::AlreadyExists;
        }
        match self.kind() {
            ErrorKind::ErrorInvalidArgument => Code::InvalidArgument,
            ErrorKind::ErrorNotFound | ErrorKind::ErrorObjectLost => Code::NotFound,
            ErrorKind::ErrorMaxInstances | ErrorKind::ErrorInsufficientResources => {
                Code::ResourceExhausted
            }
            ErrorKind::ErrorTimeout => Code::DeadlineExceeded,
            ErrorKind::ErrorBusy | ErrorKind::ErrorUnavailable => Code::Unavailable,
            ErrorKind::ErrorInstanceFatal | ErrorKind::ErrorFunction => Code::Aborted,
            ErrorKind::ErrorInternal | ErrorKind::ErrorNone => Code::Internal,
        }
    }

    /// This error as a gRPC status: its code, its message, and its kind in the details.
    pub fn to_status(&self) -> Status {
        let detail = ErrorDetail {
            kind: self.kind().into(),
        };
        Status::with_details(self.code(), self.to_string(), detail.encode_to_vec().into())
    }

    /// The error a peer component sent: its kind from the status details when the peer is yr,
    /// else from the status code alone.
    pub fn from_status(status: Status) -> Error {
        if status.code() == Code::AlreadyExists {
            return Error::AlreadyExists(status.message().to_string());
        }
        let sent = Some(status.details())
            .filter(|d| !d.is_empty())
            .and_then(|d| ErrorDetail::decode(d).ok())
            .and_then(|d| ErrorKind::try_from(d.kind).ok());
        let kind = sent.unwrap_or(match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::ErrorInvalidArgument,
            Code::NotFound => ErrorKind::ErrorNotFound,
            Code::ResourceExhausted => ErrorKind::ErrorInsufficientResources,
            Code::DeadlineExceeded => ErrorKind::ErrorTimeout,
            Code::Unavailable | Code::Cancelled => ErrorKind::ErrorUnavailable,
            Code::Aborted => ErrorKind::ErrorInstanceFatal,
            _ => ErrorKind::ErrorInternal,
        });
        Error::from_kind(kind, status.message().to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.to_status()
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::from_status(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<Error> {
        vec![
            Error::invalid("cpu", "must be positive"),
            Error::NotFound("no function f".into()),
            Error::AlreadyExists("the function name f already exists".into()),
            Error::MaxInstances("f runs 2 of 2".into()),
            Error::InsufficientResources("no node fits".into()),
            Error::Timeout("not running after 30s".into()),
            Error::Busy("queue full".into()),
            Error::InstanceFatal("exited 3 times".into()),
            Error::Function("boom".into()),
            Error::ObjectLost("object x is lost".into()),
            Error::Unavailable("master down".into()),
            Error::io("reading x", std::io::Error::other("disk")),
            Error::Internal("bug".into()),
        ]
    }

    #[test]
    fn the_kind_survives_a_grpc_hop() {
        for e in every_variant() {
            let back = Error::from_status(e.to_status());
            assert_eq!(back.kind(), e.kind(), "{e:?} came back as {back:?}");
            assert_eq!(back.to_string(), e.to_string());
        }
    }

    #[test]
    fn a_status_without_detail_is_read_by_its_code() {
        let e = Error::from_status(Status::resource_exhausted("no room"));
        assert_eq!(e.kind(), ErrorKind::ErrorInsufficientResources);
        let e = Error::from_status(Status::deadline_exceeded("late"));
        assert_eq!(e.kind(), ErrorKind::ErrorTimeout);
        let e = Error::from_status(Status::unknown("?"));
        assert_eq!(e.kind(), ErrorKind::ErrorInternal);
    }

    #[test]
    fn already_exists_keeps_its_code() {
        let s = Error::AlreadyExists("f exists".into()).to_status();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert!(matches!(Error::from_status(s), Error::AlreadyExists(_)));
        let plain = Error::from_status(Status::already_exists("taken"));
        assert!(matches!(plain, Error::AlreadyExists(_)), "{plain:?}");
    }

    #[test]
    fn an_invalid_argument_keeps_its_field() {
        match Error::from_status(Error::invalid("memory", "too large").to_status()) {
            Error::InvalidArgument { field, reason } => {
                assert_eq!((field.as_str(), reason.as_str()), ("memory", "too large"))
            }
            other => panic!("came back as {other:?}"),
        }
    }
}
