//! The WebDriver client itself (tests/src/webdriver.rs), proven on a static page served by a
//! tiny HTTP server of this test: a real headless Chromium loads it, and the client finds
//! elements, reads text and attributes, types, clicks, runs scripts, waits for a change the page
//! makes later by itself, and saves a real PNG.
//!
//! Needs `chromium` and `chromedriver` (`make test-deps` installs them); without them the test
//! fails saying so.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use yr_tests::webdriver::Browser;

/// The page: a text field and a button that copies it into `#out`, a counter the page bumps
/// 300 ms after the click (so the client must wait for it), and an attribute the click sets.
const PAGE: &str = r#"<!doctype html>
<html><head><title>webdriver test</title></head>
<body data-state="idle">
  <input id="name" value="">
  <button id="go">Go</button>
  <p id="out">nothing yet</p>
  <ul><li class="item">a</li><li class="item">b</li><li class="item">c</li></ul>
  <span id="later"></span>
  <script>
    document.getElementById('go').addEventListener('click', () => {
      const v = document.getElementById('name').value;
      document.getElementById('out').textContent = 'hello, ' + v;
      document.body.setAttribute('data-state', 'clicked');
      setTimeout(() => { document.getElementById('later').textContent = 'arrived'; }, 300);
    });
  </script>
</body></html>"#;

/// Serves [`PAGE`] to every request on a free loopback port, from a thread that lives as long
/// as the test process; returns the page's URL.
fn serve_page() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the page");
    let addr = listener.local_addr().expect("the page server's address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request head (up to the blank line); the body of a GET is empty.
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                line.clear();
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: \
                 {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    format!("http://{addr}/")
}

#[test]
fn drives_a_static_page() {
    let url = serve_page();
    let b = Browser::start();
    b.navigate(&url);
    assert_eq!(b.current_url(), url);
    assert_eq!(b.execute("return document.title;"), json!("webdriver test"));

    let body = b.find("body");
    assert_eq!(b.attr(&body, "data-state").as_deref(), Some("idle"));
    assert_eq!(b.attr(&body, "no-such-attribute"), None);
    assert_eq!(b.find_all("li.item").len(), 3);
    assert_eq!(b.count("li.item"), 3);
    assert!(b.find_all("li.none").is_empty());
    assert!(
        b.try_find("#no-such-element").is_err(),
        "finding a missing element is an error"
    );
    assert_eq!(b.text(&b.find("#out")), "nothing yet");

    let name = b.find("#name");
    b.send_keys(&name, "browser");
    b.click(&b.find("#go"));
    assert_eq!(b.text_of("#out").as_deref(), Some("hello, browser"));
    assert_eq!(b.attr_of("body", "data-state").as_deref(), Some("clicked"));
    // Not there yet at the click; the page sets it 300 ms later.
    let later = b.wait_for("#later to say arrived", Duration::from_secs(10), |b| {
        b.text_of("#later").filter(|t| t == "arrived")
    });
    assert_eq!(later, "arrived");

    let dir = tempfile::tempdir().expect("temporary folder for the screenshot");
    let png = dir.path().join("shot").join("page.png");
    b.screenshot(&png);
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000);
    b.quit();
}

#[test]
#[should_panic(expected = "gave up waiting")]
fn wait_for_fails_with_a_message() {
    let url = serve_page();
    let b = Browser::start();
    b.navigate(&url);
    b.wait_for("a text that never comes", Duration::from_millis(500), |b| {
        b.text_of("#out").filter(|t| t == "never")
    });
}
