//! The two HTTP services: the meta service (function management, default port 31182) and the
//! frontend (invocation, default port 8888), with openYuanrong's paths and response shapes.
//!
//! Both are thin: the meta service turns requests into the master's Deploy/List/Delete calls, the
//! frontend into an Invoke on this node's proxy. Neither keeps state of its own.
//!
//! Errors are RFC 9457 `application/problem+json` with openYuanrong's numeric `code` as an
//! extension member; a function's own error is not a platform error (502 with the function's
//! message, code 2002). Request bodies are bounded ([`MAX_BODY`]).
//!
//! Not yet here (see the REST issue): access tokens, asynchronous invocations, Lambda and
//! OpenFaaS aliases, the data-system routes, OpenAPI and metrics.

use std::collections::HashMap;

use anyhow::Result;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::*;

use crate::Shutdown;

/// Largest request body either service accepts.
pub const MAX_BODY: usize = 64 << 20;
/// The tenant of every function until tenants exist.
pub const TENANT: &str = "default";

/// A platform error, rendered as problem+json.
pub struct Problem {
    status: StatusCode,
    code: u32,
    detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: u32, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
        }
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
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Maps a master error onto HTTP status and openYuanrong code.
fn from_status(s: tonic::Status) -> Problem {
    use tonic::Code;
    let (status, code) = match s.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, 1001),
        Code::NotFound => (StatusCode::NOT_FOUND, 1015),
        Code::AlreadyExists => (StatusCode::BAD_REQUEST, 4101),
        Code::ResourceExhausted => (StatusCode::SERVICE_UNAVAILABLE, 1002),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, 3002),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, 3002),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, 3003),
    };
    Problem::new(status, code, s.message())
}

/// `sn:cn:yrk:{tenant}:function:{name}:{version}`.
pub fn urn(name: &str, version: &str) -> String {
    format!("sn:cn:yrk:{TENANT}:function:{name}:{version}")
}

/// The function name in a URN, or the argument itself if it is a plain name.
pub fn name_from_urn(s: &str) -> Result<String, Problem> {
    if !s.starts_with("sn:") {
        return Ok(s.to_string());
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        ["sn", _, _, _, "function", name, _] | ["sn", _, _, _, "function", name] => {
            Ok(name.to_string())
        }
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("functionVersionURN {s:?} is not sn:cn:yrk:TENANT:function:NAME:VERSION"),
        )),
    }
}

// ------------------------------------------------------------------------------- meta service

#[derive(Clone)]
struct Meta {
    master: MasterClient<tonic::transport::Channel>,
}

fn num(v: &Value, field: &str) -> Result<Option<u64>, Problem> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                1001,
                format!("{field}: {n} is not a non-negative integer"),
            )
        }),
        // openYuanrong clients send some counts as strings.
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                1001,
                format!("{field}: {s:?} is not a non-negative integer"),
            )
        }),
        Some(other) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("{field}: {other} is not a number"),
        )),
    }
}

fn string_map(v: &Value, field: &str) -> Result<HashMap<String, String>, Problem> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect(),
        Some(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("{field}: must be an object of strings"),
        )),
    }
}

fn text(v: &Value, field: &str) -> Result<String, Problem> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("{field}: must be a string"),
        )),
    }
}

/// An openYuanrong function registration body as a spec.
fn spec_from_body(body: &Value, name_override: Option<&str>) -> Result<FunctionSpec, Problem> {
    if !body.is_object() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            "the body must be a JSON object",
        ));
    }
    let name = match name_override {
        Some(n) => n.to_string(),
        None => text(body, "name")?,
    };
    if name.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            "name: is required",
        ));
    }
    let custom = match body.get("customResources") {
        None | Some(Value::Null) => HashMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let n = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                n.map(|n| (k.clone(), n)).ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        1001,
                        format!("customResources.{k}: {v} is not a number"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                1001,
                "customResources: must be an object of numbers",
            ))
        }
    };
    let timeout_s = num(body, "timeout")?.unwrap_or(900).min(8_640_000);
    Ok(FunctionSpec {
        name,
        version: String::new(),
        runtime: text(body, "runtime")?,
        code_path: text(body, "codePath")?,
        entrypoint: text(body, "entrypoint")?,
        handler: text(body, "handler")?,
        resources: Some(Resources {
            cpu_millis: num(body, "cpu")?.unwrap_or(0),
            memory_mib: num(body, "memory")?.unwrap_or(0),
            custom,
        }),
        min_instances: num(body, "minInstance")?.unwrap_or(0) as u32,
        max_instances: num(body, "maxInstance")?.unwrap_or(0) as u32,
        concurrency: num(body, "concurrentNum")?.unwrap_or(0) as u32,
        timeout_ms: (timeout_s * 1000).min(u32::MAX as u64) as u32,
        env: string_map(body, "environment")?,
        max_retries: 3,
        description: text(body, "description")?,
        kind: text(body, "kind")?,
        ..Default::default()
    })
}

fn function_json(f: &FunctionSpec) -> Value {
    let r = f.resources.clone().unwrap_or_default();
    json!({
        "id": urn(&f.name, &f.version),
        "name": f.name,
        "functionVersionUrn": urn(&f.name, &f.version),
        "functionUrn": format!("sn:cn:yrk:{TENANT}:function:{}", f.name),
        "versionNumber": f.version,
        "revisionId": f.revision.to_string(),
        "runtime": f.runtime,
        "handler": f.handler,
        "kind": if f.kind.is_empty() { "faas" } else { &f.kind },
        "cpu": r.cpu_millis,
        "memory": r.memory_mib,
        "customResources": r.custom,
        "timeout": f.timeout_ms / 1000,
        "minInstance": f.min_instances,
        "maxInstance": f.max_instances,
        "concurrentNum": f.concurrency,
        "environment": f.env,
        "codePath": f.code_path,
        "description": f.description,
        "tenantId": TENANT,
        "created": f.created_unix_ms,
    })
}

