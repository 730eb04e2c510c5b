//! The frontend: invocation over HTTP, at openYuanrong's paths and at the AWS Lambda and OpenFaaS
//! aliases users bring, through this node's proxy.
//!
//! Routes (all but `/healthz` need the token, see [`super`]):
//! - `POST /serverless/v1/functions/{urn}/invocations` and
//!   `POST /invocations/{tenant}/{namespace}/{function}/`: the function's reply (200), or its own
//!   error (500, `{"code":2002,"functionError":true}`), or a platform error as problem+json.
//!   With `X-Invoke-Type: async` (any case) the answer is 202 at once, with `X-Request-Id`,
//!   `Location: /serverless/v1/functions/async-results/<id>` and `{"requestId","status":"pending"}`;
//!   the call runs on a task of its own.
//! - `GET /serverless/v1/functions/async-results/{request-id}`: 202 `{"requestId","status":
//!   "pending"}` while the call runs, then exactly the response the synchronous call would have
//!   given (in the flavour of the route that accepted it); 404 (code 1003) for an ID this frontend
//!   does not hold.
//! - AWS Lambda: `POST /2015-03-31/functions/{name}/invocations` (`name` may be an ARN or
//!   `name:qualifier`; `?Qualifier=` too), `X-Amz-Invocation-Type`: `RequestResponse` (default,
//!   200), `Event` (202 with `X-Request-Id` and `X-Amzn-RequestId`; the result is at
//!   async-results), `DryRun` (204). A function's own error keeps 200 and sets
//!   `X-Amz-Function-Error: Unhandled` with `{"errorMessage","errorType":"FunctionError"}`;
//!   platform errors stay problem+json (404, 413, 429 with `Retry-After`, 5xx). `Event` and
//!   `DryRun` check that the function exists first (404 at once, as AWS answers).
//! - OpenFaaS: `/function/{name}` (POST, GET or PUT; the body is the input) answers like the
//!   short form; `POST /async-function/{name}` answers 202 with `X-Call-Id` (the result is at
//!   async-results/<id>). `X-Callback-Url` is not followed: the frontend calls no URL a client
//!   names.
//!
//! Error mapping (the proxy's ErrorKind): not found 404/1015, insufficient resources 503/1002,
//! timeout 504/3002, busy 429/1005 with `Retry-After`, instance fatal 502/1007, internal
//! 500/3003, proxy unreachable 502/3002.
//!
//! Asynchronous results live in this process's memory only: a restarted frontend has none, and
//! only the frontend that accepted a call holds its result. Bounds, so that no client can make
//! it grow without end ([`RESULT_LIMITS`]): at most 10,000 calls, running or finished, and
//! 256 MiB of bytes (the request bodies of running calls plus the response bodies
//! of finished ones). To admit a new call or store a result, the oldest finished results are
//! dropped first; a finished result is dropped 10 minutes after its call ended anyway. Running
//! calls are never dropped: when they alone fill the bounds, a new asynchronous call is refused
//! with 429 (`Retry-After`). A single result too large to keep is replaced by a 500 problem
//! saying so.
//!
//! Sessions (`X-Instance-Session: {"sessionID":"s1","sessionTTL":60,"concurrency":1}`): calls of
//! one function carrying one session ID go to one instance. The first call of a session is
//! invoked normally and the instance that served it is remembered (calls that arrive while the
//! first is running wait for it, so they cannot pick another instance); later calls name that
//! instance (`InvokeRequest.instance`, which the proxy delivers to that very instance, on this
//! node or forwarded to its node). If the proxy answers that the instance is gone (stopped when
//! idle, or exited for good), the session forgets it and the call is invoked normally, binding
//! the session to the new instance; if the instance died during the call (1007), that call is not
//! repeated (it may have run), but the session's next call goes elsewhere. A session is forgotten `sessionTTL` seconds (default 600,
//! at most 86,400) after its last call; at most [`MAX_SESSIONS`] (100,000) are kept, the least
//! recently used dropped first. `concurrency` is validated (1 to 65,535) but not enforced here:
//! the instance's own concurrency applies.
//!
//! DryRun (and Event's existence check): the request is validated like a call (name, body,
//! session header); then, as the frontend keeps no function metadata, it asks the proxy for a
//! call to an instance ID no instance can have (a forwarded call, so the proxy looks only at this node and
//! runs nothing). The proxy says "not deployed" for an unknown function and "no such instance"
//! for a deployed one; the latter names the probe ID, which tells the two apart. 204 when the
//! function exists, 404 (1015) when not, 400 when the name is malformed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

