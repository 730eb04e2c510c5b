//! openYuanrong's data-system proxy on the frontend, `/datasystem/v1`, for clients without a
//! local data worker: objects and named keys of this node's data worker over HTTP.
//!
//! - `POST /datasystem/v1/obj/put[?id=<48 hex digits>]`: the body is the object's bytes;
//!   answers `{"id": "<hex>", "size": n}`. Without `id` the object gets a fresh ID naming this
//!   node, so any node's frontend can fetch it.
//! - `POST|DELETE /datasystem/v1/obj/del?id=<hex>`: deletes the object on every node;
//! - `GET|POST /datasystem/v1/obj/get?id=<hex>[&timeoutMs=]`: the bytes
//!   (`application/octet-stream`), pulled from the node the ID names when it is not here.
//! - `POST /datasystem/v1/kv/set?key=K` (the body is the value), `GET|POST
//!   /datasystem/v1/kv/get?key=K[&timeoutMs=]`, `POST|DELETE /datasystem/v1/kv/del?key=K`.
//!
//! Memory: an object body with a `Content-Length` is never held whole. The object is created at
//! that size first and each body frame is copied into its shared memory as it arrives; a body
//! that ends early or runs long aborts the object (nothing is left in the store) and is a 400.
//! A chunked body (no length) is buffered up to the body limit, then copied in once. Replies
//! are not copied at all: the response body is the object's bytes in shared memory, and the
//! view (with its pin: the object can be neither freed nor spilled meanwhile) is held until
//! the last byte has been handed to the connection. KV values are buffered (they go through
//! `kv_set`, which takes a slice); the body limit bounds them too.
//!
//! Errors are problem+json: a bad `id`, `key` or `timeoutMs` is 400 code 1001 naming it; no
//! such object or key is 404 code 1003 (openYuanrong's "not found"); an object larger than
//! the whole shared memory is 413 code 4202; memory and spill disk both full is 507 code 4204;
//! an object whose only node is gone is 410 code 1003; an object still being written when
//! `timeoutMs` ran out is 504 code 3002; an ID already in use is 409 code 1001; a frontend
//! without a data worker (`--data-socket`), or one it cannot reach, is 503 code 3002.
//!
//! Connections: the data worker's client is blocking and serialises calls on its socket, so a
//! get that waits would hold up every other call on it. Each request therefore leases a
//! connection of its own from a small pool (connecting lazily), runs its calls on a blocking
//! thread, and gives the connection back when done (for a get: when the response body has
//! been sent). A connection that failed is dropped together with every idle one (they all
//! lead to the same, likely restarted, worker); a call that failed on a pooled connection is
//! tried once more on a fresh one, so a restarted worker costs no request an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;
use yr_datastore::protocol::{INLINE_MAX, MAX_KEY_LEN};
use yr_datastore::{Client, ErrorCode, ObjectBuilder, ObjectGuard, ObjectId};

use super::{body_or_problem, Problem, RestConfig};

/// The longest `timeoutMs` a get may ask for: a REST client that wants to wait longer polls
/// again, so no request holds a connection (and a data worker thread) for minutes.
pub const MAX_TIMEOUT_MS: u64 = 10_000;

/// Idle data-worker connections kept for later requests.
const MAX_IDLE: usize = 16;

/// The name this frontend's connections carry in the data worker's logs.
const CLIENT_NAME: &str = "yr-frontend";

/// The pool of connections to this node's data worker.
struct Store {
    socket: PathBuf,
    idle: Mutex<Vec<Client>>,
}

/// A connection taken from the pool; given back when dropped, unless [`Lease::discard`]ed.
struct Lease {
    client: Client,
    store: Arc<Store>,
    keep: bool,
}

impl Lease {
    /// The connection failed: drop it, and the idle ones with it.
    fn discard(mut self) {
        self.keep = false;
        self.store.clear();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.keep {
            // A clone shares the connection; `self.client` goes away with the lease.
            self.store.give(self.client.clone());
        }
    }
}

/// Whether an error means the connection itself is unusable (not a refusal by the worker).
fn broken(e: &yr_datastore::Error) -> bool {
    !matches!(e, yr_datastore::Error::Store(_))
}

impl Store {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give(&self, c: Client) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    fn clear(&self) {
        let dropped = std::mem::take(&mut *self.idle());
        drop(dropped);
    }

    fn lease(self: &Arc<Self>, client: Client) -> Lease {
        Lease {
            client,
            store: Arc::clone(self),
            keep: true,
        }
    }

