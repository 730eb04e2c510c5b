//! Asynchronous calls: a call taken with `X-Invoke-Type: async` (or Lambda's `Event`, or
//! OpenFaaS's `/async-function`) is answered 202 at once and runs on a task of its own; its
//! response is kept here until fetched at `GET /serverless/v1/functions/async-results/{id}`
//! (202 `{"requestId","status":"pending"}` while it runs, then exactly the response the
//! synchronous call would have given; 404, code 1003, for an ID this frontend does not hold).
//!
//! Results live in this process's memory only: a restarted frontend has none, and only the
//! frontend that accepted a call holds its result. Bounds, so that no client can make it grow
//! without end ([`RESULT_LIMITS`]): at most 10,000 calls, running or finished, and 256 MiB of
//! bytes (the request bodies of running calls plus the response bodies of finished ones). To
//! admit a new call or store a result, the oldest finished results are dropped first; a finished
//! result is dropped 10 minutes after its call ended anyway. Running calls are never dropped:
//! when they alone fill the bounds, a new asynchronous call is refused with 429 (`Retry-After`).
//! A single result too large to keep is replaced by a 500 problem saying so.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{header_value, lock, run, with_ids, Front, Invocation, Style};
use crate::error::Error;
use crate::rest::Problem;

/// The bounds of the asynchronous-result store.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Calls held, running or finished.
    entries: usize,
    /// Request bodies of running calls plus response bodies (and heads) of finished ones.
    bytes: usize,
    /// How long a finished result is kept after its call ended.
    ttl: Duration,
}

pub(super) const RESULT_LIMITS: Limits = Limits {
    entries: 10_000,
    bytes: 256 << 20,
    ttl: Duration::from_secs(600),
};

const ASYNC_RESULTS: &str = "/serverless/v1/functions/async-results/";

/// A finished call's response, kept until fetched (and after: fetching is idempotent).
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Stored {
    async fn from_response(r: Response) -> Stored {
        let (parts, body) = r.into_parts();
        // The body was made in memory by this module: reading it cannot fail or block.
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(body) => Stored {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            Err(e) => Stored::problem(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                3003,
                format!("cannot keep the call's result: {e}"),
            )),
        }
    }

    /// A problem as a stored response, without awaiting (for `Drop`).
    fn problem(p: Problem) -> Stored {
        use futures::FutureExt;
        let r = p.into_response();
        let status = r.status();
        let headers = r.headers().clone();
        // A problem's body is a complete in-memory buffer: the first poll finishes.
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .now_or_never()
            .and_then(Result::ok)
            .unwrap_or_default();
        Stored {
            status,
            headers,
            body,
        }
    }

    /// What it counts against the byte bound.
    fn size(&self) -> usize {
        let head: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        self.body.len() + head + 64
    }

    fn response(&self) -> Response {
        let mut r = Response::new(axum::body::Body::from(self.body.clone()));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

enum Slot {
    Running {
        bytes: usize,
    },
    Done {
        stored: Arc<Stored>,
        bytes: usize,
        at: Instant,
    },
}

enum Lookup {
    Unknown,
    Running,
    Done(Arc<Stored>),
}

#[derive(Default)]
struct ResultTable {
    slots: HashMap<String, Slot>,
    /// Finished calls' IDs, oldest first: eviction order, and expiry order (one TTL for all).
    done: VecDeque<String>,
    running_bytes: usize,
    done_bytes: usize,
}

impl ResultTable {
    fn used(&self) -> usize {
        self.running_bytes + self.done_bytes
    }

    /// Drops the oldest finished result; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some(id) = self.done.pop_front() else {
            return false;
        };
        if let Some(Slot::Done { bytes, .. }) = self.slots.get(&id) {
            self.done_bytes = self.done_bytes.saturating_sub(*bytes);
            self.slots.remove(&id);
        }
        true
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some(id) = self.done.front() {
            if let Some(Slot::Done { at, .. }) = self.slots.get(id) {
                if now.saturating_duration_since(*at) < ttl {
                    break;
                }
            }
            self.evict_oldest();
        }
    }
}

pub(super) struct Results {
    limits: Limits,
    table: Mutex<ResultTable>,
}

impl Results {
    pub(super) fn new(limits: Limits) -> Results {
        Results {
            limits,
            table: Mutex::new(ResultTable::default()),
        }
    }