use super::{body_or_problem, finish, healthz, name_from_urn, not_found, Problem, RestConfig};

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// The bounds of the asynchronous-result store.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Calls held, running or finished.
    entries: usize,
    /// Request bodies of running calls plus response bodies (and heads) of finished ones.
    bytes: usize,
    /// How long a finished result is kept after its call ended.
    ttl: Duration,
}

const RESULT_LIMITS: Limits = Limits {
    entries: 10_000,
    bytes: 256 << 20,
    ttl: Duration::from_secs(600),
};

/// Sessions remembered at most.
const MAX_SESSIONS: usize = 100_000;
const DEFAULT_SESSION_TTL: u64 = 600;
const MAX_SESSION_TTL: u64 = 86_400;
const MAX_SESSION_ID: usize = 256;
const MAX_NAME: usize = 256;

const ASYNC_RESULTS: &str = "/serverless/v1/functions/async-results/";

/// Invokes through a proxy running in this same process (no network hop).
pub type LocalInvoke =
    Arc<dyn Fn(InvokeRequest) -> futures::future::BoxFuture<'static, InvokeReply> + Send + Sync>;

/// Where calls go: the proxy in this process when the frontend runs inside it (measured: the
/// gRPC hop to a separate proxy is a third of the frontend's CPU per call), else a proxy over
/// gRPC on several connections taken in turn (one HTTP/2 connection's task is the busiest lock
/// under load).
#[derive(Clone)]
pub enum Upstream {
    /// The proxy of this process.
    Local(LocalInvoke),
    /// Proxy connections.
    Grpc(
        Arc<[ProxyClient<tonic::transport::Channel>]>,
        Arc<std::sync::atomic::AtomicUsize>,
    ),
}

impl Upstream {
    /// Connections to the proxy at `address`.
    pub fn grpc(proxies: Vec<ProxyClient<tonic::transport::Channel>>) -> Upstream {
        Upstream::Grpc(proxies.into(), Arc::default())
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeReply, tonic::Status> {
        match self {
            Upstream::Local(f) => Ok(f(req).await),
            Upstream::Grpc(proxies, next) => {
                if proxies.is_empty() {
                    return Err(tonic::Status::unavailable("no proxy connection"));
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut p = proxies[i % proxies.len()].clone();
                p.invoke(req).await.map(|r| r.into_inner())
            }
        }
    }
}

/// The routes' shared state, behind one `Arc`: axum clones the state for every request.
struct Front {
    upstream: Upstream,
    results: Arc<Results>,
    sessions: Arc<Sessions>,
}

/// Which convention the route that accepted a call follows: it decides how a function's own
/// error looks and which ID headers the response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Yr,
    Lambda,
    OpenFaas,
}

/// Locks a std mutex even if a panic poisoned it: every table here stays consistent between
/// statements that can panic, so its content is still good.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, 1001, detail)
}

// ------------------------------------------------------------------ asynchronous results

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

struct Results {
    limits: Limits,
    table: Mutex<ResultTable>,
}

impl Results {
    fn new(limits: Limits) -> Results {
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
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                1005,
                format!(
                    "{} asynchronous calls are running with {} bytes of input; this frontend \
                     holds at most {} calls and {} bytes: try again later",
                    t.slots.len(),
                    t.running_bytes,
                    l.entries,
                    l.bytes
                ),
            )
            .into_response();
            p.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Err(p.into());
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

// ------------------------------------------------------------------ sessions

/// What `X-Instance-Session` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionHeader {
    id: String,
    ttl: Duration,
}

/// The instance a session is bound to (`None` until its first call has been served). Calls of
/// the session hold this lock while binding, so concurrent first calls cannot bind two.
type Binding = Arc<tokio::sync::Mutex<Option<String>>>;

