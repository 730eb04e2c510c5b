//! Calls that time out, and instances that keep crashing, on a real cluster (etcd, master,
//! proxy, agent started by `yr start`; function processes from the example executables).
//!
//! - A stateful call that timed out never applies afterwards: the counter's slow increment times
//!   out, and no later read sees it (the instance is recycled and restarts from fresh state).
//! - Many timed-out calls do not grow the function process's threads: they stay within the
//!   function's concurrency (read from `/proc/<pid>/status`).
//! - A crash-looping instance is restarted at growing intervals (measured from the failure times
//!   the master writes in its record).
//! - A function process started by hand against a socket the test serves as its proxy: a
//!   cancelled call that has not started is dropped (answered `cancelled`); a cancelled stateful
//!   call that is running ends the process (exit status `RECYCLED_EXIT`) before anything else is
//!   served; a cancelled stateless call that is running finishes and the process serves on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{CreateInstanceRequest, Empty, ErrorKind, InstanceRecord, InvokeRequest};
use yr_tests::cluster::{example, example_dir, member_endpoint, Cluster, NodeOptions, Session};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn proxy(s: &Session) -> ProxyClient<Channel> {
    let ch = member_endpoint(s, &s.proxy_address)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the proxy at {}: {e}", s.proxy_address));
    ProxyClient::new(ch)
}

async fn master(s: &Session) -> MasterClient<Channel> {
    let ch = member_endpoint(s, &s.master_address)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the master at {}: {e}", s.master_address));
    MasterClient::new(ch)
}

