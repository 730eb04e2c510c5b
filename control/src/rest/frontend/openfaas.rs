//! The OpenFaaS routes: `/function/{name}` (POST, GET or PUT; the body is the input) answers
//! like the short yr route; `POST /async-function/{name}` answers 202 with `X-Call-Id` (the
//! result is at async-results/<id>). `X-Callback-Url` is not followed: the frontend calls no URL
//! a client names.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{call_as, Body, Front, Style};

/// `/function/{name}`: a synchronous call.
pub(super) async fn sync(
    State(f): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    call_as(&f, name, &headers, body, Style::OpenFaas, false).await
}

/// `/async-function/{name}`: an asynchronous call.
pub(super) async fn asynchronous(
    State(f): State<Arc<Front>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    call_as(&f, name, &headers, body, Style::OpenFaas, true).await
}