    /// Runs `f` on a leased connection (blocking). A broken connection is discarded; if it
    /// came from the pool, `f` runs once more on a fresh one. On success the lease is
    /// returned with the value, for values (views, builders) that use the connection later.
    fn call<T>(
        self: &Arc<Self>,
        f: impl Fn(&Client) -> yr_datastore::Result<T>,
    ) -> yr_datastore::Result<(T, Lease)> {
        let pooled = self.idle().pop();
        let was_pooled = pooled.is_some();
        let lease = match pooled {
            Some(c) => self.lease(c),
            None => self.lease(Client::connect_named(&self.socket, CLIENT_NAME)?),
        };
        match f(&lease.client) {
            Ok(v) => return Ok((v, lease)),
            Err(e) if !broken(&e) => return Err(e),
            Err(e) => {
                lease.discard();
                if !was_pooled {
                    return Err(e);
                }
                tracing::info!("data worker connection failed ({e}); reconnecting");
            }
        }
        let lease = self.lease(Client::connect_named(&self.socket, CLIENT_NAME)?);
        match f(&lease.client) {
            Ok(v) => Ok((v, lease)),
            Err(e) => {
                if broken(&e) {
                    lease.discard();
                }
                Err(e)
            }
        }
    }
}

#[derive(Clone)]
struct Data {
    store: Option<Arc<Store>>,
    max_body: usize,
}

impl Data {
    fn store(&self) -> Result<Arc<Store>, Problem> {
        self.store.clone().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                3002,
                "this frontend has no data worker (it was started without --data-socket), so \
                 /datasystem/v1 is unavailable here",
            )
        })
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            3003,
            format!("a data worker call failed: {e}"),
        )
    })?
}

/// A data worker error as problem+json; `what` says what was being done.
fn store_problem(what: &str, e: &yr_datastore::Error, socket: &Path) -> Problem {
    let reply = match e {
        yr_datastore::Error::Store(r) => r,
        other => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                3002,
                format!(
                    "{what}: the frontend cannot reach its data worker at {}: {other}",
                    socket.display()
                ),
            )
        }
    };
    let (status, code) = match reply.code {
        // An ID naming a node outside the cluster names no object of it.
        ErrorCode::NotFound | ErrorCode::NotMember => (StatusCode::NOT_FOUND, 1003),
        ErrorCode::BadPeer => (StatusCode::BAD_GATEWAY, 3003),
        ErrorCode::ObjectLost => (StatusCode::GONE, 1003),
        ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, 3002),
        ErrorCode::AlreadyExists => (StatusCode::CONFLICT, 1001),
        ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 4202),
        ErrorCode::OutOfMemory => (StatusCode::INSUFFICIENT_STORAGE, 4204),
        ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, 1001),
        ErrorCode::InvalidState => (StatusCode::CONFLICT, 3003),
        ErrorCode::VersionMismatch => (StatusCode::SERVICE_UNAVAILABLE, 3003),
        ErrorCode::SpillFailed | ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, 3003),
    };
    Problem::new(status, code, format!("{what}: {}", reply.message))
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, 1001, detail)
}

/// The query parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn of(uri: &Uri) -> Result<Params, Problem> {
        Query::<HashMap<String, String>>::try_from_uri(uri)
            .map(|q| Params(q.0))
            .map_err(|e| bad(format!("the query string is malformed: {e}")))
    }

    fn id(&self) -> Result<Option<ObjectId>, Problem> {
        let Some(s) = self.0.get("id") else {
            return Ok(None);
        };
        let ok = s.len() == 48 && s.bytes().all(|b| b.is_ascii_hexdigit());
        match ok.then(|| ObjectId::from_hex(s)).flatten() {
            Some(id) => Ok(Some(id)),
            None => Err(bad(format!(
                "id: {s:?} is not an object ID (48 hexadecimal digits)"
            ))),
        }
    }

    fn required_id(&self) -> Result<ObjectId, Problem> {
        self.id()?
            .ok_or_else(|| bad("id: is required (48 hexadecimal digits)"))
    }

    fn key(&self) -> Result<Vec<u8>, Problem> {
        match self.0.get("key") {
            None => Err(bad("key: is required")),
            Some(k) if k.is_empty() => Err(bad("key: must not be empty")),
            Some(k) if k.len() > MAX_KEY_LEN => Err(bad(format!(
                "key: is {} bytes; keys are at most {MAX_KEY_LEN} bytes",
                k.len()
            ))),
            Some(k) => Ok(k.as_bytes().to_vec()),
        }
    }

    fn timeout(&self) -> Result<Duration, Problem> {
        let Some(s) = self.0.get("timeoutMs") else {
            return Ok(Duration::ZERO);
        };
        match s.trim().parse::<u64>() {
            Ok(ms) if ms <= MAX_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
            _ => Err(bad(format!(
                "timeoutMs: {s:?} is not a number of milliseconds from 0 to {MAX_TIMEOUT_MS}"
            ))),
        }
    }
}

