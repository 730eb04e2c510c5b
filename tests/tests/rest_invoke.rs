//! The frontend's invocation conventions over real HTTP against a real one-node cluster:
//! asynchronous calls and their results, the AWS Lambda and OpenFaaS aliases, and sessions
//! (`X-Instance-Session`) that keep a client's calls on one instance of a pool.
//!
//! One cluster serves the whole test, to keep it short. Two functions are registered through the
//! meta service from the `hello` example: `0@svc@hello` (handler `hello`, which names the instance
//! that answered) and `0@svc@sleep` (handler `sleep`: holds the call for the given milliseconds and
//! replies with its instance ID; a non-number is the function's own error), the latter as a pool
//! of exactly two single-call instances.

use std::time::{Duration, Instant};

use yr_tests::cluster::{example, Cluster, NodeOptions};
use yr_tests::http::{http, http_with, json, services, Reply, Svc};

/// Like [`http`], with extra request headers.
fn call(svc: &Svc, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    http_with(svc, method, path, headers, body)
}

/// A response header's value (names lower-case).
fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

#[track_caller]
fn code(r: &Reply) -> u64 {
    assert!(
        r.headers.contains("application/problem+json"),
        "{} {}\n{}",
        r.status,
        r.body,
        r.headers
    );
    json(r)["code"].as_u64().unwrap_or(0)
}