/// (function, session ID): one session ID may be used with several functions, each bound to an
/// instance of its own.
type SessionKey = (String, String);

struct SessionSlot {
    binding: Binding,
    expires: Instant,
    /// Its key in the recency index.
    used: u64,
}

#[derive(Default)]
struct SessionTable {
    slots: HashMap<SessionKey, SessionSlot>,
    /// Last use → key, least recent first.
    recency: BTreeMap<u64, SessionKey>,
    tick: u64,
}

struct Sessions {
    max: usize,
    table: Mutex<SessionTable>,
}

impl Sessions {
    fn new(max: usize) -> Sessions {
        Sessions {
            max: max.max(1),
            table: Mutex::new(SessionTable::default()),
        }
    }

    /// The session's binding, created if new or expired; its TTL starts again.
    fn binding(&self, key: SessionKey, ttl: Duration) -> Binding {
        let now = Instant::now();
        let mut guard = lock(&self.table);
        let t = &mut *guard;
        t.tick += 1;
        let tick = t.tick;
        // Forget sessions whose time is up, least recently used first (cheap: stops at the
        // first live one; the others go when they reach the front or the table is full).
        while let Some((&used, k)) = t.recency.first_key_value() {
            if t.slots.get(k).is_some_and(|s| s.expires > now) {
                break;
            }
            if let Some(k) = t.recency.remove(&used) {
                t.slots.remove(&k);
            }
        }
        if let Some(s) = t.slots.get_mut(&key) {
            if s.expires > now {
                t.recency.remove(&s.used);
                s.used = tick;
                s.expires = now + ttl;
                let b = Arc::clone(&s.binding);
                t.recency.insert(tick, key);
                return b;
            }
        }
        if let Some(old) = t.slots.remove(&key) {
            t.recency.remove(&old.used);
        }
        while t.slots.len() >= self.max {
            let Some((_, k)) = t.recency.pop_first() else {
                break;
            };
            t.slots.remove(&k);
        }
        let binding = Binding::default();
        t.slots.insert(
            key.clone(),
            SessionSlot {
                binding: Arc::clone(&binding),
                expires: now + ttl,
                used: tick,
            },
        );
        t.recency.insert(tick, key);
        binding
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.table).slots.len()
    }
}

/// A whole number in a JSON field, sent as a number or as a string (openYuanrong clients send
/// both).
fn whole(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_session(headers: &HeaderMap) -> Result<Option<SessionHeader>, Problem> {
    let Some(raw) = headers.get("x-instance-session") else {
        return Ok(None);
    };
    let bad = |why: String| {
        bad_request(format!(
            "X-Instance-Session: {why}; expected JSON like \
             {{\"sessionID\":\"s1\",\"sessionTTL\":60,\"concurrency\":1}}"
        ))
    };
    let text = raw
        .to_str()
        .map_err(|_| bad("the value is not visible ASCII".into()))?;
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("the value is not JSON ({e})")))?;
    let Some(obj) = v.as_object() else {
        return Err(bad("the value is not a JSON object".into()));
    };
    let id = match obj.get("sessionID") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SESSION_ID => s.clone(),
        Some(Value::String(s)) if s.is_empty() => return Err(bad("sessionID is empty".into())),
        Some(Value::String(_)) => {
            return Err(bad(format!(
                "sessionID is longer than {MAX_SESSION_ID} bytes"
            )))
        }
        None | Some(Value::Null) => return Err(bad("sessionID is missing".into())),
        Some(other) => return Err(bad(format!("sessionID {other} is not a string"))),
    };
    let ttl = match obj.get("sessionTTL") {
        None | Some(Value::Null) => DEFAULT_SESSION_TTL,
        Some(v) => match whole(v) {
            Some(0) => DEFAULT_SESSION_TTL,
            Some(n) if n <= MAX_SESSION_TTL => n,
            _ => {
                return Err(bad(format!(
                    "sessionTTL {v} is not a whole number of seconds from 0 (the default, \
                     {DEFAULT_SESSION_TTL}) to {MAX_SESSION_TTL}"
                )))
            }
        },
    };
    match obj.get("concurrency") {
        None | Some(Value::Null) => {}
        Some(v) => match whole(v) {
            Some(n) if (1..=65_535).contains(&n) => {}
            _ => {
                return Err(bad(format!(
                    "concurrency {v} is not a whole number from 1 to 65535"
                )))
            }
        },
    }
    Ok(Some(SessionHeader {
        id,
        ttl: Duration::from_secs(ttl),
    }))
}

