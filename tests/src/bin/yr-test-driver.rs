//! A driver program for the distributed-programming tests: one executable
//! that is both the driver (run by a test with a mode) and the function
//! processes the cluster starts from it.
//!
//! Modes (first argument), each printing one JSON line per result:
//! - `locality NODE`: makes an object on NODE, then calls a function with no
//!   placement rule on it; reports where each ran.
//! - `lost NODE`: makes an object on NODE, prints `READY`, waits for a line
//!   on stdin (the test kills NODE meanwhile), then gets the object and
//!   passes it to a call; reports both errors.
//! - `exit-owning NODE`: puts an object here and makes one on NODE, prints
//!   `READY`, waits for a line on stdin and exits without dropping anything.
//! - `actors`: a named stateful instance called in order, and `wait`.
//! - `restart NODE`: puts an object here, prints `READY`, waits for a line on stdin (the test
//!   kills this node's data worker and sees it restarted meanwhile), then gets the old object
//!   and, until it works or 30 s pass, puts and gets a new one here, passes an object made by a
//!   function on NODE to another call and gets it here; reports the old get's error and the new
//!   round's result.

use std::io::{BufRead, Write};
use std::time::Duration;
use yr_runtime::{Actor, Args, Builder, Error, TaskContext, Value, Yr};

fn produce(ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    let len: u64 = args.get(0)?;
    let mut obj = ctx.create_object(len as usize)?;
    for (i, b) in obj.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    obj.seal()
}

fn consume(ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    let b = args.bytes(0)?;
    let sum: u64 = b.iter().map(|&x| x as u64).sum();
    Value::of(&(b.len() as u64, args.is_shared(0), sum, ctx.node_id()))
}

fn nap(_ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    let ms: u64 = args.get(0)?;
    std::thread::sleep(Duration::from_millis(ms));
    Value::of(&ms)
}

struct Counter {
    total: i64,
    calls: u64,
}

impl Actor for Counter {
    fn call(&mut self, _ctx: &TaskContext, method: &str, args: &Args) -> Result<Value, String> {
        match method {
            "add" => {
                let n: i64 = args.get(0)?;
                self.total += n;
                self.calls += 1;
                Value::of(&self.total)
            }
            "get" => Value::of(&(self.total, self.calls)),
            other => Err(format!("Counter has no method {other:?}")),
        }
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::ObjectLost(_) => "ObjectLost",
        Error::Task { .. } => "Task",
        Error::Platform { .. } => "Platform",
        Error::Timeout(_) => "Timeout",
        Error::Connect(_) => "Connect",
        Error::Deploy(_) => "Deploy",
        Error::Codec(_) => "Codec",
        Error::Store(_) => "Store",
        Error::Cancelled(_) => "Cancelled",
        // A function process's start-up errors; a driver never sees them.
        Error::NotStartedByAgent(_)
        | Error::InstanceSocket(_)
        | Error::NotRegistered { .. }
        | Error::InstanceInit { .. }
        | Error::Threads(_)
        | Error::Recycled(_) => "FunctionProcess",
    }
}