/// The declared body length, if any.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| bad(format!("Content-Length: {v:?} is not a number")))
}

fn too_large(n: u64, limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        1001,
        format!("the request body is over the limit: {n} bytes, the limit is {limit} bytes"),
    )
}

/// An object being written from a request body. If the request goes away mid-body (the
/// handler's future is dropped), the object is aborted on a blocking thread.
struct Pending {
    builder: Option<ObjectBuilder>,
    lease: Option<Lease>,
}

impl Pending {
    fn take(&mut self) -> Option<(ObjectBuilder, Option<Lease>)> {
        let b = self.builder.take()?;
        Some((b, self.lease.take()))
    }

    /// Aborts the object and waits until the worker has discarded it.
    async fn abort(mut self) {
        if let Some((b, lease)) = self.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = b.abort() {
                    tracing::debug!("aborting an object of a failed upload: {e}");
                }
                drop(lease);
            })
            .await;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((b, lease)) = self.take() else {
            return;
        };
        // Dropping the builder aborts the object: a socket round trip, not for an async thread.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || {
                    drop(b);
                    drop(lease);
                });
            }
            Err(_) => {
                drop(b);
                drop(lease);
            }
        }
    }
}

/// Writes a body of the declared length `len` straight into a new object.
async fn put_streamed(
    store: Arc<Store>,
    id: Option<ObjectId>,
    len: usize,
    body: Body,
) -> Result<ObjectId, Problem> {
    let s = Arc::clone(&store);
    let (builder, lease) = blocking(move || {
        s.call(|c| c.create(id.unwrap_or_else(|| c.new_id()), len, 0))
            .map_err(|e| {
                store_problem(
                    &format!("cannot create an object of {len} bytes"),
                    &e,
                    &s.socket,
                )
            })
    })
    .await?;
    let mut pending = Pending {
        builder: Some(builder),
        lease: Some(lease),
    };
    let mut at = 0usize;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                pending.abort().await;
                return Err(bad(format!(
                    "the request body broke off after {at} of the {len} bytes its \
                     Content-Length declared: {e}"
                )));
            }
        };
        let end = at.checked_add(frame.len()).filter(|&e| e <= len);
        let (Some(end), Some(b)) = (end, pending.builder.as_mut()) else {
            pending.abort().await;
            return Err(bad(format!(
                "the request body is longer than its Content-Length ({len} bytes)"
            )));
        };
        b.data_mut()[at..end].copy_from_slice(&frame);
        at = end;
    }
    if at != len {
        pending.abort().await;
        return Err(bad(format!(
            "the request body ended after {at} bytes, but its Content-Length declared {len}"
        )));
    }
    let Some((b, lease)) = pending.take() else {
        return Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            3003,
            "internal: the upload's object went away",
        ));
    };
    let id = b.id();
    blocking(move || match b.seal() {
        Ok(()) => Ok(id),
        Err(e) => {
            let p = store_problem(&format!("cannot seal object {id}"), &e, &store.socket);
            if let (true, Some(l)) = (broken(&e), lease) {
                l.discard();
            }
            Err(p)
        }
    })
    .await
}