// ------------------------------------------------------------------ invocation

/// One call, validated, ready to go to the proxy.
struct Invocation {
    function: String,
    /// The request's body as received (shared, not copied, by every attempt).
    payload: Bytes,
    session: Option<SessionHeader>,
    request_id: String,
    style: Style,
}

/// A function name as the routes take it: anything the meta service could have registered, but
/// nothing that could never be a name.
fn check_name(name: &str) -> Result<(), Problem> {
    if name.is_empty() {
        return Err(bad_request("the function name is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad_request(format!(
            "the function name is longer than {MAX_NAME} bytes"
        )));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(bad_request(format!(
            "the function name {name:?} holds a space, a slash or a control character"
        )));
    }
    Ok(())
}

fn prepare(
    function: String,
    headers: &HeaderMap,
    body: Body,
    style: Style,
) -> Result<Invocation, Problem> {
    let payload = body_or_problem(body)?;
    check_name(&function)?;
    let session = parse_session(headers)?;
    Ok(Invocation {
        function,
        payload,
        session,
        request_id: uuid::Uuid::new_v4().to_string(),
        style,
    })
}

async fn send(front: &Front, inv: &Invocation, instance: String) -> Result<InvokeReply, Problem> {
    let req = InvokeRequest {
        function: inv.function.clone(),
        instance,
        payload: inv.payload.clone(),
        request_id: inv.request_id.clone(),
        ..Default::default()
    };
    match front.upstream.invoke(req).await {
        Ok(r) => Ok(r),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            3002,
            format!("proxy: {}", e.message()),
        )),
    }
}

fn kind_of(r: &InvokeReply) -> ErrorKind {
    ErrorKind::try_from(r.error_kind).unwrap_or(ErrorKind::ErrorInternal)
}

/// Sends the call, to its session's instance when it has one.
async fn invoke(front: &Front, inv: &Invocation) -> Result<InvokeReply, Problem> {
    let Some(session) = inv.session.clone() else {
        return send(front, inv, String::new()).await;
    };
    let binding = front
        .sessions
        .binding((inv.function.clone(), session.id), session.ttl);
    // The instance that just answered "not found": forgotten, and not tried again.
    let mut gone: Option<String> = None;
    loop {
        let mut bound = binding.lock().await;
        if gone.is_some() && *bound == gone {
            *bound = None;
        }
        match bound.clone() {
            Some(instance) => {
                // Bound: later calls need not wait for this one.
                drop(bound);
                let r = send(front, inv, instance.clone()).await?;
                match kind_of(&r) {
                    // Gone before the call reached it (stopped when idle, or no longer
                    // running): nothing ran, so invoking afresh is safe.
                    ErrorKind::ErrorNotFound if gone.is_none() => {
                        tracing::debug!(%instance, function = %inv.function,
                            "session instance gone; choosing another");
                        gone = Some(instance);
                        continue;
                    }
                    // It died, perhaps during the call: that call may have run, so it is
                    // not repeated, but the next call of the session goes elsewhere.
                    ErrorKind::ErrorInstanceFatal => {
                        let mut bound = binding.lock().await;
                        if bound.as_deref() == Some(instance.as_str()) {
                            *bound = None;
                        }
                    }
                    _ => {}
                }
                return Ok(r);
            }
            None => {
                // Keeps the lock while the first call runs: the session's other calls wait to
                // learn its instance instead of each choosing one.
                let r = send(front, inv, String::new()).await?;
                if !r.instance_id.is_empty() {
                    *bound = Some(r.instance_id.clone());
                }
                return Ok(r);
            }
        }
    }
}

