//! The frontend: invocation over HTTP, at openYuanrong's paths and at the AWS Lambda and OpenFaaS
//! aliases users bring, through this node's proxy ([`Upstream`]: the proxy's in-process
//! [`Invoker`] when the proxy's process hosts the frontend, else the proxy over gRPC).
//!
//! Routes (all but `/healthz` need the token, see [`super`]):
//! - `POST /serverless/v1/functions/{urn}/invocations` and
//!   `POST /invocations/{tenant}/{namespace}/{function}/`: the function's reply (200), or its own
//!   error (500, `{"code":2002,"functionError":true}`), or a platform error as problem+json.
//!   With `X-Invoke-Type: async` (any case) the answer is 202 at once, with `X-Request-Id`,
//!   `Location: /serverless/v1/functions/async-results/<id>` and `{"requestId","status":"pending"}`;
//!   the call runs on a task of its own ([`results`]).
//! - `GET /serverless/v1/functions/async-results/{request-id}` ([`results`]).
//! - AWS Lambda ([`lambda`]) and OpenFaaS ([`openfaas`]) aliases.
//! - `X-Instance-Session` on any call route keeps a session's calls on one instance
//!   ([`sessions`]).
//!
//! This module holds the call path every route shares: validate the call ([`prepare`]), send it
//! through the upstream, render the reply in the route's convention ([`Style`]). A platform
//! error goes through the one mapping of error kinds ([`Problem::from_kind`]); a function's own
//! error is rendered here; a proxy that does not answer is 502 (code 3002).
//!
//! Function names: a URN, alias or qualifier is resolved to the deployed function's name first;
//! that name must then pass the master's rule, [`crate::function::check_name`] (400, code 1001).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

use super::{body_or_problem, finish, healthz, name_from_urn, not_found, Problem, RestConfig};
use crate::proxy::Invoker;

mod lambda;
mod openfaas;
mod results;
mod sessions;

use results::{Results, RESULT_LIMITS};
use sessions::{SessionHeader, Sessions, MAX_SESSIONS};

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// Where calls go: the proxy in this process when the frontend runs inside it (measured: the
/// gRPC hop to a separate proxy is a third of the frontend's CPU per call), else a proxy over
/// gRPC on several connections taken in turn (one HTTP/2 connection's task is the busiest lock
/// under load).
#[derive(Clone)]
pub enum Upstream {
    /// The proxy of this process.
    Local(Invoker),
    /// Proxy connections.
    Grpc(
        Arc<[ProxyClient<tonic::transport::Channel>]>,
        Arc<std::sync::atomic::AtomicUsize>,
    ),
}

impl From<Invoker> for Upstream {
    fn from(i: Invoker) -> Upstream {
        Upstream::Local(i)
    }
}

impl Upstream {
    /// Connections to the proxy at `address`.
    pub fn grpc(proxies: Vec<ProxyClient<tonic::transport::Channel>>) -> Upstream {
        Upstream::Grpc(proxies.into(), Arc::default())
    }

