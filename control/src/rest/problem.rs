//! Platform errors over HTTP: RFC 9457 `application/problem+json` with openYuanrong's numeric
//! `code` as an extension member, and the one mapping from the control plane's [`Error`] (by its
//! kind) to an HTTP status and that code ([`Problem::from_kind`]).
//!
//! Codes: 1001 invalid input, 1002 no capacity, 1003 no such asynchronous result or object,
//! 1005 too many calls waiting (429 with `Retry-After`), 1007 the instance failed, 1015 no such
//! function or instance, 3002 timed out or unreachable, 3003 internal, 4004 an object's only copy
//! is lost, 4101 the function already exists. A function's own error (2002) is not a platform
//! error and is not a `Problem`: the frontend renders it in its route's convention.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use yr_proto::ErrorKind;

use crate::error::Error;

/// A platform error, rendered as problem+json.
#[derive(Debug)]
pub struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) code: u32,
    /// What went wrong, for people (also sent as `message`, openYuanrong's field).
    pub(crate) detail: String,
    /// Answer with `Retry-After: 1` (the client may simply try again).
    retry_after: bool,
}

impl Problem {
    pub fn new(status: StatusCode, code: u32, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            retry_after: false,
        }
    }

    /// Invalid input (400, code 1001); `detail` names the field.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, 1001, detail)
    }

    /// The one mapping of an error's kind to HTTP: every control-plane error a REST service
    /// renders goes through here.
    pub fn from_kind(kind: ErrorKind, detail: impl Into<String>) -> Problem {
        let (status, code) = match kind {
            ErrorKind::ErrorInvalidArgument => (StatusCode::BAD_REQUEST, 1001),
            ErrorKind::ErrorNotFound => (StatusCode::NOT_FOUND, 1015),
            ErrorKind::ErrorMaxInstances | ErrorKind::ErrorInsufficientResources => {
                (StatusCode::SERVICE_UNAVAILABLE, 1002)
            }
            ErrorKind::ErrorTimeout => (StatusCode::GATEWAY_TIMEOUT, 3002),
            ErrorKind::ErrorBusy => (StatusCode::TOO_MANY_REQUESTS, 1005),
            ErrorKind::ErrorInstanceFatal => (StatusCode::BAD_GATEWAY, 1007),
            ErrorKind::ErrorUnavailable => (StatusCode::SERVICE_UNAVAILABLE, 3002),
            ErrorKind::ErrorObjectLost => (StatusCode::NOT_FOUND, 4004),
            // A function's error is rendered by the frontend, never as a platform error; should
            // one arrive here, it is the platform's fault.
            ErrorKind::ErrorInternal | ErrorKind::ErrorNone | ErrorKind::ErrorFunction => {
                (StatusCode::INTERNAL_SERVER_ERROR, 3003)
            }
        };
        Problem {
            retry_after: kind == ErrorKind::ErrorBusy,
            ..Problem::new(status, code, detail)
        }
    }

    /// A peer component's refusal over gRPC (the master's, for the meta service): by the kind
    /// it carries. A duplicate registration is refused with the gRPC code AlreadyExists, which no
    /// error kind of its own stands for: 400 with openYuanrong's code 4101 (here and in
    /// `From<Error>`, for an error whose gRPC code is AlreadyExists).
    pub fn from_status(s: tonic::Status) -> Problem {
        if s.code() == tonic::Code::AlreadyExists {
            return Problem::new(StatusCode::BAD_REQUEST, 4101, s.message());
        }
        Problem::from(Error::from_status(s))
    }

    /// The frontend's proxy did not answer (502, code 3002): a failure of the hop to it, not an
    /// error the proxy decided.
    pub fn upstream(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_GATEWAY, 3002, detail)
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// openYuanrong's code.
    pub fn code(&self) -> u32 {
        self.code
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        if e.code() == tonic::Code::AlreadyExists {
            return Problem::new(StatusCode::BAD_REQUEST, 4101, e.to_string());
        }
        Problem::from_kind(e.kind(), e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://yr.dev/errors/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "message": self.detail,
        });
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_status_and_code() {
        let cases = [
            (Error::invalid("name", "bad"), 400, 1001),
            (Error::NotFound("f".into()), 404, 1015),
            (Error::MaxInstances("f".into()), 503, 1002),
            (Error::InsufficientResources("f".into()), 503, 1002),
            (Error::Timeout("f".into()), 504, 3002),
            (Error::Busy("f".into()), 429, 1005),
            (Error::InstanceFatal("f".into()), 502, 1007),
            (Error::Unavailable("f".into()), 503, 3002),
            (Error::ObjectLost("f".into()), 404, 4004),
            (Error::Internal("f".into()), 500, 3003),
        ];
        for (e, status, code) in cases {
            let what = format!("{e:?}");
            let busy = e.kind() == ErrorKind::ErrorBusy;
            let p = Problem::from(e);
            assert_eq!((p.status().as_u16(), p.code()), (status, code), "{what}");
            let r = p.into_response();
            assert_eq!(
                r.headers().contains_key(header::RETRY_AFTER),
                busy,
                "{what}"
            );
        }
    }

    #[test]
    fn a_peer_status_keeps_its_kind() {
        let p = Problem::from_status(Error::Timeout("late".into()).to_status());
        assert_eq!((p.status().as_u16(), p.code()), (504, 3002));
        let p = Problem::from_status(tonic::Status::already_exists("f exists"));
        assert_eq!((p.status().as_u16(), p.code()), (400, 4101));
        let p = Problem::from_status(tonic::Status::invalid_argument("cpu: bad"));
        assert_eq!((p.status().as_u16(), p.code()), (400, 1001));
    }
}
