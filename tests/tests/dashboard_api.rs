//! The dashboard over real HTTP against a real one-node cluster: `/healthz` is open, the JSON
//! needs the REST token (bearer, or the session cookie of a login), the state lists the node and
//! the active master, the one-time URL `yr dashboard --print` makes logs in once and is then
//! refused, and the page's assets are served with their content types.

use std::time::{Duration, Instant};

use yr_tests::cluster::{Cluster, NodeOptions};
use yr_tests::http::{http_with, json, Reply, Svc};

fn get(svc: &Svc, path: &str, cookie: Option<&str>) -> Reply {
    let c = cookie.map(|c| format!("yr_dashboard={c}"));
    let headers: Vec<(&str, &str)> = c.iter().map(|c| ("Cookie", c.as_str())).collect();
    http_with(svc, "GET", path, &headers, "")
}

/// The session id of a `Set-Cookie` in a reply's head (which the client lower-cases; the id is
/// lower-case hex).
fn session_cookie(r: &Reply) -> Option<String> {
    let line = r
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie:") && l.contains("yr_dashboard="))?;
    assert!(
        line.contains("httponly") && line.contains("samesite=strict"),
        "{line}"
    );
    let v = line.split("yr_dashboard=").nth(1)?;
    Some(v.split(';').next()?.trim().to_string())
}

#[test]
fn the_dashboard_serves_its_page_and_state_behind_the_token() {
    let c = Cluster::start(NodeOptions::default());
    let session: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.master().session_dir.join("session.json")).expect("session"),
    )
    .expect("session JSON");
    let url = session["dashboard_url"]
        .as_str()
        .expect("session.json has dashboard_url")
        .to_string();
    let token = std::fs::read_to_string(session["token_file"].as_str().expect("token_file"))
        .expect("token")
        .trim()
        .to_string();
    let open = Svc {
        url: url.clone(),
        token: None,
    };
    let with_token = open.with_token(&token);

    // Open: liveness and the page with its assets, with their content types.
    assert_eq!(get(&open, "/healthz", None).status, 200);
    let page = get(&open, "/", None);
    assert_eq!(page.status, 200);
    assert!(
        page.headers.contains("content-type: text/html"),
        "{}",
        page.headers
    );
    assert!(
        page.body.contains("id=\"login\""),
        "the page has the login form"
    );
    let js = get(&open, "/app.js", None);
    assert_eq!(js.status, 200);
    assert!(
        js.headers.contains("content-type: text/javascript"),
        "{}",
        js.headers
    );
    assert!(js.body.contains("/api/state"));
    let css = get(&open, "/style.css", None);
    assert_eq!(css.status, 200);
    assert!(
        css.headers.contains("content-type: text/css"),
        "{}",
        css.headers
    );

    // The JSON needs the token.
    for path in [
        "/api/state",
        "/api/nodes/x/history",
        "/api/instances/x/logs",
    ] {
        assert_eq!(get(&open, path, None).status, 401, "{path} without a token");
        assert_eq!(
            get(&open.with_token("not-the-token"), path, None).status,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            get(&open, path, Some("not-a-session")).status,
            401,
            "{path} with a made-up cookie"
        );
    }

    // With it, the state lists this node (alive) and the active master, within a few refreshes.
    let node = c.master().node_id.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let r = get(&with_token, "/api/state", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json(&r);
        let has_node = v["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node_id"] == node.as_str() && n["state"] == "alive")
        });
        let has_master = v["masters"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["node_id"] == node.as_str() && m["active"] == true)
        });
        // The node's REST services, read by its collector.
        let has_rest = v["rest"].as_array().is_some_and(|r| {
            r.iter().any(|r| {
                r["service"] == "frontend" && r["node_id"] == node.as_str() && r["up"] == true
            })
        });
        if has_node && has_master && has_rest {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not list node {node}, its master and its frontend: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(state["overview"]["nodes_alive"], 1, "{state}");
    assert!(
        state["updated_unix_ms"].as_u64().unwrap_or(0) > 0,
        "{state}"
    );
    let hist = get(&with_token, &format!("/api/nodes/{node}/history"), None);
    assert_eq!(hist.status, 200, "{}", hist.body);
    assert_eq!(json(&hist)["node_id"], node.as_str());

    // The one-time login URL: a session cookie once, then refused.
    let out = c
        .yr(&["dashboard", "--print"])
        .expect_ok("yr dashboard --print");
    let link = out.stdout.trim().to_string();
    let prefix = format!("{url}/login?code=");
    assert!(link.starts_with(&prefix), "{link}");
    let path = &link[url.len()..];
    let first = get(&open, path, None);
    assert_eq!(first.status, 303, "{}", first.body);
    let cookie = session_cookie(&first).expect("a session cookie");
    assert_eq!(get(&open, "/api/state", Some(&cookie)).status, 200);
    let again = get(&open, path, None);
    assert_eq!(again.status, 401, "a code works once");
    assert!(session_cookie(&again).is_none());
    let forged = format!("{prefix}{}", "0".repeat(32) + ".99999999999.00");
    assert_eq!(get(&open, &forged[url.len()..], None).status, 401);

    // The login form's route.
    let post = |body: &str| {
        http_with(
            &open,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    assert_eq!(post(r#"{"token":"wrong"}"#).status, 401);
    let ok = post(&serde_json::json!({ "token": token }).to_string());
    assert_eq!(ok.status, 204, "{}", ok.body);
    let cookie = session_cookie(&ok).expect("a session cookie");
    assert_eq!(get(&open, "/api/state", Some(&cookie)).status, 200);

    // `yr status` names the dashboard.
    let st = c.yr(&["status"]).expect_ok("yr status");
    assert!(st.stdout.contains(&url), "{}", st.stdout);
    let st = c.yr(&["status", "--json"]).expect_ok("yr status --json");
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    assert_eq!(v["dashboard_url"], url.as_str());
}