fn request(
    function: &str,
    instance: &str,
    method: &str,
    data: &str,
    timeout_ms: u32,
) -> InvokeRequest {
    InvokeRequest {
        function: function.into(),
        instance: instance.into(),
        method: method.into(),
        payload: data.as_bytes().to_vec().into(),
        timeout_ms,
        ..Default::default()
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// The number of threads of process `pid`.
fn threads(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads line in /proc/{pid}/status:\n{status}"))
}

#[test]
fn a_stateful_call_that_timed_out_never_applies_afterwards() {
    let c = Cluster::start(NodeOptions::default());
    let counter = example("counter");
    let toml = example_dir("counter").join("function.toml");
    c.deploy(&[
        "--file",
        toml.to_str().expect("UTF-8 path"),
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--max-retries",
        "3",
    ]);
    c.yr(&["instance", "create", "counter", "--name", "c1"])
        .expect_ok("create instance c1");
    let pid_before = c.status().named("c1").expect("c1 in status").pid;

    let rt = runtime();
    let mut p = rt.block_on(proxy(c.master()));
    let mut call = |method: &str, data: &str, timeout_ms: u32| {
        rt.block_on(p.invoke(request("counter", "c1", method, data, timeout_ms)))
            .unwrap_or_else(|e| panic!("invoke {method}: {e}"))
            .into_inner()
    };
    let r = call("add", "1", 10_000);
    assert_eq!(
        (r.error.as_str(), text(&r.payload).as_str()),
        ("", "1"),
        "{r:?}"
    );

    // The slow increment (3 s) times out after 500 ms: the caller is told it failed...
    let t0 = Instant::now();
    let r = call("add_after", "3000 1", 500);
    assert_eq!(r.error_kind, ErrorKind::ErrorTimeout as i32, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(2900),
        "the caller heard of the timeout only after {:?}: it waited for the call",
        t0.elapsed()
    );

    // ...so no read may ever see it applied, also after the 3 s it would have taken. The
    // instance is recycled (its state was in the process that ran the call) and restarts from
    // its constructor: reads during the restart may fail, those that answer say 0.
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    while t0.elapsed() < Duration::from_secs(6) || seen.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no read answered within 60 s: {errors:?}"
        );
        let r = call("get", "", 5_000);
        if r.error.is_empty() {
            seen.push(text(&r.payload));
        } else {
            errors.push(r.error);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !seen.iter().any(|v| v == "2"),
        "a read saw the timed-out increment applied: {seen:?}"
    );
    assert!(
        seen.iter().all(|v| v == "0"),
        "reads after the recycle see the restarted instance's fresh state: {seen:?}"
    );
    let st = c.status();
    let c1 = st.named("c1").expect("c1 in status");
    assert_eq!(
        (c1.state.as_str(), c1.restarts),
        ("RUNNING", 1),
        "the instance was recycled once and runs again\n{}",
        st.raw
    );
    assert_ne!(c1.pid, pid_before, "a new process serves it");
    // And it serves on, in order.
    let r = call("add", "5", 10_000);
    assert_eq!(
        (r.error.as_str(), text(&r.payload).as_str()),
        ("", "5"),
        "{r:?}"
    );
}

#[test]
fn timed_out_calls_do_not_grow_the_function_process_threads() {
    let c = Cluster::start(NodeOptions::default());
    let hello = example("hello");
    c.deploy(&[
        "--name",
        "sleeper",
        "--code",
        hello.to_str().expect("UTF-8 path"),
        "--handler",
        "sleep",
        "--concurrency",
        "2",
        "--max-instances",
        "1",
    ]);
    let rt = runtime();
    let p = rt.block_on(proxy(c.master()));
    let call = |data: &str, timeout_ms: u32| {
        let mut p = p.clone();
        let req = request("sleeper", "", "", data, timeout_ms);
        async move { p.invoke(req).await.map(|r| r.into_inner()) }
    };
    let first = rt
        .block_on(call("10", 30_000))
        .unwrap_or_else(|e| panic!("first call: {e}"));
    assert!(first.error.is_empty(), "{first:?}");
    let instance = first.instance_id.clone();
    let pid = c
        .status()
        .instance(&instance)
        .unwrap_or_else(|| panic!("{instance} in status"))
        .pid;
    let before = threads(pid);

    // 60 calls that each would sleep 5 s, each given 200 ms, in 15 rounds of 4: every one times
    // out. Were a timed-out call's slot freed at its deadline, each round would start two more
    // sleeping threads in the process (about 30 in all).
    let started = Instant::now();
    let outcomes = rt.block_on(async {
        let mut kinds = Vec::new();
        for _ in 0..15 {
            let batch: Vec<_> = (0..4).map(|_| tokio::spawn(call("5000", 200))).collect();
            for t in batch {
                let r = t.await.expect("the call task").expect("a reply");
                kinds.push(r.error_kind);
            }
        }
        kinds
    });
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timed-out calls took {:?} to answer",
        started.elapsed()
    );
    assert!(
        outcomes
            .iter()
            .all(|k| *k == ErrorKind::ErrorTimeout as i32 || *k == ErrorKind::ErrorBusy as i32),
        "every call timed out (or was refused as busy): {outcomes:?}"
    );
    let after = threads(pid);
    assert!(
        after <= before + 2,
        "the process had {before} threads, {after} after 60 timed-out calls: more call threads \
         than the function's concurrency (2)"
    );

    // The calls given up on end in their time (5 s after they started) and give their slots
    // back: the same process serves again soon, without having been recycled, and without a
    // queue of abandoned calls to work through first.
    let deadline = started + Duration::from_secs(15);
    loop {
        let r = rt
            .block_on(call("10", 2_000))
            .unwrap_or_else(|e| panic!("call after the timeouts: {e}"));
        if r.error.is_empty() {
            assert_eq!(r.instance_id, instance, "served by the same instance");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no call succeeded within 15 s of the timed-out calls: {r:?}"
        );
    }
    let st = c.status();
    let i = st.instance(&instance).expect("the instance in status");
    assert_eq!((i.pid, i.restarts), (pid, 0), "not recycled\n{}", st.raw);
    assert!(threads(pid) <= before + 2);
}

