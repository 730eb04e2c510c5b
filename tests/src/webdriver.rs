//! A minimal W3C WebDriver client for tests that drive a real, headless Chromium: a
//! [`Browser`] starts its own `chromedriver` on a free loopback port, opens one session and
//! offers what the dashboard test needs (navigate, find, read text and attributes, click, type,
//! run a script, wait for a condition, take a screenshot).
//!
//! Invariants:
//! - Nothing is skipped: a missing `chromium` or `chromedriver` panics with a message saying
//!   that `make test-deps` (which `make test` runs) installs them.
//! - No blind sleeps: `chromedriver` is ready when its `/status` says so, polled with a
//!   deadline; [`Browser::wait_for`] polls a condition with a deadline and, when it passes,
//!   panics with the description, the page's URL and the start of its text.
//! - Every failed command panics naming the command and WebDriver's error (`no such element`,
//!   ...); the `try_` variants return the error instead, for conditions polled while the page
//!   re-renders (an element found a moment ago may be gone: "stale element reference").
//! - Dropping a [`Browser`] ends the session and kills `chromedriver`'s whole process group
//!   (its own, so that a Chromium left behind by a failed session dies with it).
//!
//! The HTTP side is one request per connection (`Connection: close`) over a `TcpStream`, the
//! same style as the `http` module's but returning errors instead of panicking, since readiness
//! polling must survive refused connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The key of an element reference in W3C WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long `chromedriver` may take to answer `/status` with `ready: true`.
const DRIVER_READY_DEADLINE: Duration = Duration::from_secs(30);

/// How long a single WebDriver command may take (session creation starts Chromium).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`Browser::wait_for`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Chromium's flags: headless, no sandbox (tests may run as root in a container), a fixed
/// window size so that screenshots are comparable, and `/tmp` instead of a small `/dev/shm`.
const CHROME_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

/// An element of the current page, as WebDriver names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elem(pub String);

/// A WebDriver error reply: its `error` code (`no such element`, ...) and message.
#[derive(Clone, Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first_line = self.message.lines().next().unwrap_or("");
        write!(f, "{}: {first_line}", self.error)
    }
}

/// Finds `name` on `PATH` (or returns `None`).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The Chromium binary: `$YR_CHROMIUM`, else `/usr/bin/chromium` (Debian's package), else
/// `chromium` on `PATH`. Panics, saying how to install it, when there is none.
pub fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("YR_CHROMIUM") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return debian;
    }
    find_on_path("chromium").unwrap_or_else(|| {
        panic!(
            "chromium not found (not /usr/bin/chromium, not on PATH): the browser tests need it; \
             `make test-deps` installs it (`make test` runs that first), or set YR_CHROMIUM"
        )
    })
}

/// The `chromedriver` binary: `$YR_CHROMEDRIVER`, else `chromedriver` on `PATH`. Panics,
/// saying how to install it, when there is none.
pub fn chromedriver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("YR_CHROMEDRIVER") {
        return PathBuf::from(p);
    }
    find_on_path("chromedriver").unwrap_or_else(|| {
        panic!(
            "chromedriver not found on PATH: the browser tests need it (Debian package \
             chromium-driver); `make test-deps` installs it (`make test` runs that first), or \
             set YR_CHROMEDRIVER"
        )
    })
}

/// A free port for `chromedriver` to bind (claimed and outside the kernel's ephemeral range, so
/// no parallel test's connection takes it first).
fn free_port() -> u16 {
    yr_proto::ports::free(1, &[])
        .map(|p| p[0])
        .unwrap_or_else(|e| panic!("no free port for chromedriver: {e}"))
}

