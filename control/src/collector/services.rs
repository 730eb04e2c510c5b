//! The node's REST services (the frontend, the meta service) as the collector sees them: it
//! reads each one's own `/metrics` (the text format `rest::metrics` writes) once a round and
//! sums the request counters and latency histograms over routes.
//!
//! Invariants: requests to `/metrics` are left out (they are scrapes, the collector's own
//! among them, not the service's traffic); a service that does not answer keeps the counters of
//! its last answer, marked down, so that a pause never reads as a counter reset and a burst;
//! nothing here waits longer than the deadline it is given.

use std::time::Duration;

use super::api::{RestService, REST_LATENCY_BUCKETS};
use crate::http_client::Pinned;

/// The largest `/metrics` body read (a service's exposition is bounded by its route and
/// function limits; anything past this is a fault).
const MAX_BODY: usize = 8 << 20;

/// Request counters and latency histogram summed over a service's routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    /// Cumulative, over [`REST_LATENCY_BUCKETS`].
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// The route whose requests are scrapes.
const SCRAPE_ROUTE: &str = "/metrics";

/// One sample line of the text format.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses one sample line: its metric name, its labels and its value.
fn parse_line(line: &str) -> Result<Sample<'_>, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| "a sample without a value".to_string())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("a sample without a name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s
                .find('=')
                .ok_or_else(|| "a label without a value".to_string())?;
            let key = s[..eq].trim().to_string();
            s = s[eq + 1..].trim_start();
            s = s
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key}: its value is not quoted"))?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("label {key}: its value is not closed"))?;
            labels.push((key, value));
            s = s[end + 1..].trim_start();
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else if !s.starts_with('}') {
                return Err("labels not separated by commas".into());
            }
        }
    }
    // The value, then an optional timestamp.
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("{name}: no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("{name}: {v:?} is not a number"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A counter's value as a whole number (negative or not-a-number values count nothing).
fn whole(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// Sums `text` (a REST service's `/metrics`) over routes, leaving out [`SCRAPE_ROUTE`];
/// fails naming the first line that is not in the text format.
pub fn summarize(text: &str) -> Result<Totals, String> {
    let mut t = Totals {
        buckets: vec![0; REST_LATENCY_BUCKETS.len()],
        ..Default::default()
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Sample {
            name,
            labels,
            value,
        } = parse_line(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if label(&labels, "route") == Some(SCRAPE_ROUTE) {
            continue;
        }
        match name {
            "yr_http_requests_total" => {
                t.requests += whole(value);
                let status = label(&labels, "status").and_then(|s| s.parse::<u16>().ok());
                if status.is_some_and(|s| s >= 500) {
                    t.errors += whole(value);
                }
            }
            "yr_http_request_duration_seconds_bucket" => {
                let Some(le) = label(&labels, "le").and_then(|l| l.parse::<f64>().ok()) else {
                    continue;
                };
                // A bound this version does not know (another version's service) is skipped.
                if let Some(i) = REST_LATENCY_BUCKETS
                    .iter()
                    .position(|b| (b - le).abs() <= b * 1e-9)
                {
                    t.buckets[i] += whole(value);
                }
            }
            "yr_http_request_duration_seconds_count" => t.count += whole(value),
            "yr_http_request_duration_seconds_sum" if value.is_finite() && value > 0.0 => {
                t.sum_seconds += value
            }
            _ => {}
        }
    }
    Ok(t)
}

/// Reads `service`'s `/metrics` at `url` with the REST `token`, within `deadline` (an https
/// `url` through `tls`); `last` is what the previous round found (kept, marked down, if this
/// read fails).
pub async fn scrape(
    service: &str,
    url: &str,
    token: Option<&str>,
    deadline: Duration,
    tls: Option<&Pinned>,
    last: Option<&RestService>,
) -> RestService {
    let read = async {
        let reply =
            crate::http_client::get_with(url, SCRAPE_ROUTE, token, deadline, MAX_BODY, tls).await?;
        if reply.status != 200 {
            return Err(format!("{url}{SCRAPE_ROUTE} answered {}", reply.status));
        }
        if reply.cut {
            return Err(format!(
                "{url}{SCRAPE_ROUTE} is larger than {} MiB",
                MAX_BODY >> 20
            ));
        }
        let text = String::from_utf8(reply.body)
            .map_err(|_| format!("{url}{SCRAPE_ROUTE} is not UTF-8"))?;
        summarize(&text).map_err(|e| format!("{url}{SCRAPE_ROUTE}: {e}"))
    };
    match read.await {
        Ok(t) => RestService {
            service: service.to_string(),
            url: url.to_string(),
            up: true,
            error: String::new(),
            requests_total: t.requests,
            errors_total: t.errors,
            latency_buckets: t.buckets,
            latency_count: t.count,
            latency_sum_seconds: t.sum_seconds,
        },
        Err(error) => down(service, url, error, last),
    }
}

/// `service` not answering at `url` because of `error`, with the counters of `last`.
pub fn down(service: &str, url: &str, error: String, last: Option<&RestService>) -> RestService {
    RestService {
        service: service.to_string(),
        url: url.to_string(),
        up: false,
        error,
        ..last.cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::metrics::Metrics;
    use axum::http::{Method, StatusCode};

    #[test]
    fn sums_what_the_rest_services_write_leaving_out_scrapes() {
        let m = Metrics::default();
        let ms = Duration::from_millis;
        m.record("/a", &Method::GET, StatusCode::OK, ms(2), None);
        m.record("/a", &Method::GET, StatusCode::OK, ms(40), None);
        m.record(
            "/b/{x}",
            &Method::POST,
            StatusCode::BAD_GATEWAY,
            ms(3),
            Some("f"),
        );
        m.record(
            "/b/{x}",
            &Method::POST,
            StatusCode::NOT_FOUND,
            ms(1),
            Some("g"),
        );
        m.record(SCRAPE_ROUTE, &Method::GET, StatusCode::OK, ms(1), None);
        m.record("/quote\"d", &Method::GET, StatusCode::OK, ms(1), None);
        let t = summarize(&m.render()).expect("the REST services' own format");
        assert_eq!(t.requests, 5, "every request but the scrape");
        assert_eq!(t.errors, 1, "the 502 only");
        assert_eq!(t.count, 5);
        let under = |le: f64| {
            let i = REST_LATENCY_BUCKETS
                .iter()
                .position(|b| *b == le)
                .expect("a bound");
            t.buckets[i]
        };
        assert_eq!(under(0.001), 2, "1 ms twice");
        assert_eq!(under(0.0025), 3);
        assert_eq!(under(0.005), 4);
        assert_eq!(under(0.05), 5);
        assert!((t.sum_seconds - 0.047).abs() < 1e-9, "{}", t.sum_seconds);
    }

    #[test]
    fn an_empty_exposition_is_zero_and_garbage_names_its_line() {
        let t = summarize("# HELP x y\n# TYPE x counter\n").expect("no samples");
        assert_eq!((t.requests, t.count), (0, 0));
        let e = summarize("# HELP x y\nyr_http_requests_total{route=\"/a\" 3\n")
            .expect_err("an unclosed label list");
        assert!(e.starts_with("line 2:"), "{e}");
        let e = summarize("yr_http_requests_total{route=\"/a\"} many\n").expect_err("no number");
        assert!(e.contains("not a number"), "{e}");
        let e = summarize("yr_http_requests_total{route=/a} 1\n").expect_err("unquoted");
        assert!(e.contains("not quoted"), "{e}");
    }

    #[test]
    fn labels_with_escapes_and_timestamps_parse() {
        let s = parse_line(r#"m{a="x\"y",b="1\\2",c="l\n"} 7 1700000000000"#).expect("valid");
        assert_eq!(s.name, "m");
        assert_eq!(s.value, 7.0);
        assert_eq!(label(&s.labels, "a"), Some("x\"y"));
        assert_eq!(label(&s.labels, "b"), Some("1\\2"));
        assert_eq!(label(&s.labels, "c"), Some("l\n"));
        let s = parse_line("m{} +Inf").expect("no labels");
        assert!(s.labels.is_empty() && s.value.is_infinite());
        let s = parse_line("m 1").expect("no braces");
        assert!(s.labels.is_empty());
        let s = parse_line(r#"m{a="1",} 1"#).expect("a trailing comma");
        assert_eq!(label(&s.labels, "a"), Some("1"));
    }

    #[tokio::test]
    async fn a_service_that_does_not_answer_keeps_its_last_counters_marked_down() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        drop(l);
        let last = RestService {
            service: "frontend".into(),
            url: url.clone(),
            up: true,
            requests_total: 42,
            ..Default::default()
        };
        let s = scrape(
            "frontend",
            &url,
            Some("t"),
            Duration::from_millis(500),
            None,
            Some(&last),
        )
        .await;
        assert!(!s.up);
        assert_eq!(s.requests_total, 42);
        assert!(s.error.contains("cannot connect"), "{}", s.error);
    }
}
