//! A minimal HTTP/1.1 client for the REST tests: one request per connection
//! (`Connection: close`) over a plain `TcpStream`, so a test sees exactly the bytes on the
//! wire, and the REST services of a cluster with the token from its session.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// A reply: status, lower-cased head, body.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One of the REST services, with the token it is called with (if any).
pub struct Svc {
    pub url: String,
    pub token: Option<String>,
}

impl Svc {
    pub fn without_token(&self) -> Svc {
        Svc {
            url: self.url.clone(),
            token: None,
        }
    }

    pub fn with_token(&self, t: &str) -> Svc {
        Svc {
            url: self.url.clone(),
            token: Some(t.to_string()),
        }
    }
}

pub fn http(svc: &Svc, method: &str, path: &str, body: &str) -> Reply {
    http_with(
        svc,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

/// Like [`http`], with these request headers instead of the JSON content type.
pub fn http_with(
    svc: &Svc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let host = svc.url.trim_start_matches("http://");
    let mut head = String::new();
    if let Some(t) = &svc.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read reply");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

pub fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// The meta service and the frontend of the master node whose session is in `dir`, with its token.
pub fn services(dir: &Path) -> (Svc, Svc) {
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).expect("session"))
            .expect("session JSON");
    let token = session["token_file"]
        .as_str()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_string());
    let url = |k: &str| {
        session[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in the session"))
            .to_string()
    };
    (
        Svc {
            url: url("meta_url"),
            token: token.clone(),
        },
        Svc {
            url: url("frontend_url"),
            token,
        },
    )
}
