//! The dashboard in a real browser: a headless Chromium (through `chromedriver`, see
//! tests/src/webdriver.rs) against a real two-node cluster started with `yr start`.
//!
//! What is covered, through the page only (the DOM contract of issue 14): logging in with the
//! REST token through the login form; every page (overview, nodes, functions, instances,
//! objects, masters) showing the cluster as `yr status --json` sees it — both nodes alive with
//! their plots, every running instance RUNNING with its pid, the function's call count at least
//! the calls made, the active master; a killed instance's row changing without a reload (the
//! page's own refresh, seen through `body[data-updated]`); an instance's log view showing what
//! the function printed, and following what it prints next while open; the one-time login URL of `yr dashboard --print` logging a fresh
//! browser in once and being refused the second time.
//!
//! Screenshots of every page go to `<CARGO_TARGET_TMPDIR>/dashboard-screenshots/` (the path is
//! printed). Needs `chromium` and `chromedriver` (`make test-deps` installs them); without them
//! the test fails saying so.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use yr_tests::cluster::{Cluster, ClusterStatus, InstanceStatus, NodeOptions, Process};
use yr_tests::webdriver::Browser;

/// How long the page may take to show something the cluster already knows (it refreshes
/// every ~2 s; the collectors sample on their own period).
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// How many times the test calls `hello`.
const CALLS: u64 = 5;

/// The section names of the dashboard's pages, in the nav's order.
const PAGES: &[&str] = &[
    "overview",
    "nodes",
    "functions",
    "instances",
    "objects",
    "masters",
];

/// `s` as a double-quoted CSS attribute value.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Where the screenshots go.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

/// Whether the first element matching `css` exists and is rendered (not `display: none`, not
/// inside a hidden parent, not `visibility: hidden`).
fn visible(b: &Browser, css: &str) -> bool {
    b.try_execute(
        "const e = document.querySelector(arguments[0]); \
         return !!e && e.getClientRects().length > 0 \
             && getComputedStyle(e).visibility !== 'hidden';",
        &[json!(css)],
    )
    .map(|v| v == json!(true))
    .unwrap_or(false)
}

/// `body[data-updated]`: the Unix ms of the page's last successful refresh.
fn updated(b: &Browser) -> Option<u64> {
    b.attr_of("body", "data-updated")?.trim().parse().ok()
}

/// The text of `td[data-field=FIELD]` in the row matching `row`.
fn field(b: &Browser, row: &str, field: &str) -> Option<String> {
    b.text_of(&format!("{row} td[data-field={}]", q(field)))
}

