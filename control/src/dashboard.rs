//! The dashboard (master nodes, `yr component dashboard`, default port 9080): the cluster's web
//! page and the JSON behind it.
//!
//! An aggregator task, every [`REFRESH`], asks the master for its Status (gRPC over the node's
//! mutual TLS) and every collector registered under etcd's `/yr/collectors/` for a snapshot of
//! what it sampled since the last one (HTTP, behind the collector token), merges each node's
//! history ([`aggregate`]) and keeps the view the page reads ([`view`]). Requests never wait for
//! the outside: they read the last view. Instance logs are the exception: `/api/instances/{id}/
//! logs` asks the instance's node's collector, within a deadline.
//!
//! Routes: `/healthz`, `/` (the page), `/app.js`, `/style.css` and the login routes are open;
//! everything else needs the cluster's REST token ([`auth`]: bearer, session cookie, or a
//! one-time login code). The page's assets are compiled in (`assets/`), nothing is fetched from
//! elsewhere at run time.
//!
//! Invariants: every call out (master, etcd, collectors) has a deadline, so a source that hangs
//! makes the view stale, never the server; a source that fails is shown as such in the view
//! (`sources`, each node's `collector`), with the last figures it gave.

pub mod aggregate;
pub mod auth;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use crate::collector::api;
use crate::error::Error;
use crate::http_client as client;
use crate::Shutdown;
use aggregate::NodeHistory;
use view::MasterView;

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Deadline of one call to the master, etcd or a collector.
const CALL_DEADLINE: Duration = Duration::from_secs(3);
/// Largest snapshot read from a collector.
const MAX_SNAPSHOT: usize = 32 << 20;
/// Largest piece of a log returned by one poll.
const MAX_LOG_PIECE: usize = 256 << 10;
/// How much of a log the first poll shows.
const LOG_TAIL: usize = 64 << 10;

/// What the dashboard runs with.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    pub listen: std::net::SocketAddr,
    pub etcd_endpoints: Vec<String>,
    /// Every master, comma-separated (the active one is found).
    pub master_address: String,
    /// The REST token every route but the open ones requires; `None` leaves it open (tests).
    pub token: Option<String>,
    /// What the collectors require (`api::token` of the cluster secret).
    pub collector_token: Option<String>,
    /// Serve HTTPS with this config; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The view and what it is made from.
#[derive(Default)]
struct Aggregate {
    master: MasterView,
    nodes: BTreeMap<String, NodeHistory>,
    etcd_error: Option<String>,
    view: serde_json::Value,
}

#[derive(Clone)]
struct App {
    agg: Arc<parking::RwLock<Aggregate>>,
    logins: Arc<parking::Mutex<auth::Logins>>,
    token: Option<Arc<str>>,
    collector_token: Option<Arc<str>>,
    secure: bool,
}

/// std locks, poison ignored: a panicking holder cannot leave these tables half-written in a
/// way that matters (each write replaces whole values).
mod parking {
    pub struct RwLock<T>(std::sync::RwLock<T>);
    impl<T: Default> Default for RwLock<T> {
        fn default() -> Self {
            RwLock(std::sync::RwLock::new(T::default()))
        }
    }
    impl<T> RwLock<T> {
        pub fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
    }
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex(std::sync::Mutex::new(T::default()))
        }
    }
    impl<T> Mutex<T> {
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

fn now_ms() -> u64 {
    crate::etcd::now_ms()
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Runs the dashboard until `shutdown`; `on_ready` gets the bound address.
pub async fn run(
    config: DashboardConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("the dashboard's bound address", e))?;
    let app = App {
        agg: Arc::default(),
        logins: Arc::default(),
        token: config.token.as_deref().map(Arc::from),
        collector_token: config.collector_token.as_deref().map(Arc::from),
        secure: config.tls.is_some(),
    };
    {
        let mut a = app.agg.write();
        a.view = view::state(&a.master, &a.nodes, None, 0);
    }
    tokio::spawn(aggregator(config.clone(), app.clone(), shutdown.clone()));
    let router = router(app);
    on_ready(bound);
    if let Some(tls) = config.tls.clone() {
        let listener = crate::rest::https::TlsListener::new(listener, tls)
            .map_err(|e| Error::io("the HTTPS listener", e))?;
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.wait_owned())
            .await
            .map_err(|e| Error::io("serving HTTPS", e));
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait_owned())
        .await
        .map_err(|e| Error::io("serving HTTP", e))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/login", get(login_with_code))
        .route("/api/login", post(login_with_token))
        .route("/api/logout", post(logout))
        .route("/api/state", get(state))
        .route("/api/nodes/{id}/history", get(history))
        .route("/api/instances/{id}/logs", get(logs))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route\n") })
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
        .layer(axum::middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app)
}