    /// The proxy's reply; a problem only when the proxy did not answer at all.
    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeReply, Problem> {
        match self {
            // Boxed: the proxy's call future is large (it can forward, start an instance and
            // wait), and inlining it into every request's handler future made each request move it
            // (measured beside the code before the split: rest_vs_bare 7% lower inline, equal
            // boxed).
            Upstream::Local(proxy) => Ok(Box::pin(proxy.invoke(req)).await),
            Upstream::Grpc(proxies, next) => {
                if proxies.is_empty() {
                    return Err(Problem::upstream("proxy: no proxy connection"));
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut p = proxies[i % proxies.len()].clone();
                match p.invoke(req).await {
                    Ok(r) => Ok(r.into_inner()),
                    Err(e) => Err(Problem::upstream(format!("proxy: {}", e.message()))),
                }
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

/// One call, validated, ready to go to the proxy.
struct Invocation {
    function: String,
    /// The request's body as received (shared, not copied, by every attempt).
    payload: Bytes,
    session: Option<SessionHeader>,
    request_id: String,
    style: Style,
}

/// A deployed function's name, as the master's rule has it.
fn check_name(name: &str) -> Result<(), Problem> {
    crate::function::check_name(name).map_err(Problem::from)
}

/// Validates a call to `function` (its name already resolved from any URN or alias).
fn prepare(
    function: String,
    headers: &HeaderMap,
    body: Body,
    style: Style,
) -> Result<Invocation, Problem> {
    let payload = body_or_problem(body)?;
    check_name(&function)?;
    let session = sessions::parse(headers)?;
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
    front.upstream.invoke(req).await
}

fn kind_of(r: &InvokeReply) -> ErrorKind {
    ErrorKind::try_from(r.error_kind).unwrap_or(ErrorKind::ErrorInternal)
}

/// Sends the call, to its session's instance when it has one.
async fn invoke(front: &Front, inv: &Invocation) -> Result<InvokeReply, Problem> {
    match &inv.session {
        None => send(front, inv, String::new()).await,
        Some(session) => sessions::invoke(front, inv, session).await,
    }
}

fn header_value(s: &str) -> HeaderValue {
    // IDs come from the proxy's own records; an unprintable one is shown empty rather than
    // failing the response.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a reply body is a JSON document (checked only for bodies small enough to parse on
/// the way out; larger ones keep the generic type).
fn is_json(body: &[u8]) -> bool {
    !body.is_empty()
        && body.len() <= 64 << 10
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
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
        // openYuanrong's own route answers with its inner code, and JSON (what a function
        // service's handler returns, encoded) as JSON.
        ErrorKind::ErrorNone if style == Style::Yr => {
            let json = is_json(&r.payload);
            let mut resp = (StatusCode::OK, located, r.payload).into_response();
            let h = resp.headers_mut();
            h.insert(
                HeaderName::from_static("x-inner-code"),
                HeaderValue::from_static("0"),
            );
            if json {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            resp
        }
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
        _ => Problem::from_kind(kind, r.error).into_response(),
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

async fn dispatch(front: &Arc<Front>, inv: Invocation, asynchronous: bool) -> Response {
    if asynchronous {
        results::start_async(front, inv)
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
        Err(Problem::bad_request(format!(
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

/// The frontend's routes, calling through `upstream`.
pub fn router(upstream: Upstream, config: &RestConfig) -> Router {
    let front = Front {
        upstream,
        results: Arc::new(Results::new(RESULT_LIMITS)),
        sessions: Arc::new(Sessions::new(MAX_SESSIONS)),
    };
    let openfaas = get(openfaas::sync).post(openfaas::sync).put(openfaas::sync);
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/serverless/v1/functions/{urn}/invocations",
            post(invoke_urn),
        )
        .route(
            "/serverless/v1/functions/async-results/{id}",
            get(results::async_result),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}",
            post(invoke_short),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}/",
            post(invoke_short),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(lambda::invoke),
        )
        .route("/function/{name}", openfaas.clone())
        .route("/function/{name}/", openfaas)
        .route("/async-function/{name}", post(openfaas::asynchronous))
        .route("/async-function/{name}/", post(openfaas::asynchronous))
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

    #[test]
    fn invocation_types() {
        let mut h = HeaderMap::new();
        assert_eq!(is_async(&h).ok(), Some(false));
        h.insert("x-invoke-type", HeaderValue::from_static("ASYNC"));
        assert_eq!(is_async(&h).ok(), Some(true));
        h.insert("x-invoke-type", HeaderValue::from_static("later"));
        assert!(is_async(&h).is_err());
    }

    #[test]
    fn names_follow_the_masters_rule() {
        for good in ["hello", "0@svc@hello", "0@svc@hello@v3", "a-b_c"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "a.b", "a:b", &"x".repeat(200)] {
            let p = check_name(bad).expect_err(bad);
            assert_eq!(
                (p.status(), p.code()),
                (StatusCode::BAD_REQUEST, 1001),
                "{bad}"
            );
        }
    }
}