fn line(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn wait_for_stdin() {
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
}

const T: Duration = Duration::from_secs(120);

fn run(yr: &Yr, args: &[String]) -> Result<(), Error> {
    let node = args.get(1).cloned().unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("locality") => {
            let obj = yr
                .task("produce")
                .arg(&(1u64 << 20))
                .on_node(&node)
                .submit()?;
            let r = yr.task("consume").arg_ref(&obj).submit()?;
            let (len, shared, sum, ran_on): (u64, bool, u64, String) = yr.get(&r, T)?;
            line(serde_json::json!({
                "produce_node": obj.call_info().map(|i| i.node_id),
                "object_node": obj.node_id(),
                "consume_node": ran_on, "len": len, "shared": shared, "sum": sum,
            }));
        }
        Some("lost") => {
            let obj = yr
                .task("produce")
                .arg(&(1u64 << 20))
                .on_node(&node)
                .submit()?;
            yr.wait(std::slice::from_ref(&obj), 1, T)?;
            line(serde_json::json!({"ready": true, "id": obj.id().map(|i| i.to_hex())}));
            wait_for_stdin();
            let got = yr.get_bytes(&obj, T).map(|b| b.len());
            let passed = yr
                .task("consume")
                .arg_ref(&obj)
                .submit()
                .and_then(|r| yr.get::<(u64, bool, u64, String)>(&r, T));
            let report = |r: Result<String, Error>| match r {
                Ok(v) => serde_json::json!({"ok": v}),
                Err(e) => serde_json::json!({"kind": kind(&e), "message": e.to_string()}),
            };
            line(serde_json::json!({
                "get": report(got.map(|n| n.to_string())),
                "call": report(passed.map(|v| format!("{v:?}"))),
            }));
        }
        Some("exit-owning") => {
            let here = yr.put_bytes(&vec![7u8; 3 << 20])?;
            let there = yr
                .task("produce")
                .arg(&(2u64 << 20))
                .on_node(&node)
                .submit()?;
            yr.get_bytes(&there, T)?;
            line(serde_json::json!({"ready": true, "here": here.id().map(|i| i.to_hex())}));
            wait_for_stdin();
            // Exit without running any destructor: the data worker must
            // notice the driver is gone and free what it owned.
            std::process::exit(0);
        }
        Some("restart") => {
            let old = yr.put_bytes(&vec![5u8; 1 << 20])?;
            line(serde_json::json!({"ready": true, "id": old.id().map(|i| i.to_hex())}));
            wait_for_stdin();
            let got = yr.get_bytes(&old, T).map(|b| b.len().to_string());
            let round = || -> Result<String, Error> {
                let mine = yr.put_bytes(&vec![9u8; 1 << 20])?;
                let n = yr.get_bytes(&mine, T)?.len();
                let made = yr
                    .task("produce")
                    .arg(&(1u64 << 20))
                    .on_node(&node)
                    .submit()?;
                let r = yr.task("consume").arg_ref(&made).submit()?;
                let (len, _, _, _): (u64, bool, u64, String) = yr.get(&r, T)?;
                // Here too: pulled from NODE when it is another node.
                let pulled = yr.get_bytes(&made, T)?.len();
                Ok(format!("{n} {len} {pulled}"))
            };
            // Polls with a deadline: the first round may meet connections that broke with the
            // old data worker.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut errors = Vec::new();
            let fresh = loop {
                match round() {
                    Ok(v) => break Ok(v),
                    Err(e) if std::time::Instant::now() < deadline => {
                        errors.push(format!("{}: {e}", kind(&e)));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => break Err(e),
                }
            };
            let report = |r: Result<String, Error>| match r {
                Ok(v) => serde_json::json!({"ok": v}),
                Err(e) => serde_json::json!({"kind": kind(&e), "message": e.to_string()}),
            };
            line(serde_json::json!({
                "old": report(got), "fresh": report(fresh), "failed_rounds": errors,
            }));
        }
        Some("actors") => {
            let c = yr.instance("Counter", "ctr", Default::default())?;
            let refs: Vec<_> = (1..=5)
                .map(|n| c.method("add").arg(&(n as i64)).submit())
                .collect::<Result<_, _>>()?;
            let totals: Vec<i64> = refs
                .iter()
                .map(|r| yr.get(r, T))
                .collect::<Result<_, _>>()?;
            let (total, calls): (i64, u64) = yr.get(&c.method("get").submit()?, T)?;
            let unknown = yr
                .get::<i64>(&c.method("nope").submit()?, T)
                .map_err(|e| e.to_string());
            // A value that is ready at once beside a call that takes a while.
            let slow = yr.task("nap").arg(&800u64).submit()?;
            let fast = yr.put(&10u64)?;
            let (ready, pending) = yr.wait(&[slow.clone(), fast.clone()], 1, T)?;
            let first: u64 = yr.get(&ready[0], T)?;
            let (all, none) = yr.wait(&[slow.clone(), fast], 2, T)?;
            let slow_value: u64 = yr.get(&slow, T)?;
            line(serde_json::json!({
                "totals": totals, "total": total, "calls": calls,
                "unknown_method": unknown.err(),
                "first_ready": first, "pending": pending.len(),
                "all_ready": all.len(), "none_pending": none.len(), "slow": slow_value,
            }));
            c.kill()?;
        }
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn main() {
    let yr = Builder::new("yrtest")
        .function("produce", produce)
        .function("consume", consume)
        .function("nap", nap)
        .class("Counter", |_ctx| Ok(Counter { total: 0, calls: 0 }))
        .init();
    let yr = match yr {
        Ok(y) => y,
        Err(e) => {
            eprintln!("yr-test-driver: {e}");
            std::process::exit(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&yr, &args) {
        line(serde_json::json!({"error": e.to_string(), "kind": kind(&e)}));
        std::process::exit(1);
    }
}