/// Reads a body of unknown length (up to `limit` bytes), then stores it.
async fn put_buffered(
    store: Arc<Store>,
    id: Option<ObjectId>,
    body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<(ObjectId, usize), Problem> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| {
            bad(format!(
                "the request body broke off after {total} bytes: {e}"
            ))
        })?;
        total = total.saturating_add(frame.len());
        if total > limit {
            return Err(too_large(total as u64, limit));
        }
        chunks.push(frame);
    }
    if let Some(n) = declared.filter(|&n| n != total as u64) {
        return Err(bad(format!(
            "the request body has {total} bytes, but its Content-Length declared {n}"
        )));
    }
    let id = blocking(move || {
        let what = format!("cannot store an object of {total} bytes");
        let r = store.call(|c| {
            let id = id.unwrap_or_else(|| c.new_id());
            if total <= INLINE_MAX {
                let mut all = Vec::with_capacity(total);
                for ch in &chunks {
                    all.extend_from_slice(ch);
                }
                c.put(id, &all)?;
            } else {
                let mut b = c.create(id, total, 0)?;
                let mut at = 0;
                for ch in &chunks {
                    b.data_mut()[at..at + ch.len()].copy_from_slice(ch);
                    at += ch.len();
                }
                b.seal()?;
            }
            Ok(id)
        });
        r.map(|(id, _lease)| id)
            .map_err(|e| store_problem(&what, &e, &store.socket))
    })
    .await?;
    Ok((id, total))
}

async fn obj_put(State(d): State<Data>, req: Request) -> Result<Response, Problem> {
    let store = d.store()?;
    let params = Params::of(req.uri())?;
    let id = params.id()?;
    let declared = content_length(req.headers())?;
    if let Some(n) = declared.filter(|&n| n > d.max_body as u64) {
        return Err(too_large(n, d.max_body));
    }
    let body = req.into_body();
    let (id, size) = match declared {
        Some(n) if n as usize > INLINE_MAX => {
            let n = n as usize;
            (put_streamed(store, id, n, body).await?, n)
        }
        _ => put_buffered(store, id, body, d.max_body, declared).await?,
    };
    Ok(Json(json!({"id": id.to_hex(), "size": size})).into_response())
}

/// A view of an object as a response body's bytes: the view (with its pin) and the connection
/// it came on live until the connection has taken the last byte.
struct Served {
    view: ObjectGuard,
    _lease: Lease,
}

impl AsRef<[u8]> for Served {
    fn as_ref(&self) -> &[u8] {
        &self.view
    }
}