/// A platform error of the proxy's, with openYuanrong's code.
fn platform_error(kind: ErrorKind, detail: String) -> Response {
    let problem = |status, code| Problem::new(status, code, detail.clone()).into_response();
    match kind {
        ErrorKind::ErrorNotFound => problem(StatusCode::NOT_FOUND, 1015),
        ErrorKind::ErrorInsufficientResources => problem(StatusCode::SERVICE_UNAVAILABLE, 1002),
        ErrorKind::ErrorTimeout => problem(StatusCode::GATEWAY_TIMEOUT, 3002),
        ErrorKind::ErrorBusy => {
            let mut resp = problem(StatusCode::TOO_MANY_REQUESTS, 1005);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        ErrorKind::ErrorInstanceFatal => problem(StatusCode::BAD_GATEWAY, 1007),
        // Neither success nor a function error reaches here; anything else is the platform's.
        ErrorKind::ErrorMaxInstances => problem(StatusCode::SERVICE_UNAVAILABLE, 1002),
        ErrorKind::ErrorInvalidArgument => problem(StatusCode::BAD_REQUEST, 1001),
        ErrorKind::ErrorUnavailable => problem(StatusCode::SERVICE_UNAVAILABLE, 3003),
        ErrorKind::ErrorObjectLost => problem(StatusCode::NOT_FOUND, 4004),
        ErrorKind::ErrorInternal | ErrorKind::ErrorNone | ErrorKind::ErrorFunction => {
            problem(StatusCode::INTERNAL_SERVER_ERROR, 3003)
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    // IDs come from the proxy's own records; an unprintable one is shown empty rather than
    // failing the response.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The proxy's reply as the route's convention has it.
fn render(style: Style, r: InvokeReply) -> Response {
    let kind = kind_of(&r);
    let located = [
        (
            HeaderName::from_static("x-instance-id"),
            header_value(&r.instance_id),
        ),
        (
            HeaderName::from_static("x-node-id"),
            header_value(&r.node_id),
        ),
    ];
    match kind {
        ErrorKind::ErrorNone => (StatusCode::OK, located, r.payload).into_response(),
        // The function's own failure: reported as such, not as a platform error. Lambda keeps
        // 200 and flags it in a header, as AWS does.
        ErrorKind::ErrorFunction if style == Style::Lambda => (
            StatusCode::OK,
            located,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-amz-function-error"),
                    HeaderValue::from_static("Unhandled"),
                ),
            ],
            json!({"errorMessage": r.error, "errorType": "FunctionError"}).to_string(),
        )
            .into_response(),
        ErrorKind::ErrorFunction => (
            StatusCode::INTERNAL_SERVER_ERROR,
            located,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json!({"code": 2002, "message": r.error, "functionError": true}).to_string(),
        )
            .into_response(),
        _ => platform_error(kind, r.error),
    }
}

/// Adds the call's ID under the names the route's convention uses.
fn with_ids(mut resp: Response, id: &str, style: Style) -> Response {
    let v = header_value(id);
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("x-request-id"), v.clone());
    match style {
        Style::Yr => {}
        Style::Lambda => {
            h.insert(HeaderName::from_static("x-amzn-requestid"), v);
        }
        Style::OpenFaas => {
            h.insert(HeaderName::from_static("x-call-id"), v);
        }
    }
    resp
}

/// Runs the call to its end and renders the outcome.
async fn run(front: &Front, inv: Invocation) -> Response {
    let resp = match invoke(front, &inv).await {
        Ok(r) => render(inv.style, r),
        Err(p) => p.into_response(),
    };
    let mut resp = with_ids(resp, &inv.request_id, inv.style);
    // Lets the metrics layer count invocations per function.
    resp.extensions_mut()
        .insert(super::metrics::FunctionLabel::new(&inv.function));
    resp
}

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
fn start_async(front: &Arc<Front>, inv: Invocation) -> Response {
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

async fn dispatch(front: &Arc<Front>, inv: Invocation, asynchronous: bool) -> Response {
    if asynchronous {
        start_async(front, inv)
    } else {
        run(front, inv).await
    }
}

/// `X-Invoke-Type`: `async` runs the call in the background; absent or `sync` does not.
fn is_async(headers: &HeaderMap) -> Result<bool, Problem> {
    let Some(v) = headers.get("x-invoke-type") else {
        return Ok(false);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s.eq_ignore_ascii_case("async") {
        Ok(true)
    } else if s.is_empty() || s.eq_ignore_ascii_case("sync") {
        Ok(false)
    } else {
        Err(bad_request(format!(
            "X-Invoke-Type: {:?} is neither \"sync\" nor \"async\"",
            String::from_utf8_lossy(v.as_bytes())
        )))
    }
}

async fn invoke_named(
    front: &Arc<Front>,
    function: String,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match is_async(headers) {
        Ok(asynchronous) => call_as(front, function, headers, body, Style::Yr, asynchronous).await,
        Err(p) => p.into_response(),
    }
}

/// Takes a call the way the route's convention `style` has it and runs it (in the background
/// when `asynchronous`).
async fn call_as(
    front: &Arc<Front>,
    function: String,
    headers: &HeaderMap,
    body: Body,
    style: Style,
    asynchronous: bool,
) -> Response {
    match prepare(function, headers, body, style) {
        Ok(inv) => dispatch(front, inv, asynchronous).await,
        Err(p) => p.into_response(),
    }
}

async fn invoke_urn(
    State(f): State<Arc<Front>>,
    Path(urn): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match name_from_urn(&urn) {
        Ok(name) => invoke_named(&f, name, &headers, body).await,
        Err(p) => p.into_response(),
    }
}

async fn invoke_short(
    State(f): State<Arc<Front>>,
    Path((_tenant, _namespace, function)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    invoke_named(&f, function, &headers, body).await
}

async fn async_result(State(f): State<Arc<Front>>, Path(id): Path<String>) -> Response {
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

// ------------------------------------------------------------------ AWS Lambda

#[derive(Debug, PartialEq, Eq)]
enum LambdaType {
    RequestResponse,
    Event,
    DryRun,
}

fn lambda_type(headers: &HeaderMap) -> Result<LambdaType, Problem> {
    let Some(v) = headers.get("x-amz-invocation-type") else {
        return Ok(LambdaType::RequestResponse);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s.is_empty() || s.eq_ignore_ascii_case("RequestResponse") {
        Ok(LambdaType::RequestResponse)
    } else if s.eq_ignore_ascii_case("Event") {
        Ok(LambdaType::Event)
    } else if s.eq_ignore_ascii_case("DryRun") {
        Ok(LambdaType::DryRun)
    } else {
        Err(bad_request(format!(
            "X-Amz-Invocation-Type: {:?} is not RequestResponse, Event or DryRun",
            String::from_utf8_lossy(v.as_bytes())
        )))
    }
}

/// The `Qualifier` query parameter, if given (only `$` is ever percent-encoded in one).
fn qualifier_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "Qualifier")
        .map(|(_, v)| v.replace("%24", "$"))
}

/// The deployed function a Lambda function name means: a plain name, `name:qualifier`, an ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`) or a yr URN. A qualifier is
/// `$LATEST` (or `latest`) or a published version number.
fn lambda_function(raw: &str, query: Option<&str>) -> Result<String, Problem> {
    if raw.starts_with("sn:") {
        return name_from_urn(raw);
    }
    let (name, qualifier) = if raw.starts_with("arn:") {
        let parts: Vec<&str> = raw.split(':').collect();
        match parts.iter().position(|p| *p == "function") {
            Some(i) if i + 1 < parts.len() && parts.len() <= i + 3 => {
                (parts[i + 1], parts.get(i + 2).copied())
            }
            _ => {
                return Err(bad_request(format!(
                    "FunctionName {raw:?} is not an ARN like \
                     arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]"
                )))
            }
        }
    } else {
        match raw.split_once(':') {
            Some((n, q)) => (n, Some(q)),
            None => (raw, None),
        }
    };
    let from_query = qualifier_param(query);
    let qualifier = match (qualifier, from_query.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad_request(format!(
                "the function name's qualifier {a:?} and Qualifier {b:?} differ"
            )))
        }
        (Some(q), _) | (None, Some(q)) => Some(q),
        (None, None) => None,
    };
    check_name(name)?;
    match qualifier {
        None | Some("$LATEST" | "latest" | "") => Ok(name.to_string()),
        Some(q) if q.bytes().all(|b| b.is_ascii_digit()) => {
            // The URN form knows how versions are deployed.
            name_from_urn(&super::urn(name, q))
        }
        Some(q) => Err(bad_request(format!(
            "Qualifier {q:?} is neither $LATEST nor a version number (aliases do not exist here)"
        ))),
    }
}

/// Whether `function` is deployed, asked of the proxy without running anything (see the module
/// header).
async fn exists(front: &Front, function: &str) -> Result<bool, Response> {
    let probe = format!("dry-run-probe/{}", uuid::Uuid::new_v4());
    let req = InvokeRequest {
        function: function.to_string(),
        instance: probe.clone(),
        // Forwarded: the proxy looks only at this node's instances and never passes it on.
        forwarded: true,
        request_id: probe.clone(),
        ..Default::default()
    };
    let r = match front.upstream.invoke(req).await {
        Ok(r) => r,
        Err(e) => {
            return Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                3002,
                format!("proxy: {}", e.message()),
            )
            .into_response())
        }
    };
    match kind_of(&r) {
        ErrorKind::ErrorNotFound => Ok(r.error.contains(&probe)),
        // Nothing answers to the probe; should anything, the function exists.
        ErrorKind::ErrorNone | ErrorKind::ErrorFunction => Ok(true),
        kind => Err(platform_error(kind, r.error)),
    }
}

