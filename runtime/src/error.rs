//! The runtime's one error type: what a driver's calls and a function process's start-up return.
//!
//! Invariants: a variant is decided where the failure is known (a data worker's
//! [`ErrorCode`](yr_datastore::ErrorCode), a reply's [`ErrorKind`](yr_proto::ErrorKind)), never
//! read back out of a message. Every variant is `Clone`: a failed call's error is handed to every
//! clone of its [`ObjectRef`](crate::ObjectRef), so variants carry text, not `io::Error`s.

/// What can go wrong for a driver, or for a function process starting up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The cluster (session file, master, proxy, data worker) is not reachable.
    #[error("{0}")]
    Connect(String),
    /// The master refused to deploy or create something.
    #[error("{0}")]
    Deploy(String),
    /// The function itself returned an error or panicked.
    #[error("{function} failed: {message}")]
    Task {
        /// The function (or class.method).
        function: String,
        /// Its error message.
        message: String,
    },
    /// The platform could not run the call (no capacity, instance died, timeout).
    #[error("{function} could not run: {message}")]
    Platform {
        /// The function.
        function: String,
        /// Why.
        message: String,
        /// What kind of failure it was (a dead instance, a timeout, an unknown function...), as
        /// the proxy or master said it; [`ErrorKind::ErrorInternal`](yr_proto::ErrorKind) when
        /// the driver itself could not read the reply.
        kind: yr_proto::ErrorKind,
    },
    /// The only node holding an object is gone.
    #[error("{0}")]
    ObjectLost(String),
    /// `get` waited its whole timeout.
    #[error("{0}")]
    Timeout(String),
    /// Bytes did not decode as the asked type, or a value did not encode.
    #[error("{0}")]
    Codec(String),
    /// The data worker refused something.
    #[error("{0}")]
    Store(String),
    /// A function process was started without the environment a yr agent gives it.
    #[error("{0} is not set: function processes are started by a yr agent")]
    NotStartedByAgent(&'static str),
    /// The proxy's instance socket could not be reached or broke, or the proxy refused this
    /// instance or said something out of turn.
    #[error("{0}")]
    InstanceSocket(String),
    /// The proxy asked for a handler or class this executable does not register.
    #[error("no {what} {name:?} registered (this executable has {known:?})")]
    NotRegistered {
        /// "handler" or "class".
        what: &'static str,
        /// The name the proxy asked for.
        name: String,
        /// What this executable registers, sorted.
        known: Vec<String>,
    },
    /// A stateful class's constructor failed when its instance started.
    #[error("creating the {class} instance failed: {message}")]
    InstanceInit {
        /// The class.
        class: String,
        /// The constructor's error message.
        message: String,
    },
    /// A function process could not start a thread, or its call threads stopped.
    #[error("{0}")]
    Threads(String),
    /// The proxy cancelled a call that was already running in a stateful instance (or asked
    /// this process to end): the process must end now, without its stop hook, so that the
    /// call's effect on the instance's state never shows; the instance restarts.
    #[error("instance recycled: {0}")]
    Recycled(String),
    /// The driver cancelled the call ([`ObjectRef::cancel`](crate::ObjectRef::cancel)); the
    /// function is named.
    #[error("the call to {0} was cancelled")]
    Cancelled(String),
}

impl From<yr_datastore::Error> for Error {
    /// Keeps the data worker's own code: a lost object or an expired wait stays that kind.
    fn from(e: yr_datastore::Error) -> Error {
        match e.code() {
            Some(yr_datastore::ErrorCode::ObjectLost) => Error::ObjectLost(e.to_string()),
            Some(yr_datastore::ErrorCode::Timeout) => Error::Timeout(e.to_string()),
            _ => Error::Store(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_process_errors_say_what_to_do() {
        let e = Error::NotStartedByAgent("YR_INSTANCE_ID").to_string();
        assert_eq!(
            e,
            "YR_INSTANCE_ID is not set: function processes are started by a yr agent"
        );
        let e = Error::NotRegistered {
            what: "class",
            name: "Counter".into(),
            known: vec!["Adder".into()],
        }
        .to_string();
        assert_eq!(
            e,
            "no class \"Counter\" registered (this executable has [\"Adder\"])"
        );
    }

    #[test]
    fn data_worker_codes_keep_their_kind() {
        use yr_datastore::{protocol::ErrorReply, ErrorCode};
        let of = |code| Error::from(yr_datastore::Error::Store(ErrorReply::new(code, "m")));
        assert!(matches!(of(ErrorCode::ObjectLost), Error::ObjectLost(m) if m == "m"));
        assert!(matches!(of(ErrorCode::Timeout), Error::Timeout(_)));
        assert!(matches!(of(ErrorCode::NotFound), Error::Store(_)));
        let io = std::io::Error::other("broken pipe");
        assert!(matches!(
            Error::from(yr_datastore::Error::Io(io)),
            Error::Store(_)
        ));
    }
}
