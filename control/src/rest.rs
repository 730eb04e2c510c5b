//! The two HTTP services: the meta service (function management, default port 31182) and the
//! frontend (invocation, default port 8888), with openYuanrong's paths and response shapes.
//!
//! Both are thin: the meta service turns requests into the master's Deploy/List/Delete calls, the
//! frontend into an Invoke on this node's proxy. Neither keeps state of its own.
//!
//! Errors are RFC 9457 `application/problem+json` with openYuanrong's numeric `code` as an
//! extension member ([`problem`]: the one mapping from an error's kind to status and code); a
//! function's own error is not a platform error (code 2002, rendered by the frontend). Request
//! bodies are bounded ([`MAX_BODY`]).
//!
//! Layout: [`meta`] (function management), [`frontend`] (invocation), [`data`] (the
//! frontend's `/datasystem/v1` object and KV proxy to this node's data worker), [`metrics`]
//! (`/metrics`, Prometheus text format), [`openapi`] (each service's `/openapi.json`),
//! [`problem`] (errors); this module holds what all share: the access-token check, body limits,
//! function URNs and the server loop. Every route goes through [`finish`] (or, for routes merged
//! into a finished router, [`layers`]), so every route is counted, bounded and, but `/healthz`,
//! behind the token.
//!
//! The frontend calls its proxy through a [`frontend::Upstream`]: in the proxy's own process,
//! the proxy's [`crate::proxy::Invoker`], handed over by the process that hosts both
//! ([`BoundFrontend`]); the proxy knows nothing of this module.
//!
//! Security: every route but `/healthz` requires `Authorization: Bearer <token>` when the
//! service has a token (`yr start` always gives one); the comparison takes the same time
//! whatever the bytes. Given a certificate, both services speak HTTPS ([`https`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;

use crate::error::Error;
use crate::Shutdown;

pub mod data;
pub mod frontend;
pub mod https;
pub mod meta;
pub mod metrics;
pub mod openapi;
pub mod problem;

pub use problem::Problem;

/// Largest request body either service accepts by default (`--max-body`).
pub const MAX_BODY: usize = 64 << 20;

/// What both services run with.
#[derive(Clone, Debug, Default)]
pub struct RestConfig {
    /// The access token every route but `/healthz` requires; `None` leaves the service open
    /// (only for tests and explicit opt-out: `yr start` always sets one).
    pub token: Option<String>,
    /// Largest request body accepted (0: [`MAX_BODY`]).
    pub max_body: usize,
    /// This node's data worker socket (frontend only), behind `/datasystem/v1`; without one
    /// those routes answer 503.
    pub data_socket: Option<std::path::PathBuf>,
    /// The counters `/metrics` reports (clones share them).
    pub metrics: metrics::Metrics,
    /// Serve HTTPS with this config ([`https::server_config`]); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl RestConfig {
    fn max_body(&self) -> usize {
        if self.max_body == 0 {
            MAX_BODY
        } else {
            self.max_body
        }
    }
}

/// Reads a token file (one line; surrounding whitespace ignored), refusing an empty one.
pub fn read_token(path: &std::path::Path) -> Result<String, Error> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read the token file {}", path.display()), e))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(Error::invalid(
            "token_file",
            format!("the token file {} is empty", path.display()),
        ));
    }
    Ok(t)
}

/// Equality that takes the same time wherever the first difference is (the length is not secret).
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// Whether `authorization` (the header's value) carries `token`.
pub fn authorized(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(v) = authorization else {
        return false;
    };
    let Some(given) = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))
    else {
        return false;
    };
    same_bytes(given.trim_ascii(), token.as_bytes())
}

/// Why a request without the right token is refused, as the 401 the client sees.
fn unauthorized(given: Option<&[u8]>) -> Response {
    let detail = if given.is_none() {
        "this route needs `Authorization: Bearer <token>`; the token is in the file named by \
         token_file in the cluster's session.json"
    } else {
        "the access token is wrong"
    };
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, 1001, detail).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"yr\""),
    );
    r
}

/// What the outermost middleware needs: the service's metrics and, when it has one, its token.
#[derive(Clone)]
struct Gate {
    metrics: metrics::Metrics,
    token: Option<Arc<str>>,
}