/// One HTTP/1.1 request to `127.0.0.1:port`; returns the status and the body parsed as JSON.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("set timeout: {e}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; \
         charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send {method} {path}: {e}"))?;
    // chromedriver keeps the connection open despite `Connection: close`: read the head,
    // then exactly the body its length (or chunking) announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let read_more =
        |s: &mut TcpStream, raw: &mut Vec<u8>, buf: &mut [u8]| -> Result<bool, String> {
            let n = s
                .read(buf)
                .map_err(|e| format!("read the reply to {method} {path}: {e}"))?;
            raw.extend_from_slice(&buf[..n]);
            Ok(n > 0)
        };
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !read_more(&mut s, &mut raw, &mut buf)? {
            return Err(format!(
                "{method} {path}: connection closed before the reply's head"
            ));
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status line in {head:?}"))?;
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let body_start = split + 4;
    let payload = loop {
        let body = &raw[body_start..];
        if let Some(n) = length {
            if body.len() >= n {
                break body[..n].to_vec();
            }
        } else if chunked {
            if let Some(p) = dechunk(body) {
                break p;
            }
        }
        if !read_more(&mut s, &mut raw, &mut buf)? {
            // Closed: what came is the whole body (no length given) or a truncated one.
            if length.is_some() || chunked {
                return Err(format!("{method} {path}: connection closed mid-body"));
            }
            break raw[body_start..].to_vec();
        }
    };
    let value = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&payload).map_err(|e| {
            format!(
                "{method} {path}: reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&payload)
            )
        })?
    };
    Ok((status, value))
}

