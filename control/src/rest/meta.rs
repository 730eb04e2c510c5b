//! The meta service: function management at openYuanrong's `/serverless/v1/functions` paths,
//! turned into the master's Deploy/List/Delete calls. It keeps no state of its own: function
//! metadata lives in etcd, written by the master, so a registered function can be invoked at once.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use yr_proto::master_client::MasterClient;
use yr_proto::*;

use super::{
    body_or_problem, finish, healthz, name_from_urn, not_found, parse_body, split_version, urn,
    version_name, Problem, RestConfig, TENANT,
};

type Params = Query<HashMap<String, String>>;

/// A positive integer query parameter, with a default.
fn param(q: &HashMap<String, String>, key: &str, default: u64, max: u64) -> Result<u64, Problem> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                1001,
                format!("{key}: {v:?} must be a whole number from 1 to {max}"),
            )),
        },
    }
}

/// A success reply with one page of `items` and openYuanrong's pageInfo. Without pageSize, one page holds all.
fn page(items: Vec<Value>, q: &HashMap<String, String>) -> Result<Value, Problem> {
    let total = items.len();
    let size = param(q, "pageSize", total.max(1) as u64, 10_000)? as usize;
    let index = param(q, "pageIndex", 1, u32::MAX as u64)? as usize;
    let items: Vec<Value> = items
        .into_iter()
        .skip((index - 1).saturating_mul(size))
        .take(size)
        .collect();
    Ok(json!({
        "code": 0,
        "message": "SUCCESS",
        "functions": items,
        "pageInfo": {"pageIndex": index, "pageSize": size, "total": total},
    }))
}

#[derive(Clone)]
struct Meta {
    master: MasterClient<crate::MasterChannel>,
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

/// The object `field` of `v`, if present (null counts as absent).
fn object<'a>(
    v: &'a Value,
    field: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, Problem> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("{field}: must be an object"),
        )),
    }
}

/// The lifecycle hooks of a body: `extendedHandler` {`initializer`, `pre_stop`} (handler names)
/// and `extendedTimeout` {`initializer`, `pre_stop`} (seconds), as (initializer, pre_stop,
/// initializer ms, pre_stop ms). Absent values are empty / 0 (the spec's defaults apply).
fn hooks(body: &Value) -> Result<(String, String, u32, u32), Problem> {
    let names = match object(body, "extendedHandler")? {
        Some(m) => {
            let v = Value::Object(m.clone());
            let name = |k: &str| {
                text(&v, k).map_err(|p| {
                    Problem::new(p.status, p.code, format!("extendedHandler.{}", p.detail))
                })
            };
            (name("initializer")?, name("pre_stop")?)
        }
        None => (String::new(), String::new()),
    };
    let ms = match object(body, "extendedTimeout")? {
        Some(m) => {
            let v = Value::Object(m.clone());
            let secs = |k: &str| {
                num(&v, k)
                    .map(|s| (s.unwrap_or(0).saturating_mul(1000)).min(u64::from(u32::MAX)) as u32)
                    .map_err(|p| {
                        Problem::new(p.status, p.code, format!("extendedTimeout.{}", p.detail))
                    })
            };
            (secs("initializer")?, secs("pre_stop")?)
        }
        None => (0, 0),
    };
    Ok((names.0, names.1, ms.0, ms.1))
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
    let (initializer, pre_stop, initializer_timeout_ms, pre_stop_timeout_ms) = hooks(body)?;
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
        initializer,
        pre_stop,
        initializer_timeout_ms,
        pre_stop_timeout_ms,
        ..Default::default()
    })
}