async fn lambda(
    State(f): State<Arc<Front>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = match lambda_type(&headers) {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    let function = match lambda_function(&name, query.as_deref()) {
        Ok(n) => n,
        Err(p) => return p.into_response(),
    };
    let inv = match prepare(function, &headers, body, Style::Lambda) {
        Ok(inv) => inv,
        Err(p) => return p.into_response(),
    };
    if kind != LambdaType::RequestResponse {
        // As AWS does, an unknown function is refused before anything is queued (a synchronous
        // call learns it from its own reply).
        match exists(&f, &inv.function).await {
            Ok(true) => {}
            Ok(false) => {
                let detail = format!("function {:?} is not deployed", inv.function);
                return with_ids(
                    Problem::new(StatusCode::NOT_FOUND, 1015, detail).into_response(),
                    &inv.request_id,
                    inv.style,
                );
            }
            Err(resp) => return with_ids(resp, &inv.request_id, inv.style),
        }
        if kind == LambdaType::DryRun {
            return with_ids(
                StatusCode::NO_CONTENT.into_response(),
                &inv.request_id,
                inv.style,
            );
        }
    }
    dispatch(&f, inv, kind == LambdaType::Event).await
}

// ------------------------------------------------------------------ OpenFaaS

async fn openfaas_sync(
    State(f): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    call_as(&f, name, &headers, body, Style::OpenFaas, false).await
}

async fn openfaas_async(
    State(f): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    call_as(&f, name, &headers, body, Style::OpenFaas, true).await
}

/// The frontend's routes, calling through `upstream`.
pub fn router(upstream: Upstream, config: &RestConfig) -> Router {
    let front = Front {
        upstream,
        results: Arc::new(Results::new(RESULT_LIMITS)),
        sessions: Arc::new(Sessions::new(MAX_SESSIONS)),
    };
    let openfaas = get(openfaas_sync).post(openfaas_sync).put(openfaas_sync);
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/serverless/v1/functions/{urn}/invocations",
            post(invoke_urn),
        )
        .route(
            "/serverless/v1/functions/async-results/{id}",
            get(async_result),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}",
            post(invoke_short),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}/",
            post(invoke_short),
        )
        .route("/2015-03-31/functions/{name}/invocations", post(lambda))
        .route("/function/{name}", openfaas.clone())
        .route("/function/{name}/", openfaas)
        .route("/async-function/{name}", post(openfaas_async))
        .route("/async-function/{name}/", post(openfaas_async))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(super::openapi::frontend()) }),
        )
        .fallback(not_found)
        .with_state(Arc::new(front));
    finish(r, config)
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

    #[test]
    fn sessions_are_bounded_and_refreshed() {
        let s = Sessions::new(2);
        let ttl = Duration::from_secs(60);
        let key = |id: &str| ("f".to_string(), id.to_string());
        let a = s.binding(key("a"), ttl);
        let _b = s.binding(key("b"), ttl);
        // a used again: b is now the least recently used.
        assert!(Arc::ptr_eq(&a, &s.binding(key("a"), ttl)));
        let _c = s.binding(key("c"), ttl);
        assert_eq!(s.len(), 2);
        assert!(Arc::ptr_eq(&a, &s.binding(key("a"), ttl)));
        // The same session ID with another function is another session.
        let other = s.binding(("g".into(), "a".into()), ttl);
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(s.len(), 2);
        // Expired sessions start afresh and are cleared.
        let s = Sessions::new(10);
        let x = s.binding(key("x"), Duration::ZERO);
        assert!(!Arc::ptr_eq(&x, &s.binding(key("x"), ttl)));
        assert_eq!(s.len(), 1);
    }

    fn with_session(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-instance-session",
            HeaderValue::from_str(v).expect("value"),
        );
        h
    }

    #[test]
    fn session_headers() {
        assert_eq!(parse_session(&HeaderMap::new()).ok(), Some(None));
        let s = parse_session(&with_session(
            r#"{"sessionID":"s1","sessionTTL":60,"concurrency":1}"#,
        ));
        assert_eq!(
            s.ok().flatten(),
            Some(SessionHeader {
                id: "s1".into(),
                ttl: Duration::from_secs(60)
            })
        );
        let s = parse_session(&with_session(r#"{"sessionID":"s1","sessionTTL":"30"}"#));
        assert_eq!(
            s.ok().flatten().map(|s| s.ttl),
            Some(Duration::from_secs(30))
        );
        let s = parse_session(&with_session(r#"{"sessionID":"s1"}"#));
        assert_eq!(
            s.ok().flatten().map(|s| s.ttl),
            Some(Duration::from_secs(DEFAULT_SESSION_TTL))
        );
        for bad in [
            "nope",
            "[]",
            r#"{"sessionTTL":5}"#,
            r#"{"sessionID":""}"#,
            r#"{"sessionID":7}"#,
            r#"{"sessionID":"s","sessionTTL":-1}"#,
            r#"{"sessionID":"s","sessionTTL":1e9}"#,
            r#"{"sessionID":"s","concurrency":0}"#,
        ] {
            assert!(parse_session(&with_session(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn lambda_names() {
        assert_eq!(
            lambda_function("hello", None).ok().as_deref(),
            Some("hello")
        );
        assert_eq!(
            lambda_function("arn:aws:lambda:us-east-1:123:function:0@svc@hello", None)
                .ok()
                .as_deref(),
            Some("0@svc@hello")
        );
        assert_eq!(
            lambda_function("hello", Some("Qualifier=%24LATEST"))
                .ok()
                .as_deref(),
            Some("hello")
        );
        assert_eq!(
            lambda_function("hello:2", None).ok(),
            name_from_urn(&super::super::urn("hello", "2")).ok()
        );
        assert!(lambda_function("hello:prod", None).is_err());
        assert!(lambda_function("hello:1", Some("Qualifier=2")).is_err());
        assert!(lambda_function("arn:aws:lambda:x", None).is_err());
        assert!(lambda_function("a b", None).is_err());
        assert!(lambda_function(&"x".repeat(300), None).is_err());
    }

    #[test]
    fn invocation_types() {
        let mut h = HeaderMap::new();
        assert_eq!(is_async(&h).ok(), Some(false));
        h.insert("x-invoke-type", HeaderValue::from_static("ASYNC"));
        assert_eq!(is_async(&h).ok(), Some(true));
        h.insert("x-invoke-type", HeaderValue::from_static("later"));
        assert!(is_async(&h).is_err());
        let mut h = HeaderMap::new();
        assert_eq!(lambda_type(&h).ok(), Some(LambdaType::RequestResponse));
        h.insert("x-amz-invocation-type", HeaderValue::from_static("Event"));
        assert_eq!(lambda_type(&h).ok(), Some(LambdaType::Event));
        h.insert(
            "x-amz-invocation-type",
            HeaderValue::from_static("Whenever"),
        );
        assert!(lambda_type(&h).is_err());
    }
}