    /// Takes a new running call whose request body is `bytes` long, making room by dropping the
    /// oldest finished results; refuses when running calls alone fill the bounds.
    fn admit(&self, id: &str, bytes: usize) -> Result<(), Box<Response>> {
        let l = self.limits;
        if bytes > l.bytes {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                1001,
                format!(
                    "an asynchronous call's body may be {} bytes at most; this one is {bytes}",
                    l.bytes
                ),
            )
            .into_response()
            .into());
        }
        let mut t = lock(&self.table);
        t.expire(Instant::now(), l.ttl);
        while (t.slots.len() >= l.entries || t.used() + bytes > l.bytes) && t.evict_oldest() {}
        if t.slots.len() >= l.entries || t.used() + bytes > l.bytes {
            let busy = Error::Busy(format!(
                "{} asynchronous calls are running with {} bytes of input; this frontend holds \
                 at most {} calls and {} bytes: try again later",
                t.slots.len(),
                t.running_bytes,
                l.entries,
                l.bytes
            ));
            return Err(Problem::from(busy).into_response().into());
        }
        t.running_bytes += bytes;
        t.slots.insert(id.to_string(), Slot::Running { bytes });
        Ok(())
    }

    /// Records a running call's response, making room by dropping the oldest finished results.
    fn finish(&self, id: &str, stored: Stored) {
        let l = self.limits;
        let mut t = lock(&self.table);
        let Some(Slot::Running { bytes }) = t.slots.get(id) else {
            return; // never admitted, or finished already
        };
        let bytes = *bytes;
        t.running_bytes = t.running_bytes.saturating_sub(bytes);
        t.slots.remove(id);
        let now = Instant::now();
        t.expire(now, l.ttl);
        let mut stored = stored;
        let mut size = stored.size();
        while t.used() + size > l.bytes && t.evict_oldest() {}
        if t.used() + size > l.bytes {
            stored = Stored::problem(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                3003,
                format!(
                    "the call finished, but its response ({size} bytes) does not fit in the \
                     asynchronous-result store ({} bytes, shared with running calls); call \
                     synchronously for large results",
                    l.bytes
                ),
            ));
            size = stored.size();
        }
        t.done_bytes += size;
        t.done.push_back(id.to_string());
        t.slots.insert(
            id.to_string(),
            Slot::Done {
                stored: Arc::new(stored),
                bytes: size,
                at: now,
            },
        );
    }

    fn get(&self, id: &str) -> Lookup {
        let mut t = lock(&self.table);
        t.expire(Instant::now(), self.limits.ttl);
        match t.slots.get(id) {
            None => Lookup::Unknown,
            Some(Slot::Running { .. }) => Lookup::Running,
            Some(Slot::Done { stored, .. }) => Lookup::Done(Arc::clone(stored)),
        }
    }
}

/// Records a result when the asynchronous call's task ends without one (a panic, or the
/// runtime shutting down), so that its slot does not stay "running" and hold its bytes forever.
struct Completion {
    results: Arc<Results>,
    id: String,
    done: bool,
}

impl Completion {
    fn finish(mut self, stored: Stored) {
        self.results.finish(&self.id, stored);
        self.done = true;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            self.results.finish(
                &self.id,
                Stored::problem(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    3003,
                    "the asynchronous call ended without a result (its task stopped)",
                )),
            );
        }
    }
}

