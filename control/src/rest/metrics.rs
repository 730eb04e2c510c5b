//! Prometheus metrics of a REST service, served at `GET /metrics` in the text exposition
//! format (version 0.0.4), written by hand: a few counters and histograms need no library.
//!
//! What is counted, by the [`track`] middleware that `finish` puts around every route:
//! - `yr_http_requests_total{route,method,status}`: every answered request, including the
//!   401s of the token check and the 413s of the body limit;
//! - `yr_http_request_duration_seconds{route}`: a histogram of the time from the request to
//!   its response head (a streamed response body is not included; a streamed request body is);
//! - `yr_function_invocations_total{function,status}` and
//!   `yr_function_invocation_duration_seconds{function}`: the same for the responses a handler
//!   marked with a [`FunctionLabel`] (invocations).
//!
//! Invariants, so that a scrape stays small whatever clients send:
//! - `route` is the route *template* (axum's [`MatchedPath`], e.g.
//!   `/serverless/v1/functions/{urn}/invocations`), never the raw path; requests that match no
//!   route are counted under [`UNMATCHED_ROUTE`];
//! - `method` is one of the standard methods, anything else is `OTHER`;
//! - at most [`MAX_FUNCTIONS`] distinct function names are kept; later ones are counted under
//!   [`OTHER_FUNCTIONS`], and a 404 (no such function) never adds a name.
//!
//! `/metrics` is an ordinary route: it needs the access token like every route but `/healthz`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};

/// Upper bounds (seconds) of the latency histograms' buckets; `+Inf` is implied.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Most distinct function names the invocation metrics keep.
pub const MAX_FUNCTIONS: usize = 1000;

/// The `function` label of invocations beyond [`MAX_FUNCTIONS`] names.
pub const OTHER_FUNCTIONS: &str = "_other";

/// The `route` label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Marks a response as an invocation of `function`, for the per-function metrics. A handler
/// returns it as a response part (`(FunctionLabel::new(&name), response)`) or inserts it into
/// the response's extensions (`resp.extensions_mut().insert(FunctionLabel::new(&name))`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionLabel(pub String);

impl FunctionLabel {
    pub fn new(function: impl Into<String>) -> FunctionLabel {
        FunctionLabel(function.into())
    }
}