/// The integer a text starts with (`"5"`, `"5 calls"`); `None` if it starts with no digit.
fn leading_int(t: &str) -> Option<u64> {
    let digits: String = t.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A field's text as an integer (ignoring anything after the leading digits).
fn int_field(b: &Browser, row: &str, name: &str) -> Option<u64> {
    leading_int(&field(b, row, name)?)
}

/// Opens a page through its nav link and waits until its section is the one shown.
fn open_page(b: &Browser, name: &str) {
    let link = b.find(&format!("a[data-nav={}]", q(name)));
    b.click(&link);
    let section = format!("section#page-{name}");
    b.wait_for(
        &format!("{section} to be shown at #/{name} after clicking its nav link"),
        PAGE_DEADLINE,
        |b| {
            let hash = b.execute("return location.hash;");
            (visible(b, &section) && hash == json!(format!("#/{name}"))).then_some(())
        },
    );
    for other in PAGES.iter().filter(|p| **p != name) {
        assert!(
            !visible(b, &format!("section#page-{other}")),
            "page {other} is still shown on #/{name}"
        );
    }
}

/// Saves a screenshot of the current page as `<name>.png` and says where.
fn shoot(b: &Browser, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    b.screenshot(&path);
    println!("screenshot: {}", path.display());
}

/// Waits until the page has refreshed itself at least once after it was at `since`.
fn wait_refresh(b: &Browser, since: u64, what: &str) -> u64 {
    b.wait_for(
        &format!("body[data-updated] to move past {since} ({what})"),
        PAGE_DEADLINE,
        |b| updated(b).filter(|u| *u > since),
    )
}

/// The RUNNING instance of `function` (panics with the status if there is none).
fn running(st: &ClusterStatus, function: &str) -> InstanceStatus {
    st.instances_of(function)
        .into_iter()
        .find(|i| i.state == "RUNNING")
        .cloned()
        .unwrap_or_else(|| panic!("no RUNNING {function} instance:\n{}", st.raw))
}

#[test]
fn dashboard_in_a_browser() {
    // Instances are kept while the test looks at them: no idle stop for ten minutes.
    let mut c = Cluster::start(NodeOptions::cpu(2000).idle_timeout_ms(600_000));
    c.add_worker(NodeOptions::cpu(2000));
    let master_id = c.master().node_id.clone();
    let worker_id = c.session(1).node_id.clone();
    c.wait_for_all_nodes();

    // `hello`, called CALLS times; `crasher` (the same code, its `crash` handler) prints a line
    // to stderr and dies on its first call, and is restarted in place: its log has that line.
    c.deploy_example("hello", "hello", "hello", &[]);
    c.deploy_example("crasher", "hello", "crash", &["--max-retries", "5"]);
    for i in 0..CALLS {
        let out = c
            .invoke("hello", &format!("call {i}"))
            .expect_ok("invoke hello");
        assert!(
            out.stdout.starts_with(&format!("hello, call {i} (from ")),
            "{out}"
        );
    }
    c.invoke("crasher", "boom")
        .expect_err("a call that crashes its instance");
    let st = c.wait_until("hello RUNNING and crasher restarted and RUNNING", |st| {
        let h = st
            .instances_of("hello")
            .iter()
            .any(|i| i.state == "RUNNING");
        let cr = st
            .instances_of("crasher")
            .iter()
            .any(|i| i.state == "RUNNING" && i.restarts >= 1);
        (h && cr).then(|| st.clone())
    });
    let hello_inst = running(&st, "hello");
    let crasher = running(&st, "crasher");

    let session = c.master();
    let url = session.dashboard_url.clone().unwrap_or_else(|| {
        panic!(
            "{}/session.json has no dashboard_url (the master node runs the dashboard)",
            session.session_dir.display()
        )
    });
    let token_file = session
        .token_file
        .clone()
        .expect("the master's session.json names its token file");
    let token = std::fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("cannot read the REST token {}: {e}", token_file.display()))
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(screenshot_dir());

    // Log in through the form.
    let b = Browser::start();
    b.navigate(&url);
    b.wait_for("the login form", PAGE_DEADLINE, |b| {
        visible(b, "form#login").then_some(())
    });
    assert!(!visible(&b, "#app"), "the app is shown before logging in");
    shoot(&b, "login");
    b.send_keys(&b.find("form#login input#token"), &token);
    b.click(&b.find("form#login button#login-submit"));
    b.wait_for("#app after logging in with the token", PAGE_DEADLINE, |b| {
        visible(b, "#app").then_some(())
    });
    let first = b.wait_for(
        "a first refresh (body[data-updated])",
        PAGE_DEADLINE,
        updated,
    );
    wait_refresh(&b, first, "the page refreshes by itself");

    // Overview.
    open_page(&b, "overview");
    b.wait_for("overview: 2 nodes alive, 0 dead", PAGE_DEADLINE, |b| {
        let alive = leading_int(&b.text_of("[data-stat=\"nodes-alive\"]")?)?;
        let dead = leading_int(&b.text_of("[data-stat=\"nodes-dead\"]")?)?;
        (alive == 2 && dead == 0).then_some(())
    });
    let running_count = st.instances.iter().filter(|i| i.state == "RUNNING").count() as u64;
    b.wait_for(
        &format!("overview: at least {running_count} instances"),
        PAGE_DEADLINE,
        |b| {
            let n: u64 = b
                .text_of("[data-stat=\"instances\"]")?
                .trim()
                .parse()
                .ok()?;
            (n >= running_count).then_some(())
        },
    );
    for stat in [
        "calls-per-s",
        "errors-per-s",
        "cpu",
        "memory",
        "shm",
        "objects",
    ] {
        let css = format!("[data-stat={}]", q(stat));
        b.wait_for(
            &format!("overview: {css} has a value"),
            PAGE_DEADLINE,
            |b| b.text_of(&css).filter(|t| !t.is_empty()),
        );
    }
    shoot(&b, "overview");

    // Nodes: both alive, each with its four plots.
    open_page(&b, "nodes");
    for id in [&master_id, &worker_id] {
        let row = format!("tr[data-node-id={}]", q(id));
        b.wait_for(&format!("nodes: {row} alive"), PAGE_DEADLINE, |b| {
            (field(b, &row, "state")?.trim() == "alive").then_some(())
        });
        for plot in ["cpu", "memory", "arena", "spill"] {
            let css = format!("svg[data-plot={}][data-node-id={}]", q(plot), q(id));
            b.wait_for(&format!("nodes: plot {css}"), PAGE_DEADLINE, |b| {
                (b.count(&css) >= 1).then_some(())
            });
        }
    }
    shoot(&b, "nodes");

    // Functions: hello's calls at least those made.
    open_page(&b, "functions");
    let hello_row = "tr[data-function=\"hello\"]";
    let calls = b.wait_for(
        &format!("functions: hello with at least {CALLS} calls"),
        PAGE_DEADLINE,
        |b| int_field(b, hello_row, "calls").filter(|n| *n >= CALLS),
    );
    assert!(calls >= CALLS);
    let n = b.wait_for("functions: hello's instance count", PAGE_DEADLINE, |b| {
        int_field(b, hello_row, "instances")
    });
    assert!(n >= 1, "hello has a running instance, the page says {n}");
    for f in ["calls-per-s", "p50", "p99", "min", "max"] {
        assert!(
            field(&b, hello_row, f).is_some(),
            "functions: hello's row has no {f} field"
        );
    }
    assert!(
        b.count("tr[data-function=\"crasher\"]") == 1,
        "functions: crasher has one row"
    );
    // The master node's REST services, as its collector reads them.
    for service in ["frontend", "meta-service"] {
        let row = format!("tr[data-rest={}]", q(&format!("{service}@{master_id}")));
        b.wait_for(&format!("functions: {row}"), PAGE_DEADLINE, |b| {
            int_field(b, &row, "requests")
        });
    }
    shoot(&b, "functions");

    // Instances: every running instance RUNNING, on its node, with its pid.
    open_page(&b, "instances");
    for i in st.instances.iter().filter(|i| i.state == "RUNNING") {
        let row = format!("tr[data-instance-id={}]", q(&i.instance_id));
        b.wait_for(
            &format!("instances: {row} RUNNING with pid {}", i.pid),
            PAGE_DEADLINE,
            |b| {
                let state = field(b, &row, "state")?;
                let pid = int_field(b, &row, "pid")?;
                (state.trim() == "RUNNING" && pid == u64::from(i.pid)).then_some(())
            },
        );
        let node = field(&b, &row, "node").unwrap_or_default();
        let node = node.trim();
        assert!(
            !node.is_empty() && (i.node_id.contains(node) || node.contains(&i.node_id)),
            "instances: {} is on node {}, the page says {node:?}",
            i.instance_id,
            i.node_id
        );
        for f in ["restarts", "cpu", "rss", "error"] {
            assert!(
                field(&b, &row, f).is_some(),
                "instances: {row} has no {f} field"
            );
        }
    }
    shoot(&b, "instances");

    // Kill hello's process; its row changes by the page's own refresh, with no reload (a
    // marker set on the window survives).
    let row = format!("tr[data-instance-id={}]", q(&hello_inst.instance_id));
    let restarts_before = b.wait_for("instances: hello's restarts", PAGE_DEADLINE, |b| {
        int_field(b, &row, "restarts")
    });
    b.execute("window.__yrNoReload = 'still here';");
    let victim = Process::find(hello_inst.pid, "hello instance").expect("hello's process runs");
    let pid = i32::try_from(hello_inst.pid).expect("pid fits in pid_t");
    let before_kill = updated(&b).expect("body[data-updated] is set");
    // SAFETY: kill(2) on the instance's pid, checked above to be the running instance.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9 {pid}");
    let mut seen = before_kill;
    let (restarts, new_pid, state) = b.wait_for(
        &format!(
            "instances: {} to show a restart or another pid after kill -9 {pid}",
            hello_inst.instance_id
        ),
        Duration::from_secs(60),
        |b| {
            // Only a refresh can change the row: read it when data-updated moved.
            let u = updated(b)?;
            if u <= seen {
                return None;
            }
            seen = u;
            let restarts = int_field(b, &row, "restarts")?;
            let pid = int_field(b, &row, "pid").unwrap_or(0);
            let state = field(b, &row, "state").unwrap_or_default();
            (restarts > restarts_before || pid != u64::from(hello_inst.pid))
                .then_some((restarts, pid, state))
        },
    );
    println!(
        "after kill -9 {pid}: restarts {restarts_before} -> {restarts}, pid {new_pid}, {state}"
    );
    assert_eq!(
        b.execute("return window.__yrNoReload || null;"),
        json!("still here"),
        "the page was reloaded (the row must change by the page's own refresh)"
    );
    assert!(victim.is_gone(), "pid {pid} still runs");
    shoot(&b, "instances-after-kill");

    // The crasher's log view: what it printed to stderr before dying.
    let logs = format!("button[data-logs={}]", q(&crasher.instance_id));
    b.click(&b.find(&logs));
    b.wait_for(
        &format!("#log-view for {}", crasher.instance_id),
        PAGE_DEADLINE,
        |b| {
            (visible(b, "#log-view")
                && b.attr_of("#log-view", "data-instance").as_deref()
                    == Some(crasher.instance_id.as_str()))
            .then_some(())
        },
    );
    b.wait_for(
        "the log view to show the crasher's \"crash requested\" line",
        PAGE_DEADLINE,
        |b| {
            b.text_of("pre#log-text")
                .filter(|t| t.contains("crash requested"))
        },
    );
    // The view follows the log live: another crash appends the line again while it is open.
    c.yr(&[
        "invoke",
        "crasher",
        "--instance",
        &crasher.instance_id,
        "--data",
        "boom",
    ])
    .expect_err("a second call that crashes the crasher");
    b.wait_for(
        "the open log view to follow the crasher's second \"crash requested\" line",
        PAGE_DEADLINE,
        |b| {
            b.text_of("pre#log-text")
                .filter(|t| t.matches("crash requested").count() >= 2)
        },
    );
    assert_eq!(
        b.attr_of("#log-view", "data-instance").as_deref(),
        Some(crasher.instance_id.as_str()),
        "the log view still shows the crasher"
    );
    shoot(&b, "instance-log");
    b.click(&b.find("button#log-close"));
    b.wait_for("#log-view closed", PAGE_DEADLINE, |b| {
        (!visible(b, "#log-view")).then_some(())
    });

    // Objects: a row per node.
    open_page(&b, "objects");
    for id in [&master_id, &worker_id] {
        let css = format!("section#page-objects tr[data-node-id={}]", q(id));
        b.wait_for(&format!("objects: {css}"), PAGE_DEADLINE, |b| {
            (b.count(&css) == 1).then_some(())
        });
    }
    shoot(&b, "objects");

    // Masters: the master node's function master is the active one.
    open_page(&b, "masters");
    let row = format!("tr[data-master={}]", q(&master_id));
    b.wait_for(&format!("masters: {row} active"), PAGE_DEADLINE, |b| {
        (field(b, &row, "role")?.trim() == "active").then_some(())
    });
    shoot(&b, "masters");
    b.quit();

    // The one-time login URL: a fresh browser is logged in by it, once.
    let out = c
        .yr(&["dashboard", "--print"])
        .expect_ok("yr dashboard --print");
    let login_url = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("yr dashboard --print prints no URL\n{out}"))
        .to_string();
    let fresh = Browser::start();
    fresh.navigate(&login_url);
    fresh.wait_for(
        "#app in a fresh browser after opening the one-time login URL",
        PAGE_DEADLINE,
        |b| visible(b, "#app").then_some(()),
    );
    assert!(
        !visible(&fresh, "form#login"),
        "the login form is still shown after the one-time login"
    );
    fresh.wait_for("a refresh after the one-time login", PAGE_DEADLINE, updated);
    shoot(&fresh, "one-time-login");
    fresh.quit();

    // A second use, in another fresh browser: refused (the server answers when the page
    // loads, and navigate waits for the load).
    let again = Browser::start();
    again.navigate(&login_url);
    let text = again
        .execute("return document.body ? document.body.innerText : '';")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !visible(&again, "#app"),
        "a second use of the one-time login URL logged in:\n{text}"
    );
    assert!(
        text.contains("used") || visible(&again, "form#login"),
        "a second use of the one-time login URL says it was used, or shows the login form:\n{text}"
    );
    // And the dashboard itself still asks for a login in that browser.
    again.navigate(&url);
    again.wait_for(
        "the login form in the browser whose one-time login was refused",
        PAGE_DEADLINE,
        |b| visible(b, "form#login").then_some(()),
    );
    assert!(!visible(&again, "#app"), "the app is shown without a login");
    again.quit();

    println!("screenshots in {}", screenshot_dir().display());
    c.stop_node(1, false).expect_ok("stop the worker");
    c.stop_node(0, false).expect_ok("stop the master");
}
