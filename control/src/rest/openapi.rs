//! `GET /openapi.json`: an OpenAPI 3.0 description of every route of each service, served by
//! the service itself (behind the token, like every route but `/healthz`).
//!
//! Invariant: a route added to the meta service or the frontend is described here, with
//! every status it can answer; the schemathesis test (tests/tests/rest_schema.rs) runs against
//! the live services and fails on an undocumented status, a body that breaks its schema, or any
//! 5xx.

use serde_json::{json, Map, Value};

fn problem_ref() -> Value {
    json!({"$ref": "#/components/schemas/Problem"})
}

/// Responses every authenticated route can give besides its own.
fn common(mut own: Map<String, Value>) -> Value {
    let problem = |what: &str| {
        json!({
            "description": what,
            "content": {"application/problem+json": {"schema": problem_ref()}},
        })
    };
    for (code, what) in [
        ("400", "invalid input (code 1001 names the field)"),
        ("401", "no or wrong access token"),
        ("404", "no such route or resource"),
        ("405", "method not allowed"),
        ("413", "request body over the limit"),
    ] {
        own.entry(code.to_string()).or_insert_with(|| problem(what));
    }
    Value::Object(own)
}

fn responses(pairs: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert((*k).to_string(), v.clone());
    }
    common(m)
}

fn problem(what: &str) -> Value {
    json!({
        "description": what,
        "content": {"application/problem+json": {"schema": problem_ref()}},
    })
}

fn json_ok(what: &str, schema: Value) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": schema}}})
}

fn any_body(what: &str) -> Value {
    json!({"description": what, "content": {"*/*": {"schema": {}}}})
}

fn path_param(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": what,
           "schema": {"type": "string", "minLength": 1}})
}

/// A path parameter with an example value (the examples phase of a fuzzer uses it).
fn path_example(name: &str, what: &str, example: &str) -> Value {
    let mut p = path_param(name, what);
    p["example"] = json!(example);
    p
}

fn query_param(name: &str, what: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": what, "schema": schema})
}

fn header_param(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": what,
           "schema": {"type": "string"}})
}

fn base(title: &str) -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                    },
                },
                "Function": {
                    "type": "object",
                    "required": ["name", "functionVersionUrn", "versionNumber"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "functionVersionUrn": {"type": "string"},
                        "functionUrn": {"type": "string"},
                        "versionNumber": {"type": "string"},
                        "revisionId": {"type": "string"},
                        "runtime": {"type": "string"},
                        "handler": {"type": "string"},
                        "kind": {"type": "string"},
                        "cpu": {"type": "integer"},
                        "memory": {"type": "integer"},
                        "customResources": {"type": "object", "additionalProperties": {"type": "number"}},
                        "timeout": {"type": "integer"},
                        "minInstance": {"type": "integer"},
                        "maxInstance": {"type": "integer"},
                        "concurrentNum": {"type": "integer"},
                        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                        "codePath": {"type": "string"},
                        "extendedHandler": {"$ref": "#/components/schemas/ExtendedHandler"},
                        "extendedTimeout": {"$ref": "#/components/schemas/ExtendedTimeout"},
                        "description": {"type": "string"},
                        "tenantId": {"type": "string"},
                        "created": {"type": "integer"},
                    },
                },
                "FunctionReply": {
                    "type": "object",
                    "required": ["code", "message", "function"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                        "function": {"$ref": "#/components/schemas/Function"},
                    },
                },
                "FunctionPage": {
                    "type": "object",
                    "required": ["code", "functions", "pageInfo"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                        "functions": {"type": "array", "items": {"$ref": "#/components/schemas/Function"}},
                        "pageInfo": {
                            "type": "object",
                            "required": ["pageIndex", "pageSize", "total"],
                            "properties": {
                                "pageIndex": {"type": "integer"},
                                "pageSize": {"type": "integer"},
                                "total": {"type": "integer"},
                            },
                        },
                    },
                },
                "Registration": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_@-]{1,128}$"},
                        "runtime": {"type": "string", "pattern": "^(posix-custom-runtime|python3(\\.[0-9]+)?)$"},
                        "handler": {"type": "string"},
                        "kind": {"type": "string"},
                        "cpu": {"type": "integer", "minimum": 0},
                        "memory": {"type": "integer", "minimum": 0},
                        "timeout": {"type": "integer", "minimum": 0},
                        "customResources": {"type": "object", "additionalProperties": {"type": "number"}},
                        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                        "minInstance": {"type": "integer", "minimum": 0},
                        "maxInstance": {"type": "integer", "minimum": 0},
                        "concurrentNum": {"type": "integer", "minimum": 0},
                        "storageType": {"type": "string"},
                        "codePath": {"type": "string"},
                        "entrypoint": {"type": "string"},
                        "description": {"type": "string"},
                        "extendedHandler": {"$ref": "#/components/schemas/ExtendedHandler"},
                        "extendedTimeout": {"$ref": "#/components/schemas/ExtendedTimeout"},
                    },
                },
                "ExtendedHandler": {
                    "type": "object",
                    "description": "lifecycle hooks of python3 runtimes, as module.function",
                    "properties": {
                        "initializer": {"type": "string"},
                        "pre_stop": {"type": "string"},
                    },
                },
                "ExtendedTimeout": {
                    "type": "object",
                    "description": "how long each hook may run, in seconds (0: the default)",
                    "properties": {
                        "initializer": {"type": "integer", "minimum": 0},
                        "pre_stop": {"type": "integer", "minimum": 0},
                    },
                },
                "Ok": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/healthz": {"get": {
                "summary": "liveness (no token needed)",
                "security": [],
                "responses": {"200": {"description": "alive", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus text format: requests, latency, errors by route, function and status",
                "responses": responses(&[("200", json!({"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}))]),
            }},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": responses(&[("200", json_ok("the OpenAPI document", json!({"type": "object"})))]),
            }},
        },
    })
}