impl IntoResponseParts for FunctionLabel {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Infallible> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

/// A latency histogram: cumulative bucket counts (bucket `i` counts observations
/// `<= BUCKETS[i]`), plus the count and sum of every observation.
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of one labelled series; `labels` is
    /// the already escaped `k="v",...` list (without braces).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Families {
    /// (route, method, status) → requests.
    requests: BTreeMap<(String, &'static str, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
    /// (function, status) → invocations.
    calls: BTreeMap<(String, u16), u64>,
    /// function → invocation latency.
    call_latency: BTreeMap<String, Histogram>,
}

/// One service's metrics. Clones share the counters.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Families>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The `method` label: the standard methods by name, anything else as `OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Families> {
        // A panic while holding the lock leaves only counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one answered request.
    pub fn record(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        function: Option<&str>,
    ) {
        let seconds = elapsed.as_secs_f64();
        let mut g = self.lock();
        *g.requests
            .entry((route.to_string(), method_label(method), status.as_u16()))
            .or_default() += 1;
        match g.latency.get_mut(route) {
            Some(h) => h.observe(seconds),
            None => {
                let mut h = Histogram::default();
                h.observe(seconds);
                g.latency.insert(route.to_string(), h);
            }
        }
        let Some(function) = function else {
            return;
        };
        let known = g.call_latency.contains_key(function);
        // A 404 is an unknown function: counting it by name would let any client add names.
        let name = if known {
            function
        } else if status == StatusCode::NOT_FOUND || g.call_latency.len() >= MAX_FUNCTIONS {
            OTHER_FUNCTIONS
        } else {
            function
        };
        *g.calls
            .entry((name.to_string(), status.as_u16()))
            .or_default() += 1;
        g.call_latency
            .entry(name.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Everything, in the text exposition format.
    pub fn render(&self) -> String {
        let g = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP yr_http_requests_total HTTP requests answered, by route template, method \
             and status.\n# TYPE yr_http_requests_total counter\n",
        );
        for ((route, method, status), n) in &g.requests {
            let _ = writeln!(
                out,
                "yr_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP yr_http_request_duration_seconds Time from a request to its response head, \
             by route template.\n# TYPE yr_http_request_duration_seconds histogram\n",
        );
        for (route, h) in &g.latency {
            let labels = format!("route=\"{}\"", escape(route));
            h.render(&mut out, "yr_http_request_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP yr_function_invocations_total Invocations answered, by function and \
             status.\n# TYPE yr_function_invocations_total counter\n",
        );
        for ((function, status), n) in &g.calls {
            let _ = writeln!(
                out,
                "yr_function_invocations_total{{function=\"{}\",status=\"{status}\"}} {n}",
                escape(function)
            );
        }
        out.push_str(
            "# HELP yr_function_invocation_duration_seconds Time from an invocation request to \
             its response head, by function.\n\
             # TYPE yr_function_invocation_duration_seconds histogram\n",
        );
        for (function, h) in &g.call_latency {
            let labels = format!("function=\"{}\"", escape(function));
            h.render(&mut out, "yr_function_invocation_duration_seconds", &labels);
        }
        out
    }
}

/// One request's measurement: started before it is handled, recorded with its response.
pub(crate) struct Timer {
    route: Option<MatchedPath>,
    method: Method,
    start: Instant,
}

impl Timer {
    pub(crate) fn start(req: &Request) -> Timer {
        Timer {
            route: req.extensions().get::<MatchedPath>().cloned(),
            method: req.method().clone(),
            start: Instant::now(),
        }
    }

    pub(crate) fn record(self, m: &Metrics, resp: &Response) {
        let function = resp
            .extensions()
            .get::<FunctionLabel>()
            .map(|f| f.0.as_str());
        m.record(
            self.route.as_ref().map_or(UNMATCHED_ROUTE, |r| r.as_str()),
            &self.method,
            resp.status(),
            self.start.elapsed(),
            function,
        );
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(m): State<Metrics>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()).into_response()
}

/// Checks `text` line by line against the text exposition format, for the tests of every
/// exposition (the REST services', the collector's): every family has a `# HELP` line, every
/// sample belongs to a family declared by `# TYPE` before it, no label is named `instance`
/// (Prometheus sets that one to the scraped target), counters end in `_total`, histogram series
/// have ascending `le` buckets ending in `+Inf` whose count equals `_count`. Returns the
/// first problem.
pub fn check_exposition(text: &str) -> Result<(), String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut last_bucket: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut inf: BTreeMap<String, f64> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let mut helped: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, _)) = rest.split_once(' ') {
                helped.insert(name.to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            let (Some(name), Some(kind), None) = (w.next(), w.next(), w.next()) else {
                return Err(format!("bad TYPE line {line:?}"));
            };
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("counter {name} does not end in _total"));
            }
            if !helped.contains(name) {
                return Err(format!("family {name} has no HELP line before its TYPE"));
            }
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels in {line:?}"))?,
            ),
            None => (series, ""),
        };
        let family = if types.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                .ok_or_else(|| format!("sample {name} has no TYPE before it"))?
        };
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .ok_or_else(|| format!("bad label {pair:?} in {line:?}"))?;
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad label name {k:?} in {line:?}"));
                }
                if k == "instance" {
                    return Err(format!(
                        "label name `instance` (Prometheus's, for the target) in {line:?}"
                    ));
                }
                let _ = v;
            }
        }
        if name.ends_with("_bucket") && family != name {
            let (rest, le) = match labels.rsplit_once(",le=\"") {
                Some(split) => split,
                None => (
                    "",
                    labels
                        .strip_prefix("le=\"")
                        .ok_or_else(|| format!("bucket without le: {line:?}"))?,
                ),
            };
            let le = le.trim_end_matches('"');
            let key = format!("{family}{{{rest}}}");
            let le: f64 = if le == "+Inf" {
                inf.insert(key.clone(), value);
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("bad le in {line:?}"))?
            };
            if let Some((prev_le, prev_n)) = last_bucket.get(&key) {
                if le <= *prev_le || value < *prev_n {
                    return Err(format!("buckets out of order at {line:?}"));
                }
            }
            last_bucket.insert(key, (le, value));
        } else if name.ends_with("_count") && family != name {
            counts.insert(format!("{family}{{{labels}}}"), value);
        }
    }
    for (k, n) in &counts {
        if inf.get(k) != Some(n) {
            return Err(format!("{k}: _count {n} but +Inf bucket {:?}", inf.get(k)));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exposition_is_valid_and_bounded() {
        let m = Metrics::default();
        let get = Method::GET;
        m.record(
            "/healthz",
            &get,
            StatusCode::OK,
            Duration::from_millis(2),
            None,
        );
        m.record(
            "/healthz",
            &get,
            StatusCode::OK,
            Duration::from_secs(100),
            None,
        );
        m.record(
            "/invocations/{tenant}/{namespace}/{function}",
            &Method::POST,
            StatusCode::OK,
            Duration::from_millis(30),
            Some("0@svc@a\"b"),
        );
        m.record(
            "/x",
            &Method::from_bytes(b"BREW").expect("method"),
            StatusCode::NOT_FOUND,
            Duration::ZERO,
            Some("nope"),
        );
        let text = m.render();
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains(
            "yr_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "yr_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.0025\"} 1"
        ));
        assert!(text
            .contains("yr_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 2"));
        assert!(text.contains("method=\"OTHER\""));
        assert!(text
            .contains("yr_function_invocations_total{function=\"0@svc@a\\\"b\",status=\"200\"} 1"));
        assert!(
            text.contains("function=\"_other\",status=\"404\"") && !text.contains("nope"),
            "a 404 adds no name: {text}"
        );
        for i in 0..MAX_FUNCTIONS + 5 {
            m.record(
                "/f",
                &Method::POST,
                StatusCode::OK,
                Duration::ZERO,
                Some(&format!("f{i}")),
            );
        }
        let text = m.render();
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}"));
        let names = text
            .lines()
            .filter(|l| l.starts_with("yr_function_invocation_duration_seconds_count"))
            .count();
        assert_eq!(names, MAX_FUNCTIONS, "function names are capped");
    }

    #[test]
    fn the_checker_catches_mistakes() {
        assert!(check_exposition("# TYPE a counter\na 1\n").is_err());
        assert!(check_exposition("b_total 1\n").is_err());
        let h = "# HELP h A histogram.\n# TYPE h histogram\n";
        assert!(check_exposition(&format!(
            "{h}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"
        ))
        .is_err());
        let good =
            format!("{h}h_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 2\nh_sum 3\nh_count 2\n");
        assert!(check_exposition(&good).is_ok());
        assert!(check_exposition(&good.replace("# HELP h A histogram.\n", "")).is_err());
        assert!(
            check_exposition("# HELP g A gauge.\n# TYPE g gauge\ng{instance=\"x\"} 1\n").is_err()
        );
    }
}
