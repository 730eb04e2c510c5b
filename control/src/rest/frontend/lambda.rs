//! The AWS Lambda dialect: `POST /2015-03-31/functions/{name}/invocations`.
//!
//! `name` may be a plain name, `name:qualifier`, an ARN
//! (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`) or a yr URN; `?Qualifier=` too.
//! A qualifier is `$LATEST` (or `latest`) or a published version number, resolved to the
//! deployed version's name before the name rule ([`crate::function::check_name`]) applies.
//!
//! `X-Amz-Invocation-Type`: `RequestResponse` (default, 200), `Event` (202 with `X-Request-Id`
//! and `X-Amzn-RequestId`; the result is at async-results), `DryRun` (204). A function's own
//! error keeps 200 and sets `X-Amz-Function-Error: Unhandled` with
//! `{"errorMessage","errorType":"FunctionError"}`; platform errors stay problem+json (404, 413,
//! 429 with `Retry-After`, 5xx).
//!
//! `Event` and `DryRun` check that the function exists first (404 at once, as AWS answers): the
//! request is validated like a call (name, body, session header), then the proxy is asked with a
//! dry run (`InvokeRequest.dry_run`), which runs nothing and answers by kind: none when the
//! function is deployed, not found when it is not.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use yr_proto::{ErrorKind, InvokeRequest};

use super::{check_name, dispatch, kind_of, prepare, with_ids, Body, Front, Style};
use crate::rest::{name_from_urn, urn, Problem};

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
        Err(Problem::bad_request(format!(
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
/// `$LATEST` (or `latest`) or a published version number. The deployed name it resolves to
/// must be a function name ([`check_name`]).
fn lambda_function(raw: &str, query: Option<&str>) -> Result<String, Problem> {
    let resolved = resolve(raw, query)?;
    check_name(&resolved)?;
    Ok(resolved)
}

fn resolve(raw: &str, query: Option<&str>) -> Result<String, Problem> {
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
                return Err(Problem::bad_request(format!(
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
            return Err(Problem::bad_request(format!(
                "the function name's qualifier {a:?} and Qualifier {b:?} differ"
            )))
        }
        (Some(q), _) | (None, Some(q)) => Some(q),
        (None, None) => None,
    };
    match qualifier {
        None | Some("$LATEST" | "latest" | "") => Ok(name.to_string()),
        Some(q) if q.bytes().all(|b| b.is_ascii_digit()) => {
            // The URN form knows how versions are deployed.
            name_from_urn(&urn(name, q))
        }
        Some(q) => Err(Problem::bad_request(format!(
            "Qualifier {q:?} is neither $LATEST nor a version number (aliases do not exist here)"
        ))),
    }
}

/// Whether `function` is deployed, asked of the proxy without running anything (see the module
/// Whether `function` is deployed, asked of the proxy without running anything: `Ok` when it
/// is, else the proxy's refusal (not found for an unknown function) as a problem.
async fn exists(front: &Front, function: &str) -> Result<(), Problem> {
    let req = InvokeRequest {
        function: function.to_string(),
        dry_run: true,
        ..Default::default()
    };
    let r = front.upstream.invoke(req).await?;
    match kind_of(&r) {
        ErrorKind::ErrorNone => Ok(()),
        kind => Err(Problem::from_kind(kind, r.error)),
    }
}

/// `POST /2015-03-31/functions/{name}/invocations`.
pub(super) async fn invoke(
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
        if let Err(p) = exists(&f, &inv.function).await {
            return with_ids(p.into_response(), &inv.request_id, inv.style);
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
            name_from_urn(&urn("hello", "2")).ok()
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