fn add(doc: &mut Value, path: &str, method: &str, op: Value) {
    doc["paths"][path][method] = op;
}

/// The meta service's document.
pub fn meta() -> Value {
    let mut d = base("yr meta service");
    let reply = || {
        json_ok(
            "the function",
            json!({"$ref": "#/components/schemas/FunctionReply"}),
        )
    };
    let page = || {
        json_ok(
            "one page of functions",
            json!({"$ref": "#/components/schemas/FunctionPage"}),
        )
    };
    let paging = || {
        vec![
            query_param(
                "pageIndex",
                "page number, from 1",
                json!({"type": "integer", "minimum": 1}),
            ),
            query_param(
                "pageSize",
                "functions per page (default: all)",
                json!({"type": "integer", "minimum": 1, "maximum": 10000}),
            ),
        ]
    };
    let version = || {
        query_param(
            "versionNumber",
            "a published version, or latest",
            json!({"type": "string"}),
        )
    };
    let name = || {
        path_example(
            "name",
            "a function name or its functionVersionUrn",
            "0@svc@hello",
        )
    };
    add(
        &mut d,
        "/serverless/v1/functions",
        "post",
        json!({
            "summary": "register a function (openYuanrong body)",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registration"}}}},
            "responses": responses(&[("200", reply()), ("503", problem("the master is unreachable"))]),
        }),
    );
    add(
        &mut d,
        "/serverless/v1/functions",
        "get",
        json!({
            "summary": "list functions (latest definitions), paged",
            "parameters": paging(),
            "responses": responses(&[("200", page())]),
        }),
    );
    add(
        &mut d,
        "/serverless/v1/functions/{name}",
        "get",
        json!({
            "summary": "one function, or one published version",
            "parameters": [name(), version()],
            "responses": responses(&[("200", reply())]),
        }),
    );
    add(
        &mut d,
        "/serverless/v1/functions/{name}",
        "put",
        json!({
            "summary": "update a function",
            "parameters": [name()],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registration"}}}},
            "responses": responses(&[("200", reply())]),
        }),
    );
    add(
        &mut d,
        "/serverless/v1/functions/{name}",
        "delete",
        json!({
            "summary": "delete a function and its versions, or one version",
            "parameters": [name(), version()],
            "responses": responses(&[("200", json_ok("deleted", json!({"$ref": "#/components/schemas/Ok"})))]),
        }),
    );
    add(
        &mut d,
        "/serverless/v1/functions/{name}/versions",
        "post",
        json!({
            "summary": "publish the current definition as the next numbered version",
            "parameters": [name()],
            "requestBody": {"required": false, "content": {"application/json": {
                "schema": {"type": "object", "properties": {"description": {"type": "string"}}},
                "example": {"description": "frozen for release"}}}},
            "responses": responses(&[("200", reply())]),
        }),
    );
    let mut params = vec![name()];
    params.extend(paging());
    add(
        &mut d,
        "/serverless/v1/functions/{name}/versions",
        "get",
        json!({
            "summary": "a function's versions (latest first), paged",
            "parameters": params,
            "responses": responses(&[("200", page())]),
        }),
    );
    d
}