/// The outermost middleware, one layer for two jobs (each axum middleware layer costs a boxed
/// service clone per request): checks the token on every route but `/healthz`, and times and
/// counts every response, refusals included.
async fn gate(State(g): State<Gate>, req: Request, next: Next) -> Response {
    let timer = metrics::Timer::start(&req);
    let resp = match &g.token {
        Some(token) if req.uri().path() != "/healthz" => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if authorized(given, token) {
                next.run(req).await
            } else {
                unauthorized(given)
            }
        }
        _ => next.run(req).await,
    };
    timer.record(&g.metrics, &resp);
    resp
}

/// Adds what every service shares: `/metrics`, then [`layers`].
pub(crate) fn finish(router: Router, config: &RestConfig) -> Router {
    let router = router.route(
        "/metrics",
        axum::routing::get(metrics::serve).with_state(config.metrics.clone()),
    );
    layers(router, config)
}

/// Wraps every route of `router` (and its fallback) in the body limit and the [`gate`]: the
/// token check, and the metrics that count refusals too.
pub(crate) fn layers(router: Router, config: &RestConfig) -> Router {
    let router = router.layer(axum::extract::DefaultBodyLimit::max(config.max_body()));
    let gate_state = Gate {
        metrics: config.metrics.clone(),
        token: config.token.as_deref().map(Arc::<str>::from),
    };
    router.layer(axum::middleware::from_fn_with_state(gate_state, gate))
}

/// A body that exceeded the limit (or broke off), as problem+json rather than axum's plain text.
pub(crate) fn body_or_problem(
    b: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, Problem> {
    b.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                status,
                1001,
                format!("the request body is over the limit: {e}"),
            )
        } else {
            Problem::new(status, 1001, format!("cannot read the request body: {e}"))
        }
    })
}
/// The tenant of every function until tenants exist.
pub const TENANT: &str = "default";

/// `sn:cn:yrk:{tenant}:function:{name}:{version}`.
pub fn urn(name: &str, version: &str) -> String {
    format!("sn:cn:yrk:{TENANT}:function:{name}:{version}")
}

/// The deployed name of a function's published version `n`: a frozen copy, invocable and
/// scaled on its own. Names ending in `@v<digits>` are therefore reserved.
pub fn version_name(name: &str, n: u32) -> String {
    format!("{name}@v{n}")
}

/// Splits a deployed name into the function's name and its published version, if any.
pub fn split_version(deployed: &str) -> (&str, Option<u32>) {
    if let Some((base, v)) = deployed.rsplit_once("@v") {
        if !base.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = v.parse() {
                return (base, Some(n));
            }
        }
    }
    (deployed, None)
}

/// The deployed function a URN names (its published version when the URN names a number), or
/// the argument itself if it is a plain name.
pub fn name_from_urn(s: &str) -> Result<String, Problem> {
    if !s.starts_with("sn:") {
        return Ok(s.to_string());
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        ["sn", _, _, _, "function", name] | ["sn", _, _, _, "function", name, "latest" | ""] => {
            Ok(name.to_string())
        }
        ["sn", _, _, _, "function", name, version] => match version.parse::<u32>() {
            Ok(n) => Ok(version_name(name, n)),
            Err(_) => Err(Problem::bad_request(format!(
                "functionVersionURN {s:?}: version {version:?} is neither latest nor a number"
            ))),
        },
        _ => Err(Problem::bad_request(format!(
            "functionVersionURN {s:?} is not sn:cn:yrk:TENANT:function:NAME:VERSION"
        ))),
    }
}

pub(crate) fn parse_body(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, 1001, "no such route")
}

/// Binds `listen`, saying which port could not be had.
async fn bind(listen: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {listen}"), e))
}

async fn serve(
    listen: std::net::SocketAddr,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    let listener = bind(listen).await?;
    on_ready(
        listener
            .local_addr()
            .map_err(|e| Error::io(format!("the address bound for {listen}"), e))?,
    );
    serve_listener(listener, router, tls, shutdown).await
}

async fn serve_listener(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    if let Some(config) = tls {
        let listener = https::TlsListener::new(listener, config)
            .map_err(|e| Error::io("the HTTPS listener", e))?;
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.wait_owned())
            .await
            .map_err(|e| Error::io("serving HTTPS", e));
    }
    // Small replies must not wait for the client's delayed ACK (see `crate::incoming`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait_owned())
        .await
        .map_err(|e| Error::io("serving HTTP", e))
}

