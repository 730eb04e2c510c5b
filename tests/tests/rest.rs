//! The meta service and the frontend over real HTTP, against a real one-node cluster: register a
//! function with openYuanrong's body, refuse a duplicate (4101) and bad fields (1001, naming the
//! field), invoke it by URN and by the short form, and get problem+json for platform errors.
//!
//! The HTTP client is a few lines over `TcpStream` (HTTP/1.1, `Connection: close`), so the test
//! sees exactly the bytes on the wire.

use yr_tests::cluster::{example, Cluster, NodeOptions};
use yr_tests::http::{http, json, Svc};

#[test]
fn register_and_invoke_over_rest() {
    let c = Cluster::start(NodeOptions::default());
    let session: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.master().session_dir.join("session.json")).expect("session"),
    )
    .expect("session JSON");
    let token_file = session["token_file"]
        .as_str()
        .expect("token_file")
        .to_string();
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_string();
    let meta = Svc {
        url: session["meta_url"].as_str().expect("meta_url").to_string(),
        token: Some(token.clone()),
    };
    let front = Svc {
        url: session["frontend_url"]
            .as_str()
            .expect("frontend_url")
            .to_string(),
        token: Some(token.clone()),
    };

    // Security by default: the token file is this user's only, every route but /healthz wants
    // the token, a wrong one is refused the same way, and neither reveals the route.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    assert_eq!(token.len(), 64, "256 bits in hex");
    // The CLI reads it from the session itself.
    let out = c.yr(&["token"]).expect_ok("yr token");
    assert_eq!(out.stdout.trim(), token);
    let out = c.yr(&["token", "--header"]).expect_ok("yr token --header");
    assert_eq!(out.stdout.trim(), format!("Authorization: Bearer {token}"));
    for svc in [&meta, &front] {
        assert_eq!(
            http(&svc.without_token(), "GET", "/healthz", "").status,
            200
        );
        for who in [svc.without_token(), svc.with_token("not-the-token")] {
            for (method, path) in [
                ("GET", "/serverless/v1/functions"),
                ("POST", "/invocations/default/svc/0@svc@hello/"),
                ("GET", "/no/such/route"),
            ] {
                let r = http(&who, method, path, "{}");
                assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
                assert!(
                    r.headers.contains("www-authenticate: bearer"),
                    "{}",
                    r.headers
                );
                assert!(r.headers.contains("application/problem+json"));
            }
        }
    }

    assert_eq!(http(&meta, "GET", "/healthz", "").status, 200);
    assert_eq!(http(&front, "GET", "/healthz", "").status, 200);

    let hello = example("hello");
    let body = serde_json::json!({
        "name": "0@svc@hello", "runtime": "posix-custom-runtime", "handler": "hello",
        "kind": "faas", "cpu": 100, "memory": 64, "timeout": 30, "minInstance": "0",
        "maxInstance": "2", "concurrentNum": "4", "codePath": hello.display().to_string(),
        "environment": {"GREETING": "hi"}, "storageType": "local", "description": "d"
    })
    .to_string();
    let r = http(&meta, "POST", "/serverless/v1/functions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["code"], 0);
    let urn = v["function"]["functionVersionUrn"]
        .as_str()
        .expect("URN")
        .to_string();
    assert_eq!(urn, "sn:cn:yrk:default:function:0@svc@hello:latest");

    // The same name again: 4101.
    let r = http(&meta, "POST", "/serverless/v1/functions", &body);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(json(&r)["code"], 4101);
    assert!(
        r.headers.contains("application/problem+json"),
        "{}",
        r.headers
    );

    // Bad fields: 1001, naming the field; malformed JSON too.
    let r = http(
        &meta,
        "POST",
        "/serverless/v1/functions",
        r#"{"name":"x","cpu":"lots","codePath":"/bin/true"}"#,
    );
    assert_eq!((r.status, json(&r)["code"].as_u64()), (400, Some(1001)));
    assert!(
        json(&r)["detail"].as_str().unwrap_or("").contains("cpu"),
        "{}",
        r.body
    );
    let r = http(&meta, "POST", "/serverless/v1/functions", "{not json");
    assert_eq!((r.status, json(&r)["code"].as_u64()), (400, Some(1001)));

    // Get and list.
    let r = http(&meta, "GET", "/serverless/v1/functions/0@svc@hello", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["function"]["concurrentNum"], 4);
    let r = http(&meta, "GET", "/serverless/v1/functions", "");
    assert_eq!(json(&r)["functions"].as_array().map(Vec::len), Some(1));
    let r = http(&meta, "GET", "/serverless/v1/functions/nope", "");
    assert_eq!((r.status, json(&r)["code"].as_u64()), (404, Some(1015)));

    // Invoke by URN and by the short form; the registration's environment (GREETING=hi)
    // reached the function process.
    let path = format!("/serverless/v1/functions/{urn}/invocations");
    let r = http(&front, "POST", &path, "yuanrong");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("hi, yuanrong (from 0@svc@hello-"),
        "{}",
        r.body
    );
    let r = http(
        &front,
        "POST",
        "/invocations/default/svc/0@svc@hello/",
        "short",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hi, short"), "{}", r.body);

    // Unknown function: 404 problem+json with 1015; a malformed URN: 400.
    let r = http(
        &front,
        "POST",
        "/serverless/v1/functions/sn:cn:yrk:default:function:nope:latest/invocations",
        "x",
    );
    assert_eq!((r.status, json(&r)["code"].as_u64()), (404, Some(1015)));
    assert!(r.headers.contains("application/problem+json"));
    let r = http(
        &front,
        "POST",
        "/serverless/v1/functions/sn:cn:x/invocations",
        "x",
    );
    assert_eq!((r.status, json(&r)["code"].as_u64()), (400, Some(1001)));

    // Versions: publishing freezes the current definition as 1, then 2; each is listed, paged,
    // fetched and invoked by its URN, and deleted on its own.
    let versions = "/serverless/v1/functions/0@svc@hello/versions";
    for n in ["1", "2"] {
        let r = http(&meta, "POST", versions, r#"{"description":"frozen"}"#);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r)["function"]["versionNumber"], n);
        assert_eq!(json(&r)["function"]["name"], "0@svc@hello");
    }
    let r = http(&meta, "GET", versions, "");
    let listed: Vec<String> = json(&r)["functions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|f| f["versionNumber"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(listed, ["latest", "1", "2"]);
    let r = http(
        &meta,
        "GET",
        &format!("{versions}?pageSize=1&pageIndex=2"),
        "",
    );
    let v = json(&r);
    assert_eq!(v["functions"][0]["versionNumber"], "1", "{v}");
    assert_eq!(v["pageInfo"]["total"], 3);
    assert_eq!(v["pageInfo"]["pageSize"], 1);
    let r = http(&meta, "GET", &format!("{versions}?pageSize=0"), "");
    assert_eq!((r.status, json(&r)["code"].as_u64()), (400, Some(1001)));
    assert!(r.body.contains("pageSize"), "{}", r.body);
    let r = http(
        &meta,
        "GET",
        "/serverless/v1/functions/0@svc@hello?versionNumber=2",
        "",
    );
    assert_eq!(
        json(&r)["function"]["functionVersionUrn"],
        "sn:cn:yrk:default:function:0@svc@hello:2"
    );
    let r = http(
        &front,
        "POST",
        "/serverless/v1/functions/sn:cn:yrk:default:function:0@svc@hello:1/invocations",
        "v1",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("hi, v1 (from 0@svc@hello@v1-"),
        "{}",
        r.body
    );
    // The function list shows functions, not their versions.
    let r = http(&meta, "GET", "/serverless/v1/functions", "");
    assert_eq!(json(&r)["pageInfo"]["total"], 1);
    let r = http(
        &meta,
        "DELETE",
        "/serverless/v1/functions/0@svc@hello?versionNumber=1",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(&meta, "GET", versions, "");
    assert_eq!(json(&r)["pageInfo"]["total"], 2);
    let r = http(
        &meta,
        "POST",
        "/serverless/v1/functions",
        &body.replace("0@svc@hello", "0@svc@x@v3"),
    );
    assert_eq!((r.status, json(&r)["code"].as_u64()), (400, Some(1001)));

    // Delete: then it is gone, with every version.
    let r = http(&meta, "DELETE", "/serverless/v1/functions/0@svc@hello", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(&front, "POST", &path, "again");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(&meta, "GET", versions, "");
    assert_eq!(r.status, 404, "{}", r.body);
}
