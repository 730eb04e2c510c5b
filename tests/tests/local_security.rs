//! Local hardening against other users of the host and other processes of the cluster's user,
//! with real processes: a started session's files are private (folders 0700, files 0600); the
//! session root is refused when another user owns it or others may write to it; `latest` is not
//! followed to another user's folder; the agent refuses an instance ID that would become a path
//! outside its instances folder; a function process's instance secret is gone from what
//! `/proc/<pid>/environ` shows.
//!
//! Tests that need another user's files (made with chown to `nobody`) run as root, as `make
//! test` does here; run as another user they check what they can and say what they skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use yr_tests::cluster::{example, example_dir, member_endpoint, Cluster, NodeOptions};
use yr_tests::yr_bin;

/// The uid and gid of `nobody`, the other user of these tests.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Runs `yr ARGS` with `XDG_RUNTIME_DIR` set to `xdg`, so that its session root is `xdg/yr`
/// rather than this user's real one.
fn yr_with_xdg(xdg: &Path, args: &[&str]) -> std::process::Output {
    Command::new(yr_bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .env_remove("YR_SESSION")
        .env("YR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run yr {args:?}: {e}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private folder standing in for `$XDG_RUNTIME_DIR`.
fn runtime_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("yr-xdg-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    d
}

fn deploy_hello(c: &Cluster) {
    let toml = example_dir("hello").join("function.toml");
    let code = example("hello");
    c.deploy(&[
        "--file",
        toml.to_str().expect("UTF-8 path"),
        "--code",
        code.to_str().expect("UTF-8 path"),
    ]);
}

#[test]
fn a_started_sessions_folders_and_files_are_private() {
    let c = Cluster::start(NodeOptions::default());
    deploy_hello(&c);
    let out = c.invoke("hello", "private").expect_ok("invoke");
    assert!(out.stdout.starts_with("hello, private"), "{out}");
    let s = c.master();
    let dir = &s.session_dir;
    for d in [dir.clone(), dir.join("logs"), dir.join("node")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let token = s.token_file.clone().expect("a master has a token");
    for f in [dir.join("session.json"), token] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let mut logs = 0;
    for e in std::fs::read_dir(dir.join("logs")).expect("logs") {
        let p = e.expect("entry").path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
        logs += 1;
    }
    assert!(logs >= 4, "every component has a log");
    // The instance's folder and output, made by the agent.
    let id = c.status().instances_of("hello")[0].instance_id.clone();
    let inst = dir.join("node/work/instances").join(&id);
    assert_eq!(mode(&inst) & 0o077, 0, "{}", inst.display());
    for f in ["stdout.log", "stderr.log"] {
        assert_eq!(mode(&inst.join(f)), 0o600, "{f}");
    }
    // The node secret went from the proxy to the agent and is not left on disk.
    assert!(
        !dir.join("node/instance.key").exists(),
        "the node secret is still on disk"
    );
}

/// Stops a session started without `--session-dir` when the test ends, passing or not.
struct Started<'a> {
    xdg: &'a Path,
    dir: PathBuf,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let dir = self.dir.display().to_string();
        let _ = yr_with_xdg(self.xdg, &["stop", "--force", "--session-dir", &dir]);
    }
}

#[test]
fn the_default_session_root_is_private_and_latest_leads_to_the_session() {
    let xdg = runtime_dir();
    let out = yr_with_xdg(
        xdg.path(),
        &[
            "start",
            "--master",
            "--ports",
            "auto",
            "--shm-size",
            "64MiB",
        ],
    );
    let root = xdg.path().join("yr");
    let latest = root.join("latest");
    let dir = std::fs::read_link(&latest).ok();
    let _started = dir.clone().map(|dir| Started {
        xdg: xdg.path(),
        dir,
    });
    assert!(out.status.success(), "{}", text(&out));
    let dir = dir.expect("latest points at the session");
    assert!(
        dir.starts_with(&root),
        "{} is not under {}",
        dir.display(),
        root.display()
    );
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("session.json")), 0o600);
    // Commands without --session-dir find it through latest.
    let st = yr_with_xdg(xdg.path(), &["status", "--json"]);
    assert!(st.status.success(), "{}", text(&st));
    let printed = yr_with_xdg(xdg.path(), &["session"]);
    assert!(printed.status.success(), "{}", text(&printed));
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        dir.display().to_string()
    );
    let stop = yr_with_xdg(xdg.path(), &["stop", "--force"]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(!latest.exists(), "yr stop removes latest with its session");
}