fn function_json(f: &FunctionSpec) -> Value {
    let r = f.resources.clone().unwrap_or_default();
    // A published version is deployed as `NAME@vN`; clients see NAME and version N.
    let (name, published) = split_version(&f.name);
    let version = published.map_or_else(|| f.version.clone(), |n| n.to_string());
    json!({
        "id": urn(name, &version),
        "name": name,
        "functionVersionUrn": urn(name, &version),
        "functionUrn": format!("sn:cn:yrk:{TENANT}:function:{name}"),
        "versionNumber": version,
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
        "extendedHandler": {"initializer": f.initializer, "pre_stop": f.pre_stop},
        "extendedTimeout": {
            "initializer": f.initializer_timeout_ms / 1000,
            "pre_stop": f.pre_stop_timeout_ms / 1000,
        },
        "description": f.description,
        "tenantId": TENANT,
        "created": f.created_unix_ms,
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
        .map_err(Problem::from_status)?
        .into_inner();
    let f = r.spec.unwrap_or_default();
    Ok(Json(
        json!({"code": 0, "message": "SUCCESS", "function": function_json(&f)}),
    ))
}

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

async fn register(State(m): State<Meta>, body: Body) -> Result<Json<Value>, Problem> {
    let body = body_or_problem(body)?;
    let spec = spec_from_body(&parse_body(&body)?, None)?;
    if split_version(&spec.name).1.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!(
                "name: {:?} ends like a published version (@v<number>), which is reserved",
                spec.name
            ),
        ));
    }
    deploy(&m, spec, true).await
}

async fn update(
    State(m): State<Meta>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let body = body_or_problem(body)?;
    let name = name_from_urn(&name)?;
    if split_version(&name).1.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            1001,
            "a published version cannot be changed; update the function and publish again",
        ));
    }
    deploy(&m, spec_from_body(&parse_body(&body)?, Some(&name))?, false).await
}

async fn all_functions(m: &Meta) -> Result<Vec<FunctionSpec>, Problem> {
    let mut fs = m
        .master
        .clone()
        .list_functions(Empty {})
        .await
        .map_err(Problem::from_status)?
        .into_inner()
        .functions;
    fs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fs)
}

fn missing(name: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        1015,
        format!("function {name:?} does not exist"),
    )
}

/// The function `name` and its published versions, latest first, then by version number.
fn versions_of<'a>(fs: &'a [FunctionSpec], name: &str) -> Vec<&'a FunctionSpec> {
    let mut v: Vec<&FunctionSpec> = fs
        .iter()
        .filter(|f| {
            let (base, version) = split_version(&f.name);
            f.name == name || (base == name && version.is_some())
        })
        .collect();
    v.sort_by_key(|f| split_version(&f.name).1.unwrap_or(0));
    v
}

async fn list(State(m): State<Meta>, Query(q): Params) -> Result<Json<Value>, Problem> {
    let fs = all_functions(&m).await?;
    let latest: Vec<Value> = fs
        .iter()
        .filter(|f| split_version(&f.name).1.is_none())
        .map(function_json)
        .collect();
    Ok(Json(page(latest, &q)?))
}

/// The deployed name `versionNumber` selects (none or `latest`: the function itself).
fn selected(name: &str, q: &HashMap<String, String>) -> Result<String, Problem> {
    match q.get("versionNumber").map(|v| v.trim()) {
        None | Some("") | Some("latest") => Ok(name.to_string()),
        Some(v) => v
            .parse::<u32>()
            .map(|n| version_name(name, n))
            .map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    1001,
                    format!("versionNumber: {v:?} is neither latest nor a number"),
                )
            }),
    }
}

async fn get_one(
    State(m): State<Meta>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, Problem> {
    let name = selected(&name_from_urn(&name)?, &q)?;
    let fs = all_functions(&m).await?;
    let f = fs
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| missing(&name))?;
    Ok(Json(
        json!({"code": 0, "message": "SUCCESS", "function": function_json(f)}),
    ))
}

async fn delete(
    State(m): State<Meta>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, Problem> {
    let name = name_from_urn(&name)?;
    let targets: Vec<String> = if q.contains_key("versionNumber") {
        vec![selected(&name, &q)?]
    } else {
        // The function and every published version of it.
        let fs = all_functions(&m).await?;
        let v: Vec<String> = versions_of(&fs, &name)
            .into_iter()
            .map(|f| f.name.clone())
            .collect();
        if v.is_empty() {
            return Err(missing(&name));
        }
        v
    };
    for t in targets {
        m.master
            .clone()
            .delete_function(FunctionRef { name: t })
            .await
            .map_err(Problem::from_status)?;
    }
    Ok(Json(json!({"code": 0, "message": "SUCCESS"})))
}

/// Publishes the function's current definition as the next numbered version.
async fn publish(
    State(m): State<Meta>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let body = body_or_problem(body)?;
    let name = name_from_urn(&name)?;
    let description = if body.is_empty() {
        None
    } else {
        let v = parse_body(&body)?;
        match v.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    1001,
                    "description: must be a string",
                ))
            }
        }
    };
    let fs = all_functions(&m).await?;
    let current = fs
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| missing(&name))?;
    let next = versions_of(&fs, &name)
        .iter()
        .filter_map(|f| split_version(&f.name).1)
        .max()
        .unwrap_or(0)
        + 1;
    let mut spec = current.clone();
    spec.name = version_name(&name, next);
    spec.version = next.to_string();
    spec.created_unix_ms = 0;
    spec.revision = 0;
    if let Some(d) = description {
        spec.description = d;
    }
    deploy(&m, spec, true).await
}

