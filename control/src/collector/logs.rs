//! Instance logs: `GET /v1/instances/{id}/logs?stream=stdout|stderr&tail=BYTES|offset=N
//! [&follow=true]`, read from the agent's instance folders (`<work_dir>/instances/<id>/
//! stdout.log` and `stderr.log`).
//!
//! Invariants: the instance ID passes the project's one path-name rule before it becomes a
//! path (so it never leaves `instances/`); one read returns at most [`MAX_READ`] bytes; a
//! follow streams what is appended until the client goes, the collector stops or
//! [`FOLLOW_FOR`] passes, and at most [`MAX_FOLLOWERS`] follows run at once (beyond: 429).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::api::LOG_END_HEADER;
use crate::rest::Problem;
use crate::Shutdown;

/// Most bytes one read (a tail, an offset read, a chunk of a follow) returns.
pub const MAX_READ: u64 = 4 << 20;
/// The tail returned when neither `tail` nor `offset` is given.
pub const DEFAULT_TAIL: u64 = 64 << 10;
/// How long a follow lasts at most (the client reconnects with `offset` to go on).
pub const FOLLOW_FOR: Duration = Duration::from_secs(3600);
/// Follows at once.
pub const MAX_FOLLOWERS: usize = 64;
/// How often a follow looks for appended bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The query of a logs request, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    pub stream: Option<String>,
    pub tail: Option<String>,
    pub offset: Option<String>,
    pub follow: Option<String>,
}

/// A logs request, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct LogRequest {
    /// `stdout.log` or `stderr.log`.
    pub file: &'static str,
    /// Where to start: `Err(n)`: the last `n` bytes; `Ok(n)`: from byte `n`.
    pub from: Result<u64, u64>,
    pub follow: bool,
}

/// Checks a logs request's query; the error names the parameter.
pub fn parse(q: &LogQuery) -> Result<LogRequest, String> {
    let file = match q.stream.as_deref().unwrap_or("stdout") {
        "stdout" => "stdout.log",
        "stderr" => "stderr.log",
        other => return Err(format!("stream {other:?} must be stdout or stderr")),
    };
    let number = |name: &str, v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{name} {v:?} is not a number of bytes"))
    };
    let from = match (&q.tail, &q.offset) {
        (Some(_), Some(_)) => return Err("give tail or offset, not both".into()),
        (Some(t), None) => Err(number("tail", t)?.min(MAX_READ)),
        (None, Some(o)) => Ok(number("offset", o)?),
        (None, None) => Err(DEFAULT_TAIL),
    };
    let follow = match q.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => return Err(format!("follow {other:?} must be true or false")),
    };
    Ok(LogRequest { file, from, follow })
}

/// The start and end of the bytes to return from a file of `len` bytes.
pub fn window(from: Result<u64, u64>, len: u64) -> (u64, u64) {
    let start = match from {
        Err(tail) => len.saturating_sub(tail),
        Ok(offset) => offset.min(len),
    };
    (start, len.min(start.saturating_add(MAX_READ)))
}

async fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::Start(start)).await?;
    let mut buf = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    f.take(end - start).read_to_end(&mut buf).await?;
    Ok(buf)
}

async fn length(path: &Path) -> std::io::Result<u64> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        // Not written yet: an instance that printed nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// What the logs route needs.
#[derive(Clone)]
pub struct Logs {
    pub instances_dir: PathBuf,
    pub node_id: String,
    pub followers: Arc<tokio::sync::Semaphore>,
    pub shutdown: Shutdown,
}

impl Logs {
    pub fn new(work_dir: &Path, node_id: &str, shutdown: Shutdown) -> Logs {
        Logs {
            instances_dir: work_dir.join("instances"),
            node_id: node_id.to_string(),
            followers: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWERS)),
            shutdown,
        }
    }

    /// Answers one request.
    pub async fn serve(&self, id: &str, q: &LogQuery) -> Response {
        if let Err(e) = crate::function::check_path_name("id", id) {
            return Problem::bad_request(e.to_string()).into_response();
        }
        let req = match parse(q) {
            Ok(r) => r,
            Err(e) => return Problem::bad_request(e).into_response(),
        };
        let folder = self.instances_dir.join(id);
        if !tokio::fs::metadata(&folder).await.is_ok_and(|m| m.is_dir()) {
            return Problem::new(
                StatusCode::NOT_FOUND,
                1015,
                format!(
                    "instance {id} has no logs on node {}: it never ran here (ask the \
                     collector of the node that runs it)",
                    self.node_id
                ),
            )
            .into_response();
        }
        let path = folder.join(req.file);
        let failed = |e: std::io::Error| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                3003,
                format!("cannot read {}: {e}", path.display()),
            )
            .into_response()
        };
        let len = match length(&path).await {
            Ok(l) => l,
            Err(e) => return failed(e),
        };
        let (start, end) = window(req.from, len);
        let first = match read_range(&path, start, end).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return failed(e),
        };
        let end = start + first.len() as u64;
        let mut resp = if req.follow {
            let Ok(permit) = Arc::clone(&self.followers).try_acquire_owned() else {
                return Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    1005,
                    format!("{MAX_FOLLOWERS} logs are followed already; try again later"),
                )
                .into_response();
            };
            Body::from_stream(follow(
                path.clone(),
                first,
                end,
                self.shutdown.clone(),
                permit,
            ))
            .into_response()
        } else {
            first.into_response()
        };
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&end.to_string()) {
            h.insert(LOG_END_HEADER, v);
        }
        resp
    }
}