#[test]
fn a_session_root_of_another_user_or_open_to_others_is_refused() {
    let xdg = runtime_dir();
    let root = xdg.path().join("yr");
    std::fs::create_dir(&root).expect("mkdir");
    let start = [
        "start",
        "--master",
        "--ports",
        "auto",
        "--shm-size",
        "64MiB",
    ];
    if is_root() {
        std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).expect("chown");
        for args in [&start[..], &["status"]] {
            let out = yr_with_xdg(xdg.path(), args);
            let all = text(&out);
            assert!(!out.status.success(), "{all}");
            assert!(
                all.contains(&format!("refusing {}", root.display()))
                    && all.contains(&format!("owned by uid {NOBODY}")),
                "{all}"
            );
        }
        std::os::unix::fs::chown(&root, Some(0), Some(0)).expect("chown back");
    } else {
        eprintln!("not root: the root owned by another user is not tried");
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = yr_with_xdg(xdg.path(), &start);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(&format!("refusing {}", root.display())) && all.contains("mode 0777"),
        "{all}"
    );
    // Nothing was started or created in the refused root.
    assert_eq!(std::fs::read_dir(&root).expect("ls").count(), 0);
    // A session folder named with --session-dir that belongs to another user is refused too.
    if is_root() {
        let theirs = xdg.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
        let d = theirs.display().to_string();
        let out = yr_with_xdg(
            xdg.path(),
            &["start", "--master", "--ports", "auto", "--session-dir", &d],
        );
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains(&format!("owned by uid {NOBODY}")), "{all}");
    }
}

#[test]
fn latest_is_not_followed_to_another_users_folder() {
    if !is_root() {
        eprintln!("not root: another user's folder cannot be made; skipped");
        return;
    }
    let xdg = runtime_dir();
    let root = xdg.path().join("yr");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // Another user's "session", whose session.json would send commands to their cluster.
    let theirs = xdg.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::write(theirs.join("session.json"), "{}").expect("write");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::os::unix::fs::symlink(&theirs, root.join("latest")).expect("symlink");
    let out = yr_with_xdg(xdg.path(), &["status"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("latest") && all.contains(&format!("owned by uid {NOBODY}")),
        "{all}"
    );
    // The same for a driver (the runtime's Yr::init follows latest the same way).
    let driver = yr_bin().with_file_name("yr-test-driver");
    if driver.is_file() {
        let out = Command::new(&driver)
            .env("XDG_RUNTIME_DIR", xdg.path())
            .env_remove("YR_SESSION")
            .env_remove("YR_MASTER_ADDRESS")
            .env_remove("YR_INSTANCE_ID")
            .stdin(Stdio::null())
            .output()
            .expect("run the test driver");
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains(&format!("owned by uid {NOBODY}")), "{all}");
    }
}

#[test]
fn the_agent_refuses_an_instance_id_that_is_not_a_plain_name() {
    use yr_proto::agent_client::AgentClient;
    use yr_proto::{FunctionSpec, InstanceRecord, StartInstanceRequest};

    let c = Cluster::start(NodeOptions::default());
    let s = c.master();
    let agent = s
        .component("function-agent")
        .expect("an agent")
        .address
        .clone();
    // With ".." the instance folder would be work/ itself, whose `code` the agent removes.
    let work = s.session_dir.join("node/work");
    let sentinel = work.join("code/keep");
    std::fs::create_dir_all(sentinel.parent().expect("parent")).expect("mkdir");
    std::fs::write(&sentinel, "keep").expect("write");
    let code = example("hello").display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for bad in ["..", "../../escape", "a/b", ".hidden", ""] {
        let status = rt
            .block_on(async {
                let mut client = AgentClient::new(member_endpoint(s, &agent).connect().await?);
                let req = StartInstanceRequest {
                    instance: Some(InstanceRecord {
                        instance_id: bad.into(),
                        function: "hello".into(),
                        ..Default::default()
                    }),
                    function: Some(FunctionSpec {
                        name: "hello".into(),
                        code_path: code.clone(),
                        handler: "hello".into(),
                        ..Default::default()
                    }),
                };
                Ok::<_, Box<dyn std::error::Error>>(client.start_instance(req).await)
            })
            .expect("reach the agent")
            .expect_err(bad);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad:?}: {status:?}"
        );
        assert!(
            status.message().contains("instance_id") && status.message().contains("file name"),
            "{bad:?}: {}",
            status.message()
        );
    }
    assert!(
        sentinel.exists(),
        "the agent removed {}",
        sentinel.display()
    );
    assert!(!s.session_dir.join("node/escape").exists());
    assert!(!work.join("instances/a").exists());
}

#[test]
fn a_function_process_has_no_instance_secret_in_its_proc_environ() {
    let c = Cluster::start(NodeOptions::default());
    deploy_hello(&c);
    c.invoke("hello", "x").expect_ok("invoke");
    let pid = c.status().instances_of("hello")[0].pid;
    assert!(pid > 0, "the instance's pid is known");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    // The agent did give it a secret (the entry stays, its 64 hex digits overwritten).
    let value = environ
        .split(|&b| b == 0)
        .find_map(|e| e.strip_prefix(b"YR_INSTANCE_SECRET="))
        .expect("the process was started with YR_INSTANCE_SECRET");
    assert_eq!(value.len(), 64);
    assert!(
        value.iter().all(|&b| b == b'x'),
        "the secret is readable in /proc/{pid}/environ: {}",
        String::from_utf8_lossy(value)
    );
}