/// The frontend's document.
pub fn frontend() -> Value {
    let mut d = base("yr frontend");
    let invoke_responses = || {
        responses(&[
            (
                "200",
                any_body("the function's reply, as the function wrote it"),
            ),
            (
                "202",
                json_ok(
                    "accepted for asynchronous execution",
                    json!({
                "type": "object", "required": ["requestId"],
                "properties": {"requestId": {"type": "string"}, "status": {"type": "string"}}}),
                ),
            ),
            (
                "500",
                json_ok(
                    "the function's own error (not a platform error)",
                    json!({
                "type": "object", "required": ["code", "functionError"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                               "functionError": {"type": "boolean"}}}),
                ),
            ),
            (
                "429",
                problem("queues are full; retry after Retry-After seconds"),
            ),
            ("502", problem("the function's instance failed")),
            ("503", problem("no capacity for an instance")),
            ("504", problem("the call timed out")),
        ])
    };
    let body = || json!({"required": false, "content": {"*/*": {"schema": {}}}});
    let invoke_headers = || {
        vec![
            header_param(
                "X-Invoke-Type",
                "async: answer 202 and run in the background",
            ),
            header_param(
                "X-Instance-Session",
                "JSON {sessionID, sessionTTL, concurrency}: one session, one instance",
            ),
        ]
    };
    let mut p = vec![path_example(
        "urn",
        "sn:cn:yrk:TENANT:function:NAME:VERSION, or a name",
        "sn:cn:yrk:default:function:0@svc@hello:latest",
    )];
    p.extend(invoke_headers());
    add(
        &mut d,
        "/serverless/v1/functions/{urn}/invocations",
        "post",
        json!({
            "summary": "invoke a function (sync, or async with X-Invoke-Type: async)",
            "parameters": p,
            "requestBody": body(),
            "responses": invoke_responses(),
        }),
    );
    for path in [
        "/invocations/{tenant}/{namespace}/{function}",
        "/invocations/{tenant}/{namespace}/{function}/",
    ] {
        let mut p = vec![
            path_param("tenant", "tenant"),
            path_param("namespace", "namespace"),
            path_param("function", "function name"),
        ];
        p.extend(invoke_headers());
        add(
            &mut d,
            path,
            "post",
            json!({
                "summary": "invoke a function (short form)",
                "parameters": p,
                "requestBody": body(),
                "responses": invoke_responses(),
            }),
        );
    }
    add(
        &mut d,
        "/serverless/v1/functions/async-results/{requestId}",
        "get",
        json!({
            "summary": "the result of an asynchronous call (202 while it runs)",
            "parameters": [path_param("requestId", "the id the 202 gave")],
            "responses": invoke_responses(),
        }),
    );
    add(
        &mut d,
        "/2015-03-31/functions/{name}/invocations",
        "post",
        json!({
            "summary": "AWS Lambda's invoke: X-Amz-Invocation-Type RequestResponse (200), Event (202), DryRun (204)",
            "parameters": [path_param("name", "function name, ARN, or name:qualifier"),
                           query_param("Qualifier", "$LATEST or a version number", json!({"type": "string"})),
                           header_param("X-Amz-Invocation-Type", "RequestResponse, Event or DryRun")],
            "requestBody": body(),
            "responses": responses(&[
                ("200", any_body("the function's reply; a function error sets X-Amz-Function-Error")),
                ("202", any_body("accepted (Event)")),
                ("204", json!({"description": "DryRun: the function exists"})),
                ("429", problem("queues are full")),
                ("502", problem("the function's instance failed")),
                ("503", problem("no capacity")),
                ("504", problem("timed out")),
            ]),
        }),
    );
    for (path, what, methods) in [
        (
            "/function/{name}",
            "OpenFaaS: invoke synchronously",
            &["get", "post", "put"][..],
        ),
        (
            "/function/{name}/",
            "OpenFaaS: invoke synchronously",
            &["get", "post", "put"][..],
        ),
        (
            "/async-function/{name}",
            "OpenFaaS: invoke asynchronously (202, X-Call-Id)",
            &["post"][..],
        ),
        (
            "/async-function/{name}/",
            "OpenFaaS: invoke asynchronously (202, X-Call-Id)",
            &["post"][..],
        ),
    ] {
        for m in methods {
            let mut op = json!({
                "summary": what,
                "parameters": [path_param("name", "function name"),
                               header_param("X-Instance-Session", "JSON {sessionID, sessionTTL, concurrency}")],
                "responses": invoke_responses(),
            });
            if *m != "get" {
                op["requestBody"] = body();
            }
            add(&mut d, path, m, op);
        }
    }
    let id = || query_param("id", "object ID (hex)", json!({"type": "string"}));
    let key = || query_param("key", "key (at most 255 bytes)", json!({"type": "string"}));
    let timeout = || {
        query_param(
            "timeoutMs",
            "how long to wait for it (at most 10 s; poll again for longer)",
            json!({"type": "integer", "minimum": 0, "maximum": 10000}),
        )
    };
    let stored = || {
        responses(&[
            ("200", json_ok("stored", json!({"type": "object"}))),
            ("409", problem("an object with this id exists")),
            ("500", problem("the data worker failed internally")),
            (
                "503",
                problem("this frontend has no data worker, or it is unreachable"),
            ),
            ("507", problem("shared memory and spill space are full")),
        ])
    };
    let bytes = || {
        responses(&[
            (
                "200",
                json!({"description": "the bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
            ),
            ("410", problem("the only node holding the object is gone")),
            ("500", problem("the data worker failed internally")),
            ("504", problem("still being written when timeoutMs ran out")),
            (
                "503",
                problem("this frontend has no data worker, or it is unreachable"),
            ),
        ])
    };
    let octets = || json!({"required": false, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    add(
        &mut d,
        "/datasystem/v1/obj/put",
        "post",
        json!({
            "summary": "store an object (the body, streamed into shared memory)",
            "parameters": [id()], "requestBody": octets(), "responses": stored(),
        }),
    );
    for m in ["get", "post"] {
        add(
            &mut d,
            "/datasystem/v1/obj/get",
            m,
            json!({
                "summary": "an object's bytes (pulled from its node if elsewhere)",
                "parameters": [id(), timeout()], "responses": bytes(),
            }),
        );
    }
    add(
        &mut d,
        "/datasystem/v1/kv/set",
        "post",
        json!({
            "summary": "bind a key to the body", "parameters": [key()], "requestBody": octets(), "responses": stored(),
        }),
    );
    add(
        &mut d,
        "/datasystem/v1/kv/get",
        "get",
        json!({
            "summary": "the value of a key", "parameters": [key(), timeout()], "responses": bytes(),
        }),
    );
    for m in ["post", "delete"] {
        add(
            &mut d,
            "/datasystem/v1/obj/del",
            m,
            json!({
                "summary": "delete an object on every node that holds it",
                "parameters": [id()], "responses": stored(),
            }),
        );
    }
    for m in ["post", "delete"] {
        add(
            &mut d,
            "/datasystem/v1/kv/del",
            m,
            json!({
                "summary": "remove a key", "parameters": [key()], "responses": stored(),
            }),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_openapi_with_every_operation_answering_401() {
        for doc in [meta(), frontend()] {
            assert_eq!(doc["openapi"], "3.0.3");
            let paths = doc["paths"].as_object().expect("paths");
            assert!(paths.len() >= 3);
            for (path, ops) in paths {
                for (method, op) in ops.as_object().expect("operations") {
                    let r = &op["responses"];
                    assert!(
                        r.get("200").is_some() || r.get("202").is_some(),
                        "{method} {path}"
                    );
                    if path != "/healthz" {
                        assert!(r.get("401").is_some(), "{method} {path} documents 401");
                    }
                }
            }
        }
    }
}
