//! The function proxy's instance socket, where function processes take their calls, against
//! bad input from a real process: a stranger that sends garbage, a frame that is not a hello, a
//! hello naming no instance, a connection closed at once. Each gets a `refused` frame that names the problem (or is
//! dropped), and the proxy keeps serving the instances it has. A real function process started
//! by hand with an unknown instance ID exits with the proxy's reason on stderr.
//!
//! A hello is served only with the instance's secret that the agent gave that instance's process:
//! a forged hello (no secret, a wrong one, another instance's) is refused, and so is a second
//! hello for an instance that is connected, even with the right secret.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use yr_proto::{
    frame, instance_message, proxy_message, InstanceHello, InstanceMessage, ProxyMessage,
};
use yr_tests::cluster::{example, example_dir, Cluster, NodeOptions};

fn socket_of(c: &Cluster) -> PathBuf {
    c.master().session_dir.join("node").join("proxy.sock")
}

fn connect(path: &PathBuf) -> UnixStream {
    let s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s
}

/// The proxy's answer to what was sent: the reason it refused, and that it closed afterwards.
fn refusal(mut s: UnixStream) -> String {
    let mut buf = Vec::new();
    let why = match frame::read::<ProxyMessage>(&mut s, &mut buf) {
        Ok(Some(ProxyMessage {
            msg: Some(proxy_message::Msg::Refused(why)),
        })) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).expect("read to the close");
    assert_eq!(n, 0, "the proxy closes after refusing");
    why
}

fn hello(id: &str) -> Vec<u8> {
    hello_with(id, "")
}

fn hello_with(id: &str, secret: &str) -> Vec<u8> {
    frame::to_frame(&InstanceMessage {
        msg: Some(instance_message::Msg::Hello(InstanceHello {
            instance_id: id.into(),
            handlers: vec!["hello".into()],
            pid: std::process::id(),
            secret: secret.into(),
            cancels: true,
        })),
    })
    .expect("encode")
}

#[test]
fn bad_input_on_the_instance_socket_is_refused_and_the_proxy_keeps_serving() {
    let c = Cluster::start(NodeOptions::default());
    let path = socket_of(&c);
    let toml = example_dir("hello").join("function.toml");
    let code = example("hello");
    c.deploy(&[
        "--file",
        toml.to_str().expect("UTF-8 path"),
        "--code",
        code.to_str().expect("UTF-8 path"),
    ]);
    let first = c.invoke("hello", "before").expect_ok("invoke before");
    assert!(first.stdout.starts_with("hello, before"), "{first}");

    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "only the node's user may connect: {mode:o}"
    );

    // A length far over the limit.
    let mut s = connect(&path);
    s.write_all(&u32::MAX.to_le_bytes()).expect("write");
    let why = refusal(s);
    assert!(
        why.contains("bad hello") && why.contains("over the"),
        "{why}"
    );

    // A frame whose body is not a message.
    let mut s = connect(&path);
    s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).expect("write");
    let why = refusal(s);
    assert!(why.contains("does not decode"), "{why}");

    // A well-formed frame that is not a hello.
    let mut s = connect(&path);
    let result = frame::to_frame(&InstanceMessage {
        msg: Some(instance_message::Msg::Result(Default::default())),
    })
    .expect("encode");
    s.write_all(&result).expect("write");
    let why = refusal(s);
    assert!(why.contains("first frame must be a hello"), "{why}");

    // A hello from an instance the cluster never started: it cannot carry a secret.
    let mut s = connect(&path);
    s.write_all(&hello("no-such-instance")).expect("write");
    let why = refusal(s);
    assert!(
        why.contains("\"no-such-instance\" does not carry that instance's secret"),
        "{why}"
    );

    // A stranger that connects and closes at once is simply forgotten.
    drop(connect(&path));

    // A real function process started by hand (with a made-up secret) exits with the reason.
    let out = Command::new(&code)
        .env("YR_INSTANCE_ID", "hand-started")
        .env("YR_INSTANCE_SECRET", "00".repeat(32))
        .env("YR_PROXY_SOCKET", &path)
        .env("YR_PROXY_ADDRESS", &c.master().proxy_address)
        .output()
        .expect("run the hello example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the proxy refused instance hand-started: the hello for instance \"hand-started\" does not carry that instance's secret"),
        "{stderr}"
    );
    // One without a secret at all says what is missing.
    let out = Command::new(&code)
        .env("YR_INSTANCE_ID", "hand-started")
        .env_remove("YR_INSTANCE_SECRET")
        .env("YR_PROXY_SOCKET", &path)
        .env("YR_PROXY_ADDRESS", &c.master().proxy_address)
        .output()
        .expect("run the hello example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("YR_INSTANCE_SECRET is not set"),
        "{stderr}"
    );

    // One without the socket's path says what is missing.
    let out = Command::new(&code)
        .env("YR_INSTANCE_ID", "hand-started")
        .env("YR_INSTANCE_SECRET", "00")
        .env_remove("YR_PROXY_SOCKET")
        .output()
        .expect("run the hello example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("YR_PROXY_SOCKET is not set"),
        "{stderr}"
    );

    // None of it disturbed the instance that was serving.
    let after = c.invoke("hello", "after").expect_ok("invoke after");
    assert!(after.stdout.starts_with("hello, after"), "{after}");
}