#[test]
fn a_crash_looping_instance_is_restarted_at_growing_intervals() {
    let c = Cluster::start(NodeOptions::default());
    let counter = example("counter");
    // The executable registers no class of this name: each process ends as soon as the proxy
    // configures it.
    c.deploy(&[
        "--name",
        "crashloop",
        "--code",
        counter.to_str().expect("UTF-8 path"),
        "--handler",
        "no-such-class",
        "--max-retries",
        "8",
    ]);
    let rt = runtime();
    let mut m = rt.block_on(master(c.master()));
    // It may be seen RUNNING for a moment (between its hello and its exit), or the create may
    // give up after its short wait: either way the restarts go on.
    let _ = rt.block_on(m.create_instance(CreateInstanceRequest {
        function: "crashloop".into(),
        name: "cl".into(),
        wait_ms: 500,
        ..Default::default()
    }));

    // The master's record of each failure (by restart count), polled until the sixth. The
    // gaps measured are from the third failure on: the pauses before (none, then 1 s) are
    // comparable to how long a process takes to start and fail on a loaded machine, whose
    // jitter would blur their order; 2 s, 4 s and 8 s stand out from it.
    // A record is taken while its restart is pending (FAILED, with the pause the master
    // decided); a poll delayed by a loaded machine may miss one such window, so what follows
    // asks for most of them, not all.
    let mut failures: BTreeMap<u32, InstanceRecord> = BTreeMap::new();
    let mut highest = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while highest < 6 {
        assert!(
            Instant::now() < deadline,
            "fewer than 6 restarts within 120 s: {failures:#?}"
        );
        let st = rt
            .block_on(m.status(Empty {}))
            .unwrap_or_else(|e| panic!("status: {e}"))
            .into_inner();
        if let Some(r) = st.instances.iter().find(|r| r.name == "cl") {
            highest = highest.max(r.restarts);
            if r.restarts > 0
                && r.failed_unix_ms != 0
                && r.state == yr_proto::InstanceState::Failed as i32
            {
                failures.entry(r.restarts).or_insert_with(|| r.clone());
            }
            assert_ne!(
                r.state,
                yr_proto::InstanceState::Fatal as i32,
                "FATAL before 6 restarts: {r:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    failures.retain(|n, _| *n >= 3);
    assert!(
        failures.len() >= 3,
        "most failures from the third on were seen pending their restart (each pause is at \
         least 2 s): {failures:#?}"
    );
    let records: Vec<&InstanceRecord> = failures.values().collect();
    // Each restart waited for its due time before the instance failed again, and the gaps
    // between consecutive failures grow.
    let mut gaps = Vec::new();
    for w in records.windows(2) {
        assert!(
            w[1].failed_unix_ms >= w[0].restart_at_unix_ms,
            "failed at {} before its restart was due at {}",
            w[1].failed_unix_ms,
            w[0].restart_at_unix_ms
        );
        if w[1].restarts == w[0].restarts + 1 {
            gaps.push(w[1].failed_unix_ms.saturating_sub(w[0].failed_unix_ms));
        }
    }
    eprintln!("gaps between consecutive failures (ms): {gaps:?}");
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "the gaps between failures (ms) do not grow: {gaps:?}"
    );
    for r in &records {
        assert_eq!(
            r.crash_streak, r.restarts,
            "one streak of quick failures: {r:?}"
        );
    }
    let pauses: Vec<u64> = records
        .iter()
        .map(|r| r.restart_at_unix_ms.saturating_sub(r.failed_unix_ms))
        .collect();
    assert!(
        pauses.windows(2).all(|p| p[1] > p[0]),
        "the pauses the master decided do not grow: {pauses:?}"
    );
    c.yr(&["instance", "kill", "cl"]);
}

/// A function process started by hand against a socket this test serves as its proxy: the
/// test sends its configuration, calls and cancels, and reads what the process answers.
struct FakeProxy {
    child: std::process::Child,
    handler: String,
    conn: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl FakeProxy {
    fn start(program: &str, handler: &str, stateful: bool, concurrency: u32) -> FakeProxy {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("proxy.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let child = std::process::Command::new(example(program))
            .env("YR_INSTANCE_ID", "i-1")
            .env("YR_PROXY_SOCKET", &path)
            .env("YR_PROXY_ADDRESS", "127.0.0.1:1")
            .env("YR_INSTANCE_SECRET", "s")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let (conn, _) = listener.accept().expect("the process connects");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut p = FakeProxy {
            child,
            handler: handler.into(),
            conn,
            buf: Vec::new(),
            _dir: dir,
        };
        match p.read() {
            Some(yr_proto::instance_message::Msg::Hello(h)) => {
                assert!(h.cancels, "this runtime says it handles cancels")
            }
            other => panic!("expected a hello, got {other:?}"),
        }
        p.send(yr_proto::proxy_message::Msg::Config(
            yr_proto::InstanceConfig {
                function: "f".into(),
                handler: handler.into(),
                stateful,
                name: String::new(),
                concurrency,
            },
        ));
        p
    }

    fn send(&mut self, msg: yr_proto::proxy_message::Msg) {
        use std::io::Write;
        let f =
            yr_proto::frame::to_frame(&yr_proto::ProxyMessage { msg: Some(msg) }).expect("encode");
        self.conn.write_all(&f).expect("write to the process");
    }

    /// As [`FakeProxy::call`], for a process that may have closed its end already: a write
    /// that finds the socket closed is not an error.
    fn try_call(&mut self, call_id: u64, method: &str, payload: &str) {
        use std::io::Write;
        let msg = yr_proto::proxy_message::Msg::Call(yr_proto::Call {
            call_id,
            handler: self.handler.clone(),
            payload: payload.as_bytes().to_vec().into(),
            timeout_ms: 0,
            method: method.into(),
        });
        let f =
            yr_proto::frame::to_frame(&yr_proto::ProxyMessage { msg: Some(msg) }).expect("encode");
        match self.conn.write_all(&f) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => panic!("write to the process: {e}"),
        }
    }

    fn call(&mut self, call_id: u64, method: &str, payload: &str) {
        self.send(yr_proto::proxy_message::Msg::Call(yr_proto::Call {
            call_id,
            handler: self.handler.clone(),
            payload: payload.as_bytes().to_vec().into(),
            timeout_ms: 0,
            method: method.into(),
        }));
    }

    fn cancel(&mut self, call_id: u64) {
        self.send(yr_proto::proxy_message::Msg::Cancel(yr_proto::CancelCall {
            call_id,
        }));
    }

    /// The next message from the process (`None` once it closed its end; a process that
    /// ends with frames of ours unread resets the connection instead).
    fn read(&mut self) -> Option<yr_proto::instance_message::Msg> {
        match yr_proto::frame::read::<yr_proto::InstanceMessage>(&mut self.conn, &mut self.buf) {
            Ok(m) => m.and_then(|m| m.msg),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read from the process: {e}"),
        }
    }

    fn result(&mut self) -> yr_proto::CallResult {
        match self.read() {
            Some(yr_proto::instance_message::Msg::Result(r)) => r,
            other => panic!("expected a call's result, got {other:?}"),
        }
    }
}

/// Waits until a thread of process `pid` named `name` sleeps in the kernel (the handler's
/// `thread::sleep`): the call has started in user code.
fn wait_sleeping(pid: u32, name: &str) {
    let sleeps = [libc::SYS_nanosleep, libc::SYS_clock_nanosleep];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("the threads of {pid}: {e}"));
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let syscall = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            let number = syscall
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
            if comm.trim() == name && number.is_some_and(|n: libc::c_long| sleeps.contains(&n)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no thread {name:?} of {pid} sleeping within 10 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stateful_process_drops_a_cancelled_queued_call_and_ends_on_a_cancelled_running_one() {
    let mut p = FakeProxy::start("counter", "counter", true, 1);
    p.call(1, "add_after", "1500 1"); // runs for 1.5 s
    wait_sleeping(p.child.id(), "yr-instance");
    p.call(2, "add", "10"); // waits behind it
    p.cancel(2);
    let r = p.result();
    assert_eq!(
        (r.call_id, r.cancelled, r.error.as_str()),
        (2, true, ""),
        "the queued call is dropped before it starts: {r:?}"
    );
    // The running call cannot be stopped: the process ends before anything else is served,
    // with neither call's result.
    p.cancel(1);
    // The process may already have closed its end: then the call cannot even be written,
    // which is the same outcome.
    p.try_call(3, "get", "");
    assert_eq!(
        p.read(),
        None,
        "the process answers nothing more and closes"
    );
    let out = p.child.wait().expect("the process ends");
    assert_eq!(out.code(), Some(yr_runtime::RECYCLED_EXIT), "{out:?}");
    let mut stderr = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        stderr.contains("instance recycled") && stderr.contains("call 1"),
        "stderr says why: {stderr}"
    );
}

#[test]
fn a_stateless_process_drops_a_cancelled_queued_call_and_finishes_a_running_one() {
    let mut p = FakeProxy::start("hello", "sleep", false, 1);
    p.call(1, "", "700"); // the one call thread sleeps 0.7 s
    wait_sleeping(p.child.id(), "yr-call");
    p.call(2, "", "10"); // waits for the thread
    p.cancel(2);
    let r = p.result();
    assert_eq!((r.call_id, r.cancelled), (2, true), "{r:?}");
    // A running stateless call is left to finish: its result frees its slot.
    p.cancel(1);
    let r = p.result();
    assert_eq!(
        (r.call_id, r.cancelled, r.error.as_str()),
        (1, false, ""),
        "{r:?}"
    );
    // And the process serves on.
    p.call(3, "", "1");
    let r = p.result();
    assert_eq!((r.call_id, r.error.as_str()), (3, ""), "{r:?}");
    assert_eq!(p.child.try_wait().ok().flatten(), None, "still running");
}