/// Runs the meta service until `shutdown`.
pub async fn run_meta(
    listen: std::net::SocketAddr,
    master_address: &str,
    config: RestConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    let master = MasterClient::new(crate::master_channel(master_address)?);
    let tls = config.tls.clone();
    serve(
        listen,
        meta::router(master, &config),
        tls,
        shutdown,
        on_ready,
    )
    .await
}

/// HTTP/2 connections from a separate frontend to its proxy (measured: one connection's task
/// is the frontend's busiest lock under load).
const PROXY_CONNECTIONS: usize = 4;

/// Largest call or reply between the frontend and its proxy (the proxy's own limit).
const MAX_MESSAGE: usize = yr_proto::frame::MAX_PAYLOAD;

/// The frontend's whole router (invocation, data routes, shared layers) over `upstream`.
pub fn frontend_app(upstream: frontend::Upstream, config: &RestConfig) -> Router {
    layers(data::routes(config), config).merge(frontend::router(upstream, config))
}

/// Runs a frontend of its own until `shutdown`, calling the proxy at `proxy_address`.
pub async fn run_frontend(
    listen: std::net::SocketAddr,
    proxy_address: &str,
    config: RestConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Error> {
    let proxies = (0..PROXY_CONNECTIONS)
        .map(|_| {
            let channel = crate::channel(proxy_address)?;
            Ok(ProxyClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let app = frontend_app(frontend::Upstream::grpc(proxies), &config);
    serve(listen, app, config.tls.clone(), shutdown, on_ready).await
}

/// A frontend whose port is bound but which does not serve yet: for a process that hosts the
/// frontend beside its proxy. It binds before the process announces readiness (so a busy port
/// fails the start) and serves once the proxy's [`crate::proxy::Invoker`] exists.
pub struct BoundFrontend {
    listener: tokio::net::TcpListener,
    config: RestConfig,
}

impl BoundFrontend {
    pub async fn bind(listen: std::net::SocketAddr, config: RestConfig) -> Result<Self, Error> {
        Ok(BoundFrontend {
            listener: bind(listen).await?,
            config,
        })
    }

    /// Serves until `shutdown`, calling through `upstream`.
    pub async fn serve(
        self,
        upstream: frontend::Upstream,
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        serve_listener(
            self.listener,
            frontend_app(upstream, &self.config),
            self.config.tls.clone(),
            shutdown,
        )
        .await
    }

    /// Serves on a task of its own until `shutdown`, calling through `upstream`; an error that
    /// stops it is logged.
    pub fn spawn(self, upstream: frontend::Upstream, shutdown: Shutdown) {
        tokio::spawn(async move {
            if let Err(e) = self.serve(upstream, shutdown).await {
                tracing::error!("frontend stopped: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns() {
        assert_eq!(
            urn("0@svc@hello", "latest"),
            "sn:cn:yrk:default:function:0@svc@hello:latest"
        );
        assert_eq!(
            name_from_urn("sn:cn:yrk:default:function:0@svc@hello:latest")
                .ok()
                .as_deref(),
            Some("0@svc@hello")
        );
        assert_eq!(name_from_urn("hello").ok().as_deref(), Some("hello"));
        assert_eq!(
            name_from_urn("sn:cn:yrk:default:function:0@svc@hello:3")
                .ok()
                .as_deref(),
            Some("0@svc@hello@v3")
        );
        assert!(name_from_urn("sn:cn:yrk:default:function:f:beta").is_err());
        assert_eq!(split_version("0@svc@hello@v3"), ("0@svc@hello", Some(3)));
        assert_eq!(split_version("0@svc@hello"), ("0@svc@hello", None));
        assert_eq!(split_version("a@vx"), ("a@vx", None));
        assert!(name_from_urn("sn:cn:yrk:x").is_err());
    }

    #[test]
    fn bearer_tokens() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(authorized(Some(b"Bearer  s3cret "), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cres"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cret2"), "s3cret"));
        assert!(!authorized(Some(b"Basic s3cret"), "s3cret"));
        assert!(!authorized(Some(b"s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some(b"Bearer "), "s3cret"));
    }
}