/// The answer for a call still running: `{"requestId","status":"pending"}` with its `Location`.
fn pending(id: &str, style: Style, status: StatusCode) -> Response {
    let location = format!("{ASYNC_RESULTS}{id}");
    let resp = (
        status,
        [
            (header::LOCATION, header_value(&location)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        json!({"requestId": id, "status": "pending"}).to_string(),
    )
        .into_response();
    with_ids(resp, id, style)
}

/// Admits the call to the result store, starts it on a task of its own, and answers 202.
pub(super) fn start_async(front: &Arc<Front>, inv: Invocation) -> Response {
    let id = inv.request_id.clone();
    let style = inv.style;
    if let Err(refused) = front.results.admit(&id, inv.payload.len()) {
        return *refused;
    }
    let completion = Completion {
        results: Arc::clone(&front.results),
        id: id.clone(),
        done: false,
    };
    let front2 = Arc::clone(front);
    tokio::spawn(async move {
        let resp = run(&front2, inv).await;
        completion.finish(Stored::from_response(resp).await);
    });
    pending(&id, style, StatusCode::ACCEPTED)
}

/// `GET /serverless/v1/functions/async-results/{id}`.
pub(super) async fn async_result(State(f): State<Arc<Front>>, Path(id): Path<String>) -> Response {
    match f.results.get(&id) {
        Lookup::Done(stored) => stored.response(),
        Lookup::Running => {
            let mut r = pending(&id, Style::Yr, StatusCode::ACCEPTED);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Lookup::Unknown => Problem::new(
            StatusCode::NOT_FOUND,
            1003,
            format!(
                "no asynchronous call {id:?} here: the ID is unknown to this frontend, or its \
                 result expired (results are kept {} s after the call ends, at most {} of them, \
                 oldest dropped first)",
                f.results.limits.ttl.as_secs(),
                f.results.limits.entries
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &str) -> Stored {
        Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn status_of(r: &Results, id: &str) -> &'static str {
        match r.get(id) {
            Lookup::Unknown => "unknown",
            Lookup::Running => "running",
            Lookup::Done(_) => "done",
        }
    }

    #[test]
    fn results_are_bounded_in_count_oldest_finished_first() {
        let r = Results::new(Limits {
            entries: 3,
            bytes: 1 << 20,
            ttl: Duration::from_secs(600),
        });
        for id in ["a", "b", "c"] {
            assert!(r.admit(id, 10).is_ok());
        }
        // Full of running calls: refused, nothing dropped.
        assert!(r.admit("d", 10).is_err());
        r.finish("b", stored("B"));
        r.finish("a", stored("A"));
        assert_eq!(status_of(&r, "b"), "done");
        // Room is made by dropping the oldest *finished* result (b finished first).
        assert!(r.admit("d", 10).is_ok());
        assert_eq!(status_of(&r, "b"), "unknown");
        assert_eq!(status_of(&r, "a"), "done");
        assert_eq!(status_of(&r, "c"), "running");
        // Finishing twice, or an unknown ID, changes nothing.
        r.finish("zz", stored("Z"));
        r.finish("a", stored("again"));
        match r.get("a") {
            Lookup::Done(s) => assert_eq!(&s.body[..], b"A"),
            _ => panic!("a lost"),
        }
    }

    #[test]
    fn results_are_bounded_in_bytes() {
        let r = Results::new(Limits {
            entries: 100,
            bytes: 1000,
            ttl: Duration::from_secs(600),
        });
        assert!(r.admit("big", 2000).is_err(), "larger than the whole store");
        assert!(r.admit("a", 0).is_ok());
        r.finish("a", stored(&"x".repeat(500)));
        assert!(r.admit("b", 0).is_ok());
        r.finish("b", stored(&"y".repeat(500)));
        // b does not fit beside a: a goes.
        assert_eq!(status_of(&r, "a"), "unknown");
        assert_eq!(status_of(&r, "b"), "done");
        // A result larger than the store becomes a problem saying so.
        assert!(r.admit("c", 0).is_ok());
        r.finish("c", stored(&"z".repeat(5000)));
        match r.get("c") {
            Lookup::Done(s) => {
                assert_eq!(s.status, StatusCode::INTERNAL_SERVER_ERROR);
                assert!(String::from_utf8_lossy(&s.body).contains("does not fit"));
            }
            _ => panic!("c lost"),
        }
        let t = lock(&r.table);
        assert!(t.used() <= 1000, "{}", t.used());
    }

    #[test]
    fn results_expire() {
        let r = Results::new(Limits {
            entries: 100,
            bytes: 1 << 20,
            ttl: Duration::ZERO,
        });
        assert!(r.admit("a", 1).is_ok());
        assert_eq!(status_of(&r, "a"), "running", "running calls never expire");
        r.finish("a", stored("A"));
        assert_eq!(status_of(&r, "a"), "unknown");
        assert_eq!(lock(&r.table).used(), 0);
    }

    #[test]
    fn an_abandoned_call_still_ends() {
        let results = Arc::new(Results::new(RESULT_LIMITS));
        assert!(results.admit("a", 5).is_ok());
        drop(Completion {
            results: Arc::clone(&results),
            id: "a".into(),
            done: false,
        });
        match results.get("a") {
            Lookup::Done(s) => assert_eq!(s.status, StatusCode::INTERNAL_SERVER_ERROR),
            _ => panic!("still running"),
        }
        assert_eq!(lock(&results.table).running_bytes, 0);
    }
}