/// The bytes of a view, without copying them.
fn octets(view: ObjectGuard, lease: Lease) -> Response {
    let body = Body::from(Bytes::from_owner(Served {
        view,
        _lease: lease,
    }));
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

async fn obj_get(State(d): State<Data>, uri: Uri) -> Result<Response, Problem> {
    let store = d.store()?;
    let params = Params::of(&uri)?;
    let id = params.required_id()?;
    let timeout = params.timeout()?;
    let (view, lease) = blocking(move || {
        store
            .call(|c| c.get_remote(id, timeout))
            .map_err(|e| store_problem(&format!("cannot get object {id}"), &e, &store.socket))
    })
    .await?;
    Ok(octets(view, lease))
}

/// Deletes an object on every node that holds a copy (the primary's data worker passes the
/// delete on to the nodes that pulled it). An object this node made and no longer has is 404.
async fn obj_del(State(d): State<Data>, uri: Uri) -> Result<Response, Problem> {
    let store = d.store()?;
    let id = Params::of(&uri)?.required_id()?;
    blocking(move || {
        store
            .call(|c| {
                if id.tag() == c.node_tag() && !c.contains(id)? {
                    return Err(yr_datastore::Error::Store(
                        yr_datastore::protocol::ErrorReply::new(
                            yr_datastore::ErrorCode::NotFound,
                            format!("object {id} not found"),
                        ),
                    ));
                }
                c.free(&[id]);
                Ok(())
            })
            .map_err(|e| store_problem(&format!("cannot delete object {id}"), &e, &store.socket))
    })
    .await?;
    Ok(Json(json!({"id": id.to_hex(), "deleted": true})).into_response())
}

type BodyBytes = Result<Bytes, axum::extract::rejection::BytesRejection>;

async fn kv_set(State(d): State<Data>, uri: Uri, body: BodyBytes) -> Result<Response, Problem> {
    let store = d.store()?;
    let key = Params::of(&uri)?.key()?;
    let value = body_or_problem(body)?;
    let size = value.len();
    let shown = String::from_utf8_lossy(&key).into_owned();
    let reply = json!({"key": shown, "size": size});
    blocking(move || {
        store
            .call(|c| c.kv_set(&key, &value))
            .map(|_| ())
            .map_err(|e| store_problem(&format!("cannot set key {shown:?}"), &e, &store.socket))
    })
    .await?;
    Ok(Json(reply).into_response())
}

async fn kv_get(State(d): State<Data>, uri: Uri) -> Result<Response, Problem> {
    let store = d.store()?;
    let params = Params::of(&uri)?;
    let key = params.key()?;
    let timeout = params.timeout()?;
    let (view, lease) = blocking(move || {
        store.call(|c| c.kv_get(&key, timeout)).map_err(|e| {
            let what = format!("cannot get key {:?}", String::from_utf8_lossy(&key));
            store_problem(&what, &e, &store.socket)
        })
    })
    .await?;
    Ok(octets(view, lease))
}

async fn kv_del(State(d): State<Data>, uri: Uri) -> Result<Response, Problem> {
    let store = d.store()?;
    let key = Params::of(&uri)?.key()?;
    let shown = String::from_utf8_lossy(&key).into_owned();
    let reply = json!({"key": shown, "deleted": true});
    blocking(move || {
        store
            .call(|c| c.kv_del(&key))
            .map(|_| ())
            .map_err(|e| store_problem(&format!("cannot delete key {shown:?}"), &e, &store.socket))
    })
    .await?;
    Ok(Json(reply).into_response())
}

/// The `/datasystem/v1` routes, for the frontend. They carry no layers of their own: the
/// caller puts them through the same token check, body limit and metrics as every route.
pub fn routes(config: &RestConfig) -> Router {
    let store = config.data_socket.as_ref().map(|socket| {
        Arc::new(Store {
            socket: socket.clone(),
            idle: Mutex::new(Vec::new()),
        })
    });
    Router::new()
        .route("/datasystem/v1/obj/put", post(obj_put))
        .route("/datasystem/v1/obj/get", get(obj_get).post(obj_get))
        .route("/datasystem/v1/obj/del", post(obj_del).delete(obj_del))
        .route("/datasystem/v1/kv/set", post(kv_set))
        .route("/datasystem/v1/kv/get", get(kv_get).post(kv_get))
        .route("/datasystem/v1/kv/del", post(kv_del).delete(kv_del))
        .with_state(Data {
            store,
            max_body: config.max_body(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        let uri: Uri = format!("/x?{q}").parse().expect("uri");
        Params::of(&uri).unwrap_or_else(|_| panic!("query {q:?}"))
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let id = ObjectId::random(42);
        assert_eq!(params(&format!("id={id}")).id().ok().flatten(), Some(id));
        assert_eq!(params("").id().ok(), Some(None));
        for bad_id in ["2a", "zz", &"0".repeat(50), &format!("{id}0")] {
            let e = params(&format!("id={bad_id}")).id().expect_err("refused");
            assert!(
                e.detail.starts_with("id:") && e.code == 1001,
                "{}",
                e.detail
            );
        }
        assert!(params("")
            .required_id()
            .err()
            .is_some_and(|e| e.detail.contains("id")));
        assert_eq!(params("key=a%20b").key().ok(), Some(b"a b".to_vec()));
        for q in ["", "key=", &format!("key={}", "k".repeat(256))] {
            let e = params(q).key().expect_err("refused");
            assert!(e.detail.starts_with("key:"), "{}", e.detail);
        }
        assert!(params(&format!("key={}", "k".repeat(255))).key().is_ok());
        assert_eq!(params("").timeout().ok(), Some(Duration::ZERO));
        assert_eq!(
            params("timeoutMs=250").timeout().ok(),
            Some(Duration::from_millis(250))
        );
        for q in ["timeoutMs=-1", "timeoutMs=x", "timeoutMs=10001"] {
            let e = params(q).timeout().expect_err("refused");
            assert!(e.detail.starts_with("timeoutMs:"), "{}", e.detail);
        }
    }

    #[test]
    fn store_errors_map_to_statuses() {
        use yr_datastore::protocol::ErrorReply;
        let p = |code| {
            let e = yr_datastore::Error::Store(ErrorReply::new(code, "m"));
            let p = store_problem("w", &e, Path::new("/s"));
            (p.status.as_u16(), p.code)
        };
        assert_eq!(p(ErrorCode::NotFound), (404, 1003));
        assert_eq!(p(ErrorCode::TooLarge), (413, 4202));
        assert_eq!(p(ErrorCode::OutOfMemory), (507, 4204));
        assert_eq!(p(ErrorCode::ObjectLost), (410, 1003));
        let io = yr_datastore::Error::Io(std::io::Error::other("gone"));
        let p = store_problem("w", &io, Path::new("/s"));
        assert_eq!((p.status.as_u16(), p.code), (503, 3002));
        assert!(p.detail.contains("/s"));
    }
}