/// Routes anyone may reach: liveness, the page and its assets, and the ways to log in.
fn open_route(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/" | "/index.html" | "/app.js" | "/style.css" | "/login" | "/api/login"
    )
}

/// Lets a request through if its route is open or it proves the REST token.
async fn gate(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(token) = app.token.clone() else {
        return next.run(req).await;
    };
    if open_route(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if crate::rest::authorized(bearer, &token) {
        return next.run(req).await;
    }
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .find_map(|v| auth::session_cookie(v.as_bytes()));
    if let Some(id) = cookie {
        if app.logins.lock().session_valid(id, now_secs()) {
            return next.run(req).await;
        }
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({
            "error": "log in: post the cluster's REST token to /api/login, open the URL \
                      `yr dashboard` prints, or send Authorization: Bearer TOKEN"
        })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"yr dashboard\""),
    );
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    let mut r = asset(
        "text/html; charset=utf-8",
        include_str!("dashboard/assets/index.html"),
    );
    // The page runs only its own script and style, and may not be framed.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'",
        ),
    );
    r
}

async fn app_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/app.js"),
    )
}

async fn style_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("dashboard/assets/style.css"),
    )
}

fn with_session(app: &App, mut r: Response) -> Response {
    let id = app.logins.lock().open_session(now_secs());
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&id, app.secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CodeQuery {
    #[serde(default)]
    code: String,
}

/// `GET /login?code=CODE`: a one-time code for a session cookie, then the page.
async fn login_with_code(State(app): State<App>, Query(q): Query<CodeQuery>) -> Response {
    let Some(token) = app.token.clone() else {
        return axum::response::Redirect::to("/#/overview").into_response();
    };
    let redeemed = app.logins.lock().redeem(&token, &q.code, now_secs());
    match redeemed {
        Ok(()) => with_session(
            &app,
            axum::response::Redirect::to("/#/overview").into_response(),
        ),
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!doctype html><meta charset=utf-8><title>yr dashboard</title>\
                 <p>{e}.</p><p><a href=\"/\">Log in with the token</a></p>\n"
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    token: String,
}

/// `POST /api/login` with `{"token": "..."}` (or a form's `token=...`): a session cookie.
async fn login_with_token(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let given = serde_json::from_slice::<TokenBody>(&body)
        .map(|b| b.token)
        .or_else(|_| serde_urlencoded_token(&body).ok_or(()))
        .unwrap_or_default();
    let ok = match &app.token {
        Some(t) => auth::same_bytes(given.trim().as_bytes(), t.as_bytes()),
        None => true,
    };
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "the token is wrong"})),
        )
            .into_response();
    }
    with_session(&app, StatusCode::NO_CONTENT.into_response())
}

/// The `token` field of a form body (`application/x-www-form-urlencoded`).
fn serde_urlencoded_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let v = text.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some(percent_decode(&v.replace('+', " ")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(x) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn logout() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
        auth::COOKIE
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn state(State(app): State<App>) -> Response {
    let v = app.agg.read().view.clone();
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
}

#[derive(Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
}

async fn history(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    let a = app.agg.read();
    match a.nodes.get(&id) {
        Some(h) => axum::Json(view::history(h, q.since)).into_response(),
        None if a.master.status.as_ref().is_some_and(|s| {
            s.nodes.iter().any(|n| n.node_id == id) || s.dead_nodes.contains(&id)
        }) =>
        {
            axum::Json(json!({"node_id": id, "samples": []})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no node {id}")})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
}

/// `GET /api/instances/{id}/logs?stream=stdout|stderr[&offset=N]`: new text of an instance's
/// output from its node's collector, and the offset of the next poll (without `offset`: the
/// log's last part).
async fn logs(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "stream is stdout or stderr"})),
        )
            .into_response();
    }
    let target = {
        let a = app.agg.read();
        let node = a.master.status.as_ref().and_then(|s| {
            s.instances
                .iter()
                .find(|i| i.instance_id == id)
                .map(|i| i.node_id.clone())
        });
        node.map(|n| (n.clone(), a.nodes.get(&n).map(|h| h.url.clone())))
    };
    let url = match target {
        None => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": format!("no instance {id}")})),
            )
                .into_response()
        }
        Some((node, None)) => {
            return (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"error": format!("node {node} has no collector registered")})),
            )
                .into_response()
        }
        Some((_, Some(url))) => url,
    };
    let path = api::LOGS.replace("{id}", &client::encode(&id));
    let query = match q.offset {
        Some(o) => format!("{path}?stream={stream}&offset={o}"),
        None => format!("{path}?stream={stream}&tail={LOG_TAIL}"),
    };
    let reply = client::get(
        &url,
        &query,
        app.collector_token.as_deref(),
        CALL_DEADLINE,
        MAX_LOG_PIECE,
    )
    .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, axum::Json(json!({"error": e}))).into_response()
        }
    };
    if reply.status != 200 {
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (
            if status == StatusCode::UNAUTHORIZED {
                StatusCode::BAD_GATEWAY
            } else {
                status
            },
            axum::Json(
                json!({"error": format!("the collector answered {}: {text}", reply.status)}),
            ),
        )
            .into_response();
    }
    let end: Option<u64> = reply
        .headers
        .get(api::LOG_END_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (text, next) = log_piece(&reply.body, reply.cut, q.offset, end);
    axum::Json(json!({"instance_id": id, "stream": stream, "text": text, "next_offset": next}))
        .into_response()
}