/// A function whose entrypoint writes the secret the agent gave its process to the instance's
/// folder, then runs the hello example: the test's stand-in for the process that owns the
/// instance, so that the test can say hello with the right secret.
fn leaky_code(dir: &std::path::Path) -> PathBuf {
    let code = dir.join("leaky");
    std::fs::create_dir_all(&code).expect("mkdir");
    let script = code.join("leak.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf %s \"$YR_INSTANCE_SECRET\" > \"$YR_INSTANCE_DIR/leaked-secret\"\nexec {}\n",
            example("hello").display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    code
}

#[test]
fn forged_and_second_hellos_are_refused() {
    let c = Cluster::start(NodeOptions::default());
    let path = socket_of(&c);
    let tmp = tempfile::tempdir().expect("temp dir");
    let code = leaky_code(tmp.path());
    c.deploy(&[
        "--name",
        "leaky",
        "--code",
        code.to_str().expect("UTF-8 path"),
        "--entrypoint",
        "leak.sh",
        "--handler",
        "hello",
    ]);
    let out = c.invoke("leaky", "first").expect_ok("invoke");
    assert!(out.stdout.starts_with("hello, first"), "{out}");
    let id = c.status().instances_of("leaky")[0].instance_id.clone();
    let leaked = c
        .master()
        .session_dir
        .join("node/work/instances")
        .join(&id)
        .join("leaked-secret");
    let secret =
        std::fs::read_to_string(&leaked).unwrap_or_else(|e| panic!("{}: {e}", leaked.display()));
    assert_eq!(secret.len(), 64, "{secret:?}");

    // The instance's ID without its secret, or with a wrong one: refused.
    let wrong = if secret.starts_with('0') { "1" } else { "0" }.to_string() + &secret[1..];
    for forged in ["", wrong.as_str(), "not hex"] {
        let mut s = connect(&path);
        s.write_all(&hello_with(&id, forged)).expect("write");
        let why = refusal(s);
        assert!(
            why.contains("does not carry that instance's secret"),
            "{forged:?}: {why}"
        );
    }
    // Its secret does not open another instance.
    let mut s = connect(&path);
    s.write_all(&hello_with("leaky-000000000000", &secret))
        .expect("write");
    let why = refusal(s);
    assert!(
        why.contains("does not carry that instance's secret"),
        "{why}"
    );
    // The right secret, but the instance is connected already: refused, and the real process
    // keeps its calls (it is not unregistered when the second connection goes).
    let mut s = connect(&path);
    s.write_all(&hello_with(&id, &secret)).expect("write");
    let why = refusal(s);
    assert!(
        why.contains(&format!("instance {id} is connected already")),
        "{why}"
    );
    let out = c.invoke("leaky", "after").expect_ok("invoke after");
    assert!(out.stdout.starts_with("hello, after"), "{out}");
    let st = c.status();
    let inst = st.instance(&id).expect("the instance");
    assert_eq!(inst.state, "RUNNING", "{inst:?}");
    let log = &c.master().component("function-proxy").expect("a proxy").log;
    let log = std::fs::read_to_string(log).expect("the proxy's log");
    assert!(
        log.contains("is connected already") && log.contains("does not carry"),
        "the proxy logs its refusals:\n{log}"
    );
}
