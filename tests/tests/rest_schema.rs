//! Schemathesis (from PyPI; `make test` installs it) against the live meta service and frontend
//! of a real one-node cluster: it reads each service's `/openapi.json`, generates requests from
//! it, valid and invalid, and checks every response: no 5xx, no status the document does not
//! list, and every body matching its schema and content type.
//!
//! The frontend runs first, while the only function is one this test deployed: random
//! registrations made later by the meta service's run can never be invoked by the fuzzer.

use std::path::PathBuf;
use std::process::Command;

use yr_tests::cluster::{example, Cluster, NodeOptions};
use yr_tests::http::{http, services, Svc};

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("YR_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("YR_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/yr")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/yr"));
    let st = tools.join("venv/bin/st");
    assert!(
        st.is_file(),
        "schemathesis is not installed at {}: run `make test-deps` (scripts/install-deps.sh --test)",
        st.display()
    );
    st
}

fn fuzz(svc: &Svc, what: &str) {
    let token = svc.token.clone().expect("the cluster has a token");
    let out = Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/openapi.json", svc.url))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "20",
            "--seed",
            "20261127",
            "--request-timeout",
            "30",
            "--no-color",
            // One worker: with two, hypothesis describes strategies from two threads at once and
            // CPython 3.11's `ast` module (whose recursion counter is shared between threads)
            // fails with "AST constructor recursion depth mismatch", an error of the tool that
            // CI saw once, not a finding about the server.
            "--workers",
            "1",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems in the {what}:\n{text}"
    );
    eprintln!(
        "{what}: {}",
        text.lines().rev().take(6).collect::<Vec<_>>().join(" | ")
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let c = Cluster::start(NodeOptions::default());
    let (meta, front) = services(&c.master().session_dir);
    let body = serde_json::json!({
        "name": "0@svc@hello", "runtime": "posix-custom-runtime", "handler": "hello",
        "cpu": 100, "memory": 64, "maxInstance": 2, "concurrentNum": 8,
        "codePath": example("hello").display().to_string(),
    })
    .to_string();
    let r = http(&meta, "POST", "/serverless/v1/functions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    for svc in [&meta, &front] {
        let r = http(svc, "GET", "/openapi.json", "");
        assert_eq!(r.status, 200, "{}", r.body);
        let r = http(&svc.without_token(), "GET", "/openapi.json", "");
        assert_eq!(r.status, 401, "the document is behind the token too");
    }
    fuzz(&front, "frontend");
    fuzz(&meta, "meta service");
}