/// The text of a log piece and the offset to poll from next. A piece that ends inside a UTF-8
/// character stops before it (the next poll reads it whole); a cut piece continues after its
/// bytes; a whole piece continues at the end the collector reported.
fn log_piece(body: &[u8], cut: bool, offset: Option<u64>, end: Option<u64>) -> (String, u64) {
    let usable = match std::str::from_utf8(body) {
        Ok(_) => body.len(),
        // Incomplete at the end: leave those bytes for the next poll.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => body.len(),
    };
    let text = String::from_utf8_lossy(&body[..usable]).into_owned();
    let next = match (offset, end) {
        (Some(o), _) if cut || usable < body.len() => o + usable as u64,
        (Some(o), None) => o + usable as u64,
        (Some(o), Some(e)) => e.max(o + usable as u64),
        (None, Some(e)) => e.saturating_sub((body.len() - usable) as u64),
        (None, None) => usable as u64,
    };
    (text, next)
}

/// Refreshes the view every [`REFRESH`] until `shutdown`.
async fn aggregator(config: DashboardConfig, app: App, shutdown: Shutdown) {
    let channel = match crate::master_channel(&config.master_address) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("the dashboard cannot reach the master: {e}");
            app.agg.write().master.error = Some(e.to_string());
            None
        }
    };
    let mut meta: Option<crate::etcd::Meta> = None;
    let mut following = false;
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        if meta.is_none() {
            match tokio::time::timeout(
                CALL_DEADLINE,
                crate::etcd::Meta::connect(&config.etcd_endpoints),
            )
            .await
            {
                Ok(Ok(m)) => meta = Some(m),
                Ok(Err(e)) => app.agg.write().etcd_error = Some(e.to_string()),
                Err(_) => {
                    app.agg.write().etcd_error = Some(format!(
                        "etcd ({}) did not answer within {} s",
                        config.etcd_endpoints.join(","),
                        CALL_DEADLINE.as_secs()
                    ))
                }
            }
        }
        if let (Some(m), Some(c), false) = (&meta, &channel, following) {
            crate::follow_masters(m.clone(), c.clone());
            following = true;
        }
        let status = async {
            let c = channel.clone()?;
            let mut client = yr_proto::master_client::MasterClient::new(c.clone());
            Some(
                match tokio::time::timeout(CALL_DEADLINE, client.status(yr_proto::Empty {})).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(e)) => Err(format!("the master's Status failed: {}", e.message())),
                    Err(_) => {
                        // A paused master accepts but never answers: try the next one.
                        c.fail_current().await;
                        Err(format!(
                            "the master did not answer within {} s",
                            CALL_DEADLINE.as_secs()
                        ))
                    }
                },
            )
        };
        let collectors = async {
            let m = meta.as_ref()?;
            Some(list_collectors(m).await)
        };
        let (status, collectors) = tokio::join!(status, collectors);
        let collectors = match collectors {
            Some(Ok(c)) => {
                app.agg.write().etcd_error = None;
                Some(c)
            }
            Some(Err(e)) => {
                app.agg.write().etcd_error = Some(e);
                None
            }
            None => None,
        };
        let snapshots = match &collectors {
            Some(list) => {
                let since: BTreeMap<String, Option<u64>> = {
                    let a = app.agg.read();
                    list.iter()
                        .map(|(n, _)| (n.clone(), a.nodes.get(n).and_then(NodeHistory::since)))
                        .collect()
                };
                let token = app.collector_token.clone();
                futures::future::join_all(list.iter().map(|(node, url)| {
                    let since = since.get(node).copied().flatten();
                    let token = token.clone();
                    async move {
                        let r = fetch_snapshot(url, since, token.as_deref()).await;
                        (node.clone(), url.clone(), r)
                    }
                }))
                .await
            }
            None => Vec::new(),
        };
        let now = now_ms();
        let mut a = app.agg.write();
        match status {
            Some(Ok(st)) => {
                a.master.status = Some(st);
                a.master.last_ok_unix_ms = now;
                a.master.error = None;
            }
            Some(Err(e)) => a.master.error = Some(e),
            None => {}
        }
        if let Some(list) = &collectors {
            // Collectors whose registration lapsed are dropped, with their history.
            a.nodes.retain(|n, _| list.iter().any(|(m, _)| m == n));
        }
        for (node, url, r) in snapshots {
            let h = a
                .nodes
                .entry(node.clone())
                .or_insert_with(|| NodeHistory::new(&node, &url));
            h.url = url;
            match r {
                Ok(s) => h.merge(s, now),
                Err(e) => h.failed(e),
            }
        }
        let v = view::state(&a.master, &a.nodes, a.etcd_error.as_deref(), now);
        a.view = v;
    }
}