async fn list_versions(
    State(m): State<Meta>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, Problem> {
    let name = name_from_urn(&name)?;
    let fs = all_functions(&m).await?;
    let v: Vec<Value> = versions_of(&fs, &name)
        .into_iter()
        .map(function_json)
        .collect();
    if v.is_empty() {
        return Err(missing(&name));
    }
    Ok(Json(page(v, &q)?))
}

pub fn router(master: MasterClient<crate::MasterChannel>, config: &RestConfig) -> Router {
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route("/serverless/v1/functions", post(register).get(list))
        .route(
            "/serverless/v1/functions/{name}",
            get(get_one).put(update).delete(delete),
        )
        .route(
            "/serverless/v1/functions/{name}/versions",
            post(publish).get(list_versions),
        )
        .route(
            "/openapi.json",
            get(|| async { Json(super::openapi::meta()) }),
        )
        .fallback(not_found)
        .with_state(Meta { master });
    finish(r, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(s.initializer.is_empty() && s.pre_stop.is_empty());
        assert!(spec_from_body(&json!([1]), None).is_err());
        assert!(spec_from_body(&json!({"cpu": 1}), None)
            .err()
            .is_some_and(|p| p.detail.contains("name")));
    }

    #[test]
    fn lifecycle_hooks_map_both_ways() {
        let b = json!({"name": "0@svc@demo", "runtime": "python3.9", "handler": "demo.handler",
            "codePath": "/code", "kind": "faas", "environment": {"show_date": "true"},
            "extendedHandler": {"initializer": "demo.init", "pre_stop": "demo.pre_stop"},
            "extendedTimeout": {"initializer": 30, "pre_stop": "10"}});
        let Ok(s) = spec_from_body(&b, None) else {
            panic!("a valid body was refused");
        };
        assert_eq!(
            (s.initializer.as_str(), s.pre_stop.as_str()),
            ("demo.init", "demo.pre_stop")
        );
        assert_eq!(
            (s.initializer_timeout_ms, s.pre_stop_timeout_ms),
            (30_000, 10_000)
        );
        assert_eq!(s.env.get("show_date").map(String::as_str), Some("true"));
        let shown = function_json(&s);
        assert_eq!(shown["extendedHandler"]["pre_stop"], "demo.pre_stop");
        assert_eq!(shown["extendedTimeout"]["initializer"], 30);
        assert_eq!(shown["runtime"], "python3.9");
        // What the meta service shows is a body it takes back unchanged.
        let Ok(again) = spec_from_body(&shown, None) else {
            panic!("its own rendering was refused");
        };
        assert_eq!(
            (
                again.initializer,
                again.pre_stop,
                again.initializer_timeout_ms,
                again.pre_stop_timeout_ms
            ),
            (s.initializer.clone(), s.pre_stop.clone(), 30_000, 10_000)
        );
        for (bad, field) in [
            (
                json!({"name": "f", "extendedHandler": "demo.init"}),
                "extendedHandler",
            ),
            (
                json!({"name": "f", "extendedHandler": {"pre_stop": 3}}),
                "extendedHandler.pre_stop",
            ),
            (
                json!({"name": "f", "extendedTimeout": {"initializer": "soon"}}),
                "extendedTimeout.initializer",
            ),
        ] {
            let p = spec_from_body(&bad, None).expect_err(field);
            assert!(
                p.detail.starts_with(field) && p.code == 1001,
                "{}",
                p.detail
            );
        }
    }
}