/// Polls an asynchronous result until it is no longer pending.
#[track_caller]
fn result_of(front: &Svc, id: &str) -> Reply {
    let path = format!("/serverless/v1/functions/async-results/{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http(front, "GET", &path, "");
        if r.status != 202 {
            return r;
        }
        assert_eq!(json(&r)["status"], "pending", "{}", r.body);
        assert!(Instant::now() < deadline, "{id} still pending after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks a 202 answer and returns the request ID it names.
#[track_caller]
fn accepted(r: &Reply) -> String {
    assert_eq!(r.status, 202, "{}", r.body);
    let id = header(r, "x-request-id").expect("x-request-id");
    assert_eq!(
        header(r, "location").as_deref(),
        Some(format!("/serverless/v1/functions/async-results/{id}").as_str())
    );
    let v = json(r);
    assert_eq!(v["requestId"], id.as_str());
    assert_eq!(v["status"], "pending");
    id
}

fn register(meta: &Svc, name: &str, handler: &str, min: u32, max: u32, concurrency: u32) {
    let body = serde_json::json!({
        "name": name, "runtime": "posix-custom-runtime", "handler": handler, "kind": "faas",
        "cpu": 100, "memory": 64, "timeout": 30, "minInstance": min.to_string(),
        "maxInstance": max.to_string(), "concurrentNum": concurrency.to_string(),
        "codePath": example("hello").display().to_string(),
    })
    .to_string();
    let r = http(meta, "POST", "/serverless/v1/functions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn async_calls_aliases_and_sessions() {
    let c = Cluster::start(NodeOptions::default());
    let (meta, front) = services(&c.master().session_dir);
    register(&meta, "0@svc@hello", "hello", 0, 2, 4);
    register(&meta, "0@svc@sleep", "sleep", 2, 2, 1);
    const HELLO_URN: &str = "sn:cn:yrk:default:function:0@svc@hello:latest";
    const SLEEP_URN: &str = "sn:cn:yrk:default:function:0@svc@sleep:latest";
    let urn_path = |urn: &str| format!("/serverless/v1/functions/{urn}/invocations");

    // ---- Asynchronous calls: 202 at once, the result later, as the synchronous call gives it.
    let asynchronous = [("X-Invoke-Type", "Async")];
    let r = call(
        &front,
        "POST",
        "/invocations/default/svc/0@svc@hello/",
        &asynchronous,
        "later",
    );
    let id = accepted(&r);
    let r = result_of(&front, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("hello, later (from 0@svc@hello-"),
        "{}",
        r.body
    );
    assert!(header(&r, "x-instance-id").is_some_and(|i| r.body.contains(&i)));
    // Fetching again gives the same result.
    assert_eq!(result_of(&front, &id).body, r.body);

    // A slow call is pending while it runs.
    let r = call(&front, "POST", &urn_path(SLEEP_URN), &asynchronous, "3000");
    let id = accepted(&r);
    let r = http(
        &front,
        "GET",
        &format!("/serverless/v1/functions/async-results/{id}"),
        "",
    );
    assert_eq!(
        (r.status, json(&r)["status"].as_str()),
        (202, Some("pending"))
    );
    let r = result_of(&front, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("0@svc@sleep-"), "{}", r.body);

    // The function's own error and a platform error, as the synchronous path reports them.
    let id = accepted(&call(
        &front,
        "POST",
        &urn_path(SLEEP_URN),
        &asynchronous,
        "soon",
    ));
    let r = result_of(&front, &id);
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(json(&r)["functionError"], true);
    assert_eq!(json(&r)["code"], 2002);
    let id = accepted(&call(
        &front,
        "POST",
        "/invocations/default/svc/0@svc@nope/",
        &asynchronous,
        "x",
    ));
    let r = result_of(&front, &id);
    assert_eq!((r.status, code(&r)), (404, 1015));

    // Unknown IDs and invocation types.
    let r = http(
        &front,
        "GET",
        "/serverless/v1/functions/async-results/no-such-request",
        "",
    );
    assert_eq!((r.status, code(&r)), (404, 1003));
    let r = call(
        &front,
        "POST",
        &urn_path(HELLO_URN),
        &[("X-Invoke-Type", "eventually")],
        "x",
    );
    assert_eq!((r.status, code(&r)), (400, 1001));
    assert!(r.body.contains("X-Invoke-Type"), "{}", r.body);

    // ---- AWS Lambda.
    let lambda = "/2015-03-31/functions/0@svc@hello/invocations";
    let r = call(&front, "POST", lambda, &[], "aws");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, aws (from "), "{}", r.body);
    assert!(header(&r, "x-amzn-requestid").is_some(), "{}", r.headers);
    let r = call(
        &front,
        "POST",
        "/2015-03-31/functions/arn:aws:lambda:us-east-1:000000000000:function:0@svc@hello/invocations",
        &[("X-Amz-Invocation-Type", "RequestResponse")],
        "arn",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, arn (from "), "{}", r.body);

    let r = call(
        &front,
        "POST",
        lambda,
        &[("X-Amz-Invocation-Type", "Event")],
        "event",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = header(&r, "x-amzn-requestid").expect("x-amzn-requestid");
    assert_eq!(header(&r, "x-request-id").as_deref(), Some(id.as_str()));
    let r = result_of(&front, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, event (from "), "{}", r.body);

    // Event, like DryRun, refuses an unknown function at once.
    let r = call(
        &front,
        "POST",
        "/2015-03-31/functions/nope/invocations",
        &[("X-Amz-Invocation-Type", "Event")],
        "",
    );
    assert_eq!((r.status, code(&r)), (404, 1015));

    let dry = [("X-Amz-Invocation-Type", "DryRun")];
    let r = call(&front, "POST", lambda, &dry, "");
    assert_eq!(r.status, 204, "{}", r.body);
    let r = call(
        &front,
        "POST",
        "/2015-03-31/functions/nope/invocations",
        &dry,
        "",
    );
    assert_eq!((r.status, code(&r)), (404, 1015));
    let r = call(
        &front,
        "POST",
        lambda,
        &[("X-Amz-Invocation-Type", "Sometime")],
        "",
    );
    assert_eq!((r.status, code(&r)), (400, 1001));
    assert!(r.body.contains("X-Amz-Invocation-Type"), "{}", r.body);

    // The function's own error keeps 200 and says so in a header; platform errors stay
    // problem+json.
    let r = call(
        &front,
        "POST",
        "/2015-03-31/functions/0@svc@sleep/invocations",
        &[],
        "not a number",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header(&r, "x-amz-function-error").as_deref(),
        Some("unhandled")
    );
    let v = json(&r);
    assert_eq!(v["errorType"], "FunctionError");
    assert!(
        v["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("milliseconds")),
        "{v}"
    );
    let r = call(
        &front,
        "POST",
        "/2015-03-31/functions/nope/invocations",
        &[],
        "",
    );
    assert_eq!((r.status, code(&r)), (404, 1015));

    // ---- OpenFaaS.
    let r = http(&front, "POST", "/function/0@svc@hello", "faas");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, faas (from "), "{}", r.body);
    assert!(header(&r, "x-call-id").is_some(), "{}", r.headers);
    let r = http(&front, "GET", "/function/0@svc@hello", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, world (from "), "{}", r.body);
    let r = http(&front, "POST", "/async-function/0@svc@hello", "queued");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = header(&r, "x-call-id").expect("x-call-id");
    let r = result_of(&front, &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello, queued (from "), "{}", r.body);

    // ---- Sessions: with two instances of 0@svc@sleep running, a session's calls stay on one.
    c.wait_until("two running instances of 0@svc@sleep", |st| {
        let running = st
            .instances_of("0@svc@sleep")
            .iter()
            .filter(|i| i.state == "RUNNING")
            .count();
        (running >= 2).then_some(())
    });
    let sleep = urn_path(SLEEP_URN);
    let session = |id: &str| format!(r#"{{"sessionID":"{id}","sessionTTL":60,"concurrency":1}}"#);
    let in_session = |id: &str, ms: &str| -> Reply {
        let s = session(id);
        call(&front, "POST", &sleep, &[("X-Instance-Session", &s)], ms)
    };
    let instance_of = |r: Reply| -> String {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            header(&r, "x-instance-id").as_deref(),
            Some(r.body.as_str())
        );
        r.body
    };

    let r = call(
        &front,
        "POST",
        &sleep,
        &[("X-Instance-Session", "{\"sessionTTL\":5}")],
        "0",
    );
    assert_eq!((r.status, code(&r)), (400, 1001));
    assert!(r.body.contains("X-Instance-Session"), "{}", r.body);
    assert!(r.body.contains("sessionID"), "{}", r.body);

    let x = instance_of(in_session("s1", "0"));
    // Keep x busy (an asynchronous call of the session), then start sessions until one is bound
    // to the other instance: the first call of a session takes whichever instance is free.
    let s1 = session("s1");
    accepted(&call(
        &front,
        "POST",
        &sleep,
        &[("X-Instance-Session", &s1), ("X-Invoke-Type", "async")],
        "4000",
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (s2, y) = (0..)
        .find_map(|n| {
            assert!(
                Instant::now() < deadline,
                "no session reached a second instance"
            );
            let id = format!("s2-{n}");
            let y = instance_of(in_session(&id, "0"));
            (y != x).then_some((id, y))
        })
        .expect("a session on the second instance");
    for _ in 0..3 {
        assert_eq!(instance_of(in_session(&s2, "0")), y);
        assert_eq!(instance_of(in_session("s1", "0")), x);
    }

    // The session's instance goes away: the session moves to another and stays there.
    c.yr(&["instance", "kill", &x])
        .expect_ok("kill the session's instance");
    c.wait_until("the killed instance to end", |st| {
        st.instance(&x)
            .is_none_or(|i| i.state != "RUNNING")
            .then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let r = in_session("s1", "0");
        if r.status == 200 {
            break instance_of(r);
        }
        // The proxy may still hold the stopping instance for a moment: it says so (1007).
        assert_eq!((r.status, code(&r)), (502, 1007), "{}", r.body);
        assert!(Instant::now() < deadline, "s1 never moved: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(moved, x);
    for _ in 0..3 {
        assert_eq!(instance_of(in_session("s1", "0")), moved);
    }
}
