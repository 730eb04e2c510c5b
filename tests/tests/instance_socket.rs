//! The function proxy's instance socket, where function processes take their calls, against
//! bad input from a real process: a stranger that sends garbage, a frame that is not a hello, a
//! hello naming no instance, a connection closed at once. Each gets a `refused` frame that names the problem (or is
//! dropped), and the proxy keeps serving the instances it has. A real function process started
//! by hand with an unknown instance ID exits with the proxy's reason on stderr.

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
    frame::to_frame(&InstanceMessage {
        msg: Some(instance_message::Msg::Hello(InstanceHello {
            instance_id: id.into(),
            handlers: vec!["hello".into()],
            pid: std::process::id(),
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

    // A hello from an instance the cluster never started.
    let mut s = connect(&path);
    s.write_all(&hello("no-such-instance")).expect("write");
    let why = refusal(s);
    assert!(why.contains("unknown instance no-such-instance"), "{why}");

    // A stranger that connects and closes at once is simply forgotten.
    drop(connect(&path));

    // A real function process told an ID the cluster does not know exits with the reason.
    let out = Command::new(&code)
        .env("YR_INSTANCE_ID", "hand-started")
        .env("YR_PROXY_SOCKET", &path)
        .env("YR_PROXY_ADDRESS", &c.master().proxy_address)
        .output()
        .expect("run the hello example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the proxy refused instance hand-started: unknown instance hand-started"),
        "{stderr}"
    );

    // One without the socket's path says what is missing.
    let out = Command::new(&code)
        .env("YR_INSTANCE_ID", "hand-started")
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