/// The bytes of a follow: `first`, then what is appended from `pos` on, until the body is
/// dropped (the client went), `shutdown` or [`FOLLOW_FOR`]. A file that shrank (rewritten by
/// a restart) is followed again from its start.
fn follow(
    path: PathBuf,
    first: Vec<u8>,
    pos: u64,
    shutdown: Shutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let state = (path, Some(first), pos, shutdown, permit);
    futures::stream::unfold(
        state,
        move |(path, first, mut pos, shutdown, permit)| async move {
            if let Some(b) = first.filter(|b| !b.is_empty()) {
                return Some((Ok(b), (path, None, pos, shutdown, permit)));
            }
            loop {
                if shutdown.is_set() || tokio::time::Instant::now() >= deadline {
                    return None;
                }
                let len = length(&path).await.unwrap_or(pos);
                if len < pos {
                    pos = 0;
                }
                if len > pos {
                    let end = len.min(pos + MAX_READ);
                    match read_range(&path, pos, end).await {
                        Ok(b) if !b.is_empty() => {
                            pos += b.len() as u64;
                            return Some((Ok(b), (path, None, pos, shutdown, permit)));
                        }
                        Ok(_) => {}
                        Err(e) => return Some((Err(e), (path, None, pos, shutdown, permit))),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = shutdown.wait() => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(
        stream: Option<&str>,
        tail: Option<&str>,
        offset: Option<&str>,
        follow: Option<&str>,
    ) -> LogQuery {
        LogQuery {
            stream: stream.map(Into::into),
            tail: tail.map(Into::into),
            offset: offset.map(Into::into),
            follow: follow.map(Into::into),
        }
    }

    #[test]
    fn queries_are_checked() {
        let r = parse(&q(None, None, None, None)).expect("defaults");
        assert_eq!(
            r,
            LogRequest {
                file: "stdout.log",
                from: Err(DEFAULT_TAIL),
                follow: false
            }
        );
        let r = parse(&q(Some("stderr"), None, Some("10"), Some("true"))).expect("valid");
        assert_eq!(
            r,
            LogRequest {
                file: "stderr.log",
                from: Ok(10),
                follow: true
            }
        );
        assert_eq!(
            parse(&q(None, Some("99999999999"), None, None)).map(|r| r.from),
            Ok(Err(MAX_READ))
        );
        for bad in [
            q(Some("stdin"), None, None, None),
            q(None, Some("x"), None, None),
            q(None, Some("1"), Some("1"), None),
            q(None, None, Some("-1"), None),
            q(None, None, None, Some("maybe")),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn windows_are_bounded() {
        assert_eq!(window(Err(10), 100), (90, 100));
        assert_eq!(window(Err(1000), 100), (0, 100));
        assert_eq!(window(Ok(40), 100), (40, 100));
        assert_eq!(window(Ok(400), 100), (100, 100));
        assert_eq!(window(Ok(0), MAX_READ * 3), (0, MAX_READ));
    }

    #[tokio::test]
    async fn logs_are_read_by_instance_and_unknown_ones_are_404() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("instances").join("f-1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("stdout.log"), b"hello\nworld\n").expect("write");
        let logs = Logs::new(tmp.path(), "n1", Shutdown::new());
        let r = logs.serve("f-1", &q(None, Some("6"), None, None)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()
                .get(LOG_END_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("12")
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(&body[..], b"world\n");
        let r = logs
            .serve("f-1", &q(Some("stderr"), None, None, None))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "nothing printed yet is empty, not missing"
        );
        assert_eq!(
            logs.serve("f-2", &q(None, None, None, None)).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            logs.serve("..", &q(None, None, None, None)).await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            logs.serve("a/b", &q(None, None, None, None)).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn a_follow_streams_what_is_appended_and_ends_with_the_collector() {
        use futures::StreamExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("instances").join("f-1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("stdout.log");
        std::fs::write(&path, b"one\n").expect("write");
        let shutdown = Shutdown::new();
        let logs = Logs::new(tmp.path(), "n1", shutdown.clone());
        let r = logs
            .serve("f-1", &q(None, None, Some("0"), Some("true")))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut body = r.into_body().into_data_stream();
        async fn next(
            b: &mut axum::body::BodyDataStream,
        ) -> Option<Result<axum::body::Bytes, axum::Error>> {
            tokio::time::timeout(Duration::from_secs(10), b.next())
                .await
                .expect("a chunk within 10 s")
        }
        let first = next(&mut body).await.expect("a chunk").expect("bytes");
        assert_eq!(&first[..], b"one\n");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(b"two\n").expect("append");
        }
        let second = next(&mut body).await.expect("a chunk").expect("bytes");
        assert_eq!(&second[..], b"two\n");
        // Followers are counted until their stream ends.
        assert_eq!(logs.followers.available_permits(), MAX_FOLLOWERS - 1);
        shutdown.trigger();
        assert!(
            next(&mut body).await.is_none(),
            "the stream ends at shutdown"
        );
        drop(body);
        assert_eq!(logs.followers.available_permits(), MAX_FOLLOWERS);
    }
}