fn parse_body(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Deploys `spec` through the master and answers with openYuanrong's success shape.
async fn deploy(m: &Meta, spec: FunctionSpec, create_only: bool) -> Result<Json<Value>, Problem> {
    let r = m
        .master
        .clone()
        .deploy(DeployRequest {
            spec: Some(spec),
            create_only,
            update_only: !create_only,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let f = r.spec.unwrap_or_default();
    Ok(Json(
        json!({"code": 0, "message": "SUCCESS", "function": function_json(&f)}),
    ))
}

async fn register(State(m): State<Meta>, body: axum::body::Bytes) -> Result<Json<Value>, Problem> {
    deploy(&m, spec_from_body(&parse_body(&body)?, None)?, true).await
}

async fn update(
    State(m): State<Meta>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    let name = name_from_urn(&name)?;
    deploy(&m, spec_from_body(&parse_body(&body)?, Some(&name))?, false).await
}

async fn list(State(m): State<Meta>) -> Result<Json<Value>, Problem> {
    let mut fs = m
        .master
        .clone()
        .list_functions(Empty {})
        .await
        .map_err(from_status)?
        .into_inner()
        .functions;
    fs.sort_by(|a, b| a.name.cmp(&b.name));
    let total = fs.len();
    Ok(Json(json!({
        "code": 0,
        "message": "SUCCESS",
        "functions": fs.iter().map(function_json).collect::<Vec<_>>(),
        "pageInfo": {"pageIndex": 1, "pageSize": total, "total": total},
    })))
}

async fn get_one(State(m): State<Meta>, Path(name): Path<String>) -> Result<Json<Value>, Problem> {
    let name = name_from_urn(&name)?;
    let fs = m
        .master
        .clone()
        .list_functions(Empty {})
        .await
        .map_err(from_status)?
        .into_inner()
        .functions;
    let f = fs.iter().find(|f| f.name == name).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            1015,
            format!("function {name:?} does not exist"),
        )
    })?;
    Ok(Json(
        json!({"code": 0, "message": "SUCCESS", "function": function_json(f)}),
    ))
}

async fn delete(State(m): State<Meta>, Path(name): Path<String>) -> Result<Json<Value>, Problem> {
    let name = name_from_urn(&name)?;
    m.master
        .clone()
        .delete_function(FunctionRef { name })
        .await
        .map_err(from_status)?;
    Ok(Json(json!({"code": 0, "message": "SUCCESS"})))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, 1001, "no such route")
}

pub fn meta_router(master: MasterClient<tonic::transport::Channel>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/serverless/v1/functions", post(register).get(list))
        .route(
            "/serverless/v1/functions/{name}",
            get(get_one).put(update).delete(delete),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Meta { master })
}

// ------------------------------------------------------------------------------- frontend

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
    body: axum::body::Bytes,
) -> Response {
    match name_from_urn(&urn) {
        Ok(name) => call(&f, name, &headers, body.to_vec()).await,
        Err(p) => p.into_response(),
    }
}

async fn invoke_short(
    State(f): State<Front>,
    Path((_tenant, _namespace, function)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    call(&f, function, &headers, body.to_vec()).await
}

pub fn frontend_router(proxy: ProxyClient<tonic::transport::Channel>) -> Router {
    Router::new()
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Front { proxy })
}

async fn serve(
    listen: std::net::SocketAddr,
    router: Router,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    on_ready(listener.local_addr()?);
    // Small replies must not wait for the client's delayed ACK (see `crate::incoming`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait_owned())
        .await?;
    Ok(())
}

/// Runs the meta service until `shutdown`.
pub async fn run_meta(
    listen: std::net::SocketAddr,
    master_address: &str,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let master = MasterClient::new(crate::channel(master_address)?);
    serve(listen, meta_router(master), shutdown, on_ready).await
}

/// Runs the frontend until `shutdown`.
pub async fn run_frontend(
    listen: std::net::SocketAddr,
    proxy_address: &str,
    shutdown: Shutdown,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let proxy = ProxyClient::new(crate::channel(proxy_address)?)
        .max_decoding_message_size(crate::proxy::MAX_MESSAGE)
        .max_encoding_message_size(crate::proxy::MAX_MESSAGE);
    serve(listen, frontend_router(proxy), shutdown, on_ready).await
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
        assert!(name_from_urn("sn:cn:yrk:x").is_err());
    }

    #[test]
    fn registration_bodies() {
        let b = json!({"name": "0@svc@f", "cpu": 300, "memory": "128", "minInstance": "1",
            "maxInstance": 4, "concurrentNum": "8", "timeout": 5, "codePath": "/x",
            "environment": {"A": "1"}, "customResources": {"gpu": "1"}});
        let Ok(s) = spec_from_body(&b, None) else {
            panic!("a valid body was refused");
        };
        assert_eq!(
            (
                s.min_instances,
                s.max_instances,
                s.concurrency,
                s.timeout_ms
            ),
            (1, 4, 8, 5000)
        );
        assert_eq!(
            s.resources.as_ref().map(|r| (r.cpu_millis, r.memory_mib)),
            Some((300, 128))
        );
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        let bad = spec_from_body(&json!({"name": "f", "cpu": "lots"}), None).expect_err("invalid");
        assert!(bad.detail.contains("cpu") && bad.code == 1001);
        assert!(spec_from_body(&json!([1]), None).is_err());
        assert!(spec_from_body(&json!({"cpu": 1}), None)
            .err()
            .is_some_and(|p| p.detail.contains("name")));
    }
}
