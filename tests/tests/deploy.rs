//! Deploying as openYuanrong's deployment pages show it: a master started with a settings file
//! and `-s KEY=VALUE` overrides, a worker that joins with `--master_address http://IP:PORT`
//! alone (worker is the default role), `yr health`, `yr status` and `yr stop` given a session
//! file, and `yr config dump` printing the settings a command line means. Real processes, a
//! real etcd, `--ports auto` (see [`yr_tests::cluster`]).

use std::time::{Duration, Instant};

use yr_tests::cluster::{run_yr, Cluster, NodeOptions};

/// A settings file in a folder that lives as long as the returned guard.
fn settings_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("yr-deploy-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("yr.toml");
    std::fs::write(&path, text).expect("write the settings file");
    let p = path.display().to_string();
    (dir, p)
}

/// `memory_mib` of node `id` in `yr status --json`.
fn memory_of(status_json: &str, id: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(status_json).ok()?;
    v.get("nodes")?
        .as_array()?
        .iter()
        .find(|n| n.get("node_id").and_then(|x| x.as_str()) == Some(id))?
        .get("total")?
        .get("memory_mib")?
        .as_u64()
}

#[test]
fn a_cluster_deployed_with_openyuanrongs_commands() {
    // openYuanrong's underscore spelling in the file; `-s` overrides a key, flags win over both.
    let (_keep, cfg) = settings_file(
        "# a master's settings\ncpu = 1000\nmemory = 512\nlabels = { zone = \"a\" }\n\
         idle_timeout_ms = 30000\n",
    );

    // `yr config dump` shows what a command line means, before anything starts.
    let out = run_yr(&[
        "config",
        "dump",
        "--master",
        "-c",
        &cfg,
        "-s",
        "memory=2048",
    ])
    .expect_ok("config dump");
    for line in [
        "master = true",
        "cpu = 1000",
        "memory = 2048",
        "labels = { zone = \"a\" }",
        "idle-timeout-ms = 30000",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "dump lacks {line:?}\n{out}"
        );
    }
    // The template parses as a settings file meaning the defaults.
    let template = run_yr(&["config", "template"]).expect_ok("config template");
    let (_keep_t, tpl) = settings_file(&template.stdout);
    let dumped = run_yr(&["config", "dump", "-c", &tpl]).expect_ok("dump of the template");
    assert_eq!(
        dumped.stdout, template.stdout,
        "the template is the defaults"
    );

    // A misspelt key or a bad value stops `yr start` before it starts anything.
    let (_keep_b, bad) = settings_file("shm_sise = \"64MiB\"\n");
    let refused_dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = refused_dir.path().join("s").display().to_string();
    let out = run_yr(&["start", "--master", "-c", &bad, "--session-dir", &dir_arg])
        .expect_err("an unknown key");
    assert!(
        out.stderr.contains("unknown setting \"shm_sise\"")
            && out.stderr.contains("did you mean \"shm-size\""),
        "the error names the key and the closest one\n{out}"
    );
    let out = run_yr(&[
        "start",
        "--master",
        "-s",
        "cpu=lots",
        "--session-dir",
        &dir_arg,
    ])
    .expect_err("a bad value");
    assert!(
        out.stderr.contains("cpu = \"lots\""),
        "the error names the key and the value\n{out}"
    );
    assert!(
        !refused_dir.path().join("s").exists(),
        "a refused start claims no session folder"
    );
    let out = run_yr(&["start", "--session-dir", &dir_arg]).expect_err("no role");
    assert!(out.stderr.contains("--master_address"), "{out}");

    // The master: `yr start --master -c FILE -s KEY=VALUE`.
    let mut c = Cluster::start(NodeOptions {
        extra: vec!["-c".into(), cfg.clone(), "-s".into(), "memory=2048".into()],
        ..Default::default()
    });
    let master_id = c.master().node_id.clone();
    let master_file = c.master().session_dir.join("session.json");
    let master_file = master_file.to_str().expect("UTF-8 path").to_string();

    // A worker as openYuanrong writes it: no --worker, the master as http://IP:PORT.
    let address = format!("http://{}", c.master().master_address);
    let token = c.join_token();
    let w = c.add_node(
        "worker1",
        &["--master_address", &address, "--join_token", &token],
        NodeOptions::cpu(500),
    );
    let worker_id = c.session(w).node_id.clone();
    assert_eq!(c.session(w).role, "worker");
    let worker_file = c.session(w).session_dir.join("session.json");
    let worker_file = worker_file.to_str().expect("UTF-8 path").to_string();

    // `yr status` given the session file: both nodes, with the master's layered settings.
    let out = run_yr(&["status", "--json", "--session", &master_file]).expect_ok("status");
    let st = yr_tests::cluster::ClusterStatus::parse(&out.stdout).expect("status JSON");
    let m = st.node(&master_id).expect("the master node is alive");
    assert_eq!(m.cpu_total, 1000, "cpu from the file");
    assert_eq!(m.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(
        memory_of(&out.stdout, &master_id),
        Some(2048),
        "memory from -s"
    );
    let wk = st.node(&worker_id).expect("the worker joined");
    assert_eq!(wk.cpu_total, 500);
    let out = run_yr(&["status", "--session", &worker_file]).expect_ok("status (table)");
    assert!(
        out.stdout.contains(&master_id) && out.stdout.contains(&worker_id),
        "{out}"
    );

    // `yr health` on either node's session: healthy.
    for file in [&master_file, &worker_file] {
        let out = run_yr(&["health", "--session", file]).expect_ok("health");
        assert!(out.stdout.trim_end().ends_with("healthy"), "{out}");
        assert!(out.stdout.contains("function-agent"), "{out}");
    }

    // A component dies (its node's supervisor first, so that nothing restarts it): the node's
    // health names it at once, and the master's, once the node's registration lapses, names the
    // node.
    let supervisor = c
        .session(w)
        .pid_of("supervisor")
        .expect("the worker runs a supervisor");
    // SAFETY: a signal to a process this test started (through `yr start`).
    unsafe { libc::kill(supervisor as libc::pid_t, libc::SIGKILL) };
    let agent = c
        .session(w)
        .pid_of("function-agent")
        .expect("the worker runs an agent");
    // SAFETY: a signal to a process this test started (through `yr start`).
    unsafe { libc::kill(agent as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_yr(&["health", "--session", &worker_file]);
        if !out.success() {
            assert!(
                out.stderr
                    .contains(&format!("function-agent (pid {agent}) is not running")),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health missed the dead agent\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run_yr(&["health", "--session", &master_file]);
        if !out.success() {
            assert!(
                out.stderr.contains(&worker_id),
                "the master's health names the lost node\n{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the master's health never noticed the lost node\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `yr stop` given the session file, as for status; the worker first.
    let out = c.stop_node_with(w, &["--session", &worker_file]);
    out.expect_ok("stop the worker");
    let out = c.stop_node_with(0, &["--session_dir", &master_file]);
    out.expect_ok("stop the master");
    let out = run_yr(&["health", "--session", &master_file]).expect_err("stopped");
    assert!(out.stderr.contains("session.json"), "{out}");
}

#[test]
fn version_is_a_command_and_a_flag() {
    let a = run_yr(&["version"]).expect_ok("yr version");
    let b = run_yr(&["--version"]).expect_ok("yr --version");
    assert_eq!(a.stdout, b.stdout);
    assert!(a.stdout.starts_with("yr "), "{a}");
}
