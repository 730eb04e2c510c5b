//! The frontend: invocation over HTTP, at openYuanrong's paths, through this node's proxy.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

use super::{body_or_problem, finish, healthz, name_from_urn, not_found, Problem, RestConfig};

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

#[derive(Clone)]
struct Front {
    proxy: ProxyClient<tonic::transport::Channel>,
}

async fn call(front: &Front, name: String, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let _ = headers; // X-Instance-* headers: see the REST issue
    let req = InvokeRequest {
        function: name,
        payload: body,
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let r = match front.proxy.clone().invoke(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return Problem::new(
                StatusCode::BAD_GATEWAY,
                3002,
                format!("proxy: {}", e.message()),
            )
            .into_response()
        }
    };
    let kind = ErrorKind::try_from(r.error_kind).unwrap_or(ErrorKind::ErrorInternal);
    let problem = |status, code| Problem::new(status, code, r.error.clone()).into_response();
    match kind {
        ErrorKind::ErrorNone => (
            StatusCode::OK,
            [
                ("x-instance-id", r.instance_id.clone()),
                ("x-node-id", r.node_id.clone()),
            ],
            r.payload,
        )
            .into_response(),
        // The function's own failure: reported as such, not as a platform error.
        ErrorKind::ErrorFunction => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"code": 2002, "message": r.error, "functionError": true}).to_string(),
        )
            .into_response(),
        ErrorKind::ErrorNotFound => problem(StatusCode::NOT_FOUND, 1015),
        ErrorKind::ErrorInsufficientResources => problem(StatusCode::SERVICE_UNAVAILABLE, 1002),
        ErrorKind::ErrorTimeout => problem(StatusCode::GATEWAY_TIMEOUT, 3002),
        ErrorKind::ErrorBusy => {
            let mut resp = problem(StatusCode::TOO_MANY_REQUESTS, 1005);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
        ErrorKind::ErrorInstanceFatal => problem(StatusCode::BAD_GATEWAY, 1007),
        ErrorKind::ErrorInternal => problem(StatusCode::INTERNAL_SERVER_ERROR, 3003),
    }
}

async fn invoke_urn(
    State(f): State<Front>,
    Path(urn): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match body_or_problem(body) {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    match name_from_urn(&urn) {
        Ok(name) => call(&f, name, &headers, body.to_vec()).await,
        Err(p) => p.into_response(),
    }
}

async fn invoke_short(
    State(f): State<Front>,
    Path((_tenant, _namespace, function)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match body_or_problem(body) {
        Ok(b) => call(&f, function, &headers, b.to_vec()).await,
        Err(p) => p.into_response(),
    }
}

pub fn router(proxy: ProxyClient<tonic::transport::Channel>, config: &RestConfig) -> Router {
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/serverless/v1/functions/{urn}/invocations",
            post(invoke_urn),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}",
            post(invoke_short),
        )
        .route(
            "/invocations/{tenant}/{namespace}/{function}/",
            post(invoke_short),
        )
        .fallback(not_found)
        .with_state(Front { proxy });
    finish(r, config)
}