/// Every registered collector: (node id, URL).
async fn list_collectors(meta: &crate::etcd::Meta) -> Result<Vec<(String, String)>, String> {
    let mut client = meta.client();
    let get = client.get(
        crate::etcd::COLLECTORS,
        Some(etcd_client::GetOptions::new().with_prefix()),
    );
    let r = tokio::time::timeout(CALL_DEADLINE, get)
        .await
        .map_err(|_| format!("etcd did not answer within {} s", CALL_DEADLINE.as_secs()))?
        .map_err(|e| format!("cannot list the collectors in etcd: {e}"))?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let node = key.strip_prefix(crate::etcd::COLLECTORS)?.to_string();
            let url = String::from_utf8_lossy(kv.value()).trim().to_string();
            (!node.is_empty() && !url.is_empty()).then_some((node, url))
        })
        .collect())
}

async fn fetch_snapshot(
    url: &str,
    since: Option<u64>,
    token: Option<&str>,
) -> Result<api::Snapshot, String> {
    let path = match since {
        Some(s) => format!("{}?since={s}", api::SNAPSHOT),
        None => api::SNAPSHOT.to_string(),
    };
    let r = client::get(url, &path, token, CALL_DEADLINE, MAX_SNAPSHOT).await?;
    if r.status != 200 {
        return Err(format!(
            "the collector at {url} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    if r.cut {
        return Err(format!(
            "the collector at {url} sent a snapshot over {} MiB",
            MAX_SNAPSHOT >> 20
        ));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| format!("the collector at {url} sent a snapshot that does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_pieces_advance_the_offset() {
        // First poll (a tail): continue at the reported end.
        assert_eq!(log_piece(b"abc", false, None, Some(10)), ("abc".into(), 10));
        // A whole piece from an offset.
        assert_eq!(
            log_piece(b"de", false, Some(10), Some(12)),
            ("de".into(), 12)
        );
        // Cut by the cap: continue right after what was read.
        assert_eq!(
            log_piece(b"xyz", true, Some(12), Some(100)),
            ("xyz".into(), 15)
        );
        // Ending inside a character: stop before it.
        let e_acute = "é".as_bytes();
        let body = [b"ab".as_slice(), &e_acute[..1]].concat();
        assert_eq!(log_piece(&body, false, Some(0), Some(3)), ("ab".into(), 2));
        assert_eq!(log_piece(&body, false, None, Some(3)), ("ab".into(), 2));
    }

    #[test]
    fn forms_carry_the_token() {
        assert_eq!(
            serde_urlencoded_token(b"token=a%2Bb+c").as_deref(),
            Some("a+b c")
        );
        assert_eq!(serde_urlencoded_token(b"x=1"), None);
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn only_the_page_and_login_are_open() {
        for p in [
            "/healthz",
            "/",
            "/app.js",
            "/style.css",
            "/login",
            "/api/login",
        ] {
            assert!(open_route(p), "{p}");
        }
        for p in [
            "/api/state",
            "/api/nodes/x/history",
            "/api/instances/i/logs",
            "/x",
        ] {
            assert!(!open_route(p), "{p}");
        }
    }
}