/// Decodes a chunked body (`chromedriver` sends a length, but be safe).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A headless Chromium driven through its own `chromedriver`.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Holds chromedriver's log (stdout and stderr), quoted when something fails.
    log_dir: tempfile::TempDir,
    quit: bool,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session.
    pub fn start() -> Browser {
        let chromium = chromium_binary();
        let chromedriver = chromedriver_binary();
        let log_dir = tempfile::Builder::new()
            .prefix("yr-chromedriver-")
            .tempdir()
            .expect("temporary folder for chromedriver's log");
        let log_path = log_dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).expect("create chromedriver's log file");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group: dropping the browser kills Chromium with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone chromedriver's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; `make test-deps` installs chromedriver",
                    chromedriver.display()
                )
            });
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            log_dir,
            quit: false,
        };
        b.wait_driver_ready();
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": CHROME_ARGS,
                    }
                }
            }
        });
        let v = b.raw("POST", "/session", Some(&caps)).unwrap_or_else(|e| {
            panic!(
                "webdriver: cannot create a Chromium session with {} ({e}); chromedriver's \
                     log:\n{}",
                chromium.display(),
                b.driver_log()
            )
        });
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("webdriver: new session reply has no sessionId: {v}"))
            .to_string();
        b
    }

    /// Polls `/status` until `chromedriver` is ready, it exits, or the deadline passes.
    fn wait_driver_ready(&mut self) {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < DRIVER_READY_DEADLINE {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited ({status}) before it was ready on port {}; its log:\n{}",
                    self.port,
                    self.driver_log()
                );
            }
            match request(self.port, "GET", "/status", None, Duration::from_secs(5)) {
                Ok((200, v)) if v["value"]["ready"] == json!(true) => return,
                Ok((status, v)) => last = format!("HTTP {status}: {v}"),
                Err(e) => last = e,
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!(
            "chromedriver on port {} not ready within {DRIVER_READY_DEADLINE:?} (last: {last}); \
             its log:\n{}",
            self.port,
            self.driver_log()
        );
    }

    /// The end of chromedriver's log, for failure messages.
    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(self.log_dir.path().join("chromedriver.log"))
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// One WebDriver command: returns its `value`, or the WebDriver error.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let (status, mut v) =
            request(self.port, method, path, body, COMMAND_TIMEOUT).map_err(|e| WdError {
                error: "http".into(),
                message: e,
            })?;
        let value = v["value"].take();
        if status == 200 {
            return Ok(value);
        }
        Err(WdError {
            error: value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: value["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string()),
        })
    }

    /// A command on this session (`path` starts with `/`).
    fn try_cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Like [`Browser::try_cmd`]; panics naming `what` on failure.
    #[track_caller]
    fn cmd(&self, what: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {what}: {e}"))
    }

    /// Opens `url` (waits for the page's load event, as WebDriver does).
    #[track_caller]
    pub fn navigate(&self, url: &str) {
        self.cmd(
            &format!("navigate to {url}"),
            "POST",
            "/url",
            Some(&json!({ "url": url })),
        );
    }

    /// The current page's URL.
    #[track_caller]
    pub fn current_url(&self) -> String {
        self.cmd("current URL", "GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn elem_of(v: &Value) -> Option<Elem> {
        v[ELEMENT_KEY].as_str().map(|s| Elem(s.to_string()))
    }

    /// The first element matching `css`, or the error (`no such element`, ...).
    pub fn try_find(&self, css: &str) -> Result<Elem, WdError> {
        let v = self.try_cmd(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        Self::elem_of(&v).ok_or_else(|| WdError {
            error: "bad reply".into(),
            message: format!("no element reference in {v}"),
        })
    }

    /// The first element matching `css`; panics naming the selector when there is none.
    #[track_caller]
    pub fn find(&self, css: &str) -> Elem {
        self.try_find(css)
            .unwrap_or_else(|e| panic!("webdriver find {css:?} on {}: {e}", self.current_url()))
    }

    /// Every element matching `css` (possibly none).
    #[track_caller]
    pub fn find_all(&self, css: &str) -> Vec<Elem> {
        let v = self.cmd(
            &format!("find all {css:?}"),
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        v.as_array()
            .map(|a| a.iter().filter_map(Self::elem_of).collect())
            .unwrap_or_default()
    }

    /// An element's rendered text, or the error (a stale element, for one).
    pub fn try_text(&self, e: &Elem) -> Result<String, WdError> {
        let v = self.try_cmd("GET", &format!("/element/{}/text", e.0), None)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// An element's rendered text.
    #[track_caller]
    pub fn text(&self, e: &Elem) -> String {
        self.try_text(e)
            .unwrap_or_else(|err| panic!("webdriver text of {e:?}: {err}"))
    }

    /// An element's attribute (`None` when it has none).
    #[track_caller]
    pub fn attr(&self, e: &Elem, name: &str) -> Option<String> {
        let v = self.cmd(
            &format!("attribute {name:?} of {e:?}"),
            "GET",
            &format!("/element/{}/attribute/{name}", e.0),
            None,
        );
        v.as_str().map(str::to_string)
    }

    /// Clicks an element.
    #[track_caller]
    pub fn click(&self, e: &Elem) {
        self.cmd(
            &format!("click {e:?}"),
            "POST",
            &format!("/element/{}/click", e.0),
            Some(&json!({})),
        );
    }

    /// Types `text` into an element.
    #[track_caller]
    pub fn send_keys(&self, e: &Elem, text: &str) {
        self.cmd(
            &format!("send keys to {e:?}"),
            "POST",
            &format!("/element/{}/value", e.0),
            Some(&json!({ "text": text })),
        );
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns what it returns.
    pub fn try_execute(&self, script: &str, args: &[Value]) -> Result<Value, WdError> {
        self.try_cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` (a function body) and returns what it returns.
    #[track_caller]
    pub fn execute(&self, script: &str) -> Value {
        self.try_execute(script, &[])
            .unwrap_or_else(|e| panic!("webdriver execute {script:?}: {e}"))
    }

    /// The text content of the first element matching `css`, read in one script (so that a
    /// re-render between finding and reading cannot fail it); `None` when nothing matches.
    #[track_caller]
    pub fn text_of(&self, css: &str) -> Option<String> {
        let v = self
            .try_execute(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.textContent.trim() : null;",
                &[json!(css)],
            )
            .unwrap_or_else(|e| panic!("webdriver text of {css:?}: {e}"));
        v.as_str().map(str::to_string)
    }

    /// An attribute of the first element matching `css`, read in one script; `None` when
    /// nothing matches or the element lacks it.
    #[track_caller]
    pub fn attr_of(&self, css: &str, name: &str) -> Option<String> {
        let v = self
            .try_execute(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.getAttribute(arguments[1]) : null;",
                &[json!(css), json!(name)],
            )
            .unwrap_or_else(|e| panic!("webdriver attribute {name:?} of {css:?}: {e}"));
        v.as_str().map(str::to_string)
    }

    /// How many elements match `css`, counted in one script.
    #[track_caller]
    pub fn count(&self, css: &str) -> usize {
        let v = self
            .try_execute(
                "return document.querySelectorAll(arguments[0]).length;",
                &[json!(css)],
            )
            .unwrap_or_else(|e| panic!("webdriver count {css:?}: {e}"));
        v.as_u64().unwrap_or(0) as usize
    }

    /// Polls `check` every 100 ms until it returns `Some`, for at most `deadline`; then panics
    /// with `what`, the page's URL and the start of its text.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(t) = check(self) {
                return t;
            }
            if start.elapsed() >= deadline {
                let page = self
                    .try_execute("return document.body ? document.body.innerText : '';", &[])
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                let page: String = page.chars().take(3000).collect();
                let url = self
                    .try_cmd("GET", "/url", None)
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .unwrap_or_else(|e| format!("(unknown: {e})"));
                panic!(
                    "browser: gave up waiting after {deadline:?} for {what}\nURL: {url}\n\
                     --- page text ---\n{page}"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Saves a PNG of the viewport to `path` (creating its folder).
    #[track_caller]
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("screenshot", "GET", "/screenshot", None);
        let b64 = v
            .as_str()
            .unwrap_or_else(|| panic!("webdriver screenshot: reply is not a string: {v}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("webdriver screenshot: bad base64: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "webdriver screenshot: not a PNG"
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, &png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Ends the session (closing Chromium) and stops `chromedriver`.
    pub fn quit(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if !self.quit {
            self.quit = true;
            if !self.session.is_empty() {
                let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
            }
        }
        if let Ok(pid) = libc::pid_t::try_from(self.driver.id()) {
            // SAFETY: killpg(2) on the process group of our own child (created with
            // `process_group(0)`, so its ID is the child's pid); no memory is involved.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection: reads the request head, writes `reply`, then keeps the connection
    /// open until the client hangs up (as chromedriver does), so the client must stop at the
    /// announced end of the body.
    fn serve_once(reply: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("address").port();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = s.write_all(reply);
            // Wait for the client to close (read returns 0 or fails).
            let _ = s.read(&mut byte);
        });
        port
    }

    #[test]
    fn reads_a_body_by_its_length_on_a_kept_open_connection() {
        let port =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"value\":{\"a\":[1,2]}}");
        let (status, v) = request(port, "GET", "/x", None, Duration::from_secs(10))
            .expect("a reply with a length");
        assert_eq!(status, 200);
        assert_eq!(v, json!({"value": {"a": [1, 2]}}));
    }

    #[test]
    fn reads_a_chunked_body_and_error_statuses() {
        let port = serve_once(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
              a\r\n{\"value\":{\r\n19\r\n\"error\":\"no such element\"\r\n2\r\n}}\r\n0\r\n\r\n",
        );
        let (status, v) =
            request(port, "GET", "/x", None, Duration::from_secs(10)).expect("a chunked reply");
        assert_eq!(status, 404);
        assert_eq!(v["value"]["error"], json!("no such element"));
    }

    #[test]
    fn dechunk_rejects_truncated_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n0\r\n\r\n").as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(dechunk(b"3\r\nab"), None);
        assert_eq!(dechunk(b"zz\r\nabc\r\n"), None);
        assert_eq!(dechunk(b"3\r\nabc\r\n"), None, "no last chunk yet");
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_panic() {
        let port = free_port();
        let e = request(port, "GET", "/status", None, Duration::from_secs(1))
            .expect_err("nothing listens");
        assert!(e.contains("connect"), "{e}");
    }
}
