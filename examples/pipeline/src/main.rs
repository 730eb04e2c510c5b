//! A three-stage data pipeline on yr: `produce` writes a large array of
//! numbers into shared memory, `transform` maps it into a new array, and
//! `reduce` sums it. Each stage is a remote function; the arrays move between
//! stages as object references, and between nodes only when a stage runs on
//! another node than its input (pulled once, read in place).
//!
//! One program is both the driver and the function processes: the cluster
//! starts copies of this executable to serve the stages.
//!
//! ```text
//! yr start --master && yr start --worker --master-address <printed address> --join-token <printed token> --ports auto
//! ./target/release/pipeline --size 256MiB --rounds 3
//! ```
//!
//! With two or more nodes, `produce` and `reduce` run on the driver's node
//! and `transform` on another one, so the data crosses the network twice per
//! round. Each round's result is checked against the same computation done
//! locally.

use std::time::{Duration, Instant};
use yr_runtime::{Args, Builder, ObjectRef, TaskContext, Value, Yr};

/// The value at index `i` of the array `produce` makes from `seed`.
fn produced(i: u64, seed: u64) -> u32 {
    (i.wrapping_mul(0x9E37_79B9).wrapping_add(seed)) as u32
}

/// What `transform` does to each value.
fn transformed(x: u32) -> u32 {
    x.rotate_left(7) ^ 0x5bd1_e995
}

fn produce(ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    let (bytes, seed): (u64, u64) = args.get(0)?;
    let mut obj = ctx.create_object(bytes as usize)?;
    let out: &mut [u32] = bytemuck::try_cast_slice_mut(&mut obj[..])
        .map_err(|e| format!("a {bytes}-byte object is not an array of u32: {e}"))?;
    for (i, v) in out.iter_mut().enumerate() {
        *v = produced(i as u64, seed);
    }
    obj.seal()
}

fn transform(ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    // A view into this node's shared memory: no copy of the input.
    let input: &[u32] = args.slice(0)?;
    let mut obj = ctx.create_object(input.len() * 4)?;
    let out: &mut [u32] = bytemuck::try_cast_slice_mut(&mut obj[..])
        .map_err(|e| format!("output is not an array of u32: {e}"))?;
    for (o, &x) in out.iter_mut().zip(input) {
        *o = transformed(x);
    }
    obj.seal()
}

fn reduce(_ctx: &TaskContext, args: &Args) -> Result<Value, String> {
    let input: &[u32] = args.slice(0)?;
    let sum: u64 = input.iter().map(|&x| x as u64).sum();
    Value::of(&(sum, input.len() as u64))
}

struct Config {
    bytes: u64,
    rounds: u32,
    json: bool,
    quiet: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number like 256MiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    Ok(n * mult)
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        bytes: 256 << 20,
        rounds: 3,
        json: false,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--size" => c.bytes = parse_size(&value("--size")?)?,
            "--rounds" => {
                c.rounds = value("--rounds")?
                    .parse()
                    .map_err(|_| "--rounds takes a number".to_string())?
            }
            "--json" => c.json = true,
            "--quiet" => c.quiet = true,
            "-h" | "--help" => {
                println!("usage: pipeline [--size 256MiB] [--rounds 3] [--json] [--quiet]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if c.bytes == 0 || !c.bytes.is_multiple_of(4) {
        return Err(format!(
            "--size must be a positive multiple of 4 bytes, not {}",
            c.bytes
        ));
    }
    if c.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(c)
}

struct Stage {
    name: &'static str,
    node: String,
    elapsed: Duration,
    fetch: Duration,
}

fn stage(name: &'static str, r: &ObjectRef) -> Stage {
    let info = r.call_info().unwrap_or_default();
    Stage {
        name,
        node: info.node_id,
        elapsed: info.elapsed,
        fetch: info.fetch,
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

fn run(yr: &Yr, c: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let nodes = yr.nodes()?;
    let here = yr.node_id().to_string();
    let elsewhere = nodes
        .iter()
        .map(|n| n.node_id.clone())
        .find(|n| *n != here)
        .unwrap_or_else(|| here.clone());
    if !c.quiet && !c.json {
        println!(
            "pipeline: {} MiB per stage, {} round(s), {} node(s): produce and reduce on {here}, transform on {elsewhere}",
            c.bytes >> 20,
            c.rounds,
            nodes.len()
        );
    }
    let timeout = Duration::from_secs(600);
    let mut walls = Vec::new();
    for round in 0..c.rounds {
        let seed = round as u64 + 1;
        let t0 = Instant::now();
        let a = yr
            .task("produce")
            .arg(&(c.bytes, seed))
            .on_node(&here)
            .submit()?;
        let b = yr
            .task("transform")
            .arg_ref(&a)
            .on_node(&elsewhere)
            .submit()?;
        let r = yr.task("reduce").arg_ref(&b).on_node(&here).submit()?;
        let (sum, n): (u64, u64) = yr.get(&r, timeout)?;
        let wall = t0.elapsed();
        let want: u64 = (0..c.bytes / 4)
            .map(|i| transformed(produced(i, seed)) as u64)
            .sum();
        if n != c.bytes / 4 || sum != want {
            return Err(format!(
                "round {round}: reduce returned sum {sum} over {n} values; expected {want} over {}",
                c.bytes / 4
            )
            .into());
        }
        let stages = [
            stage("produce", &a),
            stage("transform", &b),
            stage("reduce", &r),
        ];
        walls.push(wall);
        if c.quiet {
            continue;
        }
        if c.json {
            let st: Vec<serde_json::Value> = stages
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "stage": s.name, "node": s.node,
                        "ms": s.elapsed.as_secs_f64() * 1e3,
                        "fetch_ms": s.fetch.as_secs_f64() * 1e3,
                        "gbps": gbps(c.bytes, s.elapsed),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "round": round, "bytes": c.bytes, "wall_ms": wall.as_secs_f64() * 1e3,
                    "pipeline_gbps": gbps(c.bytes, wall), "stages": st, "checked": true,
                })
            );
        } else {
            println!(
                "round {round}: {:.1} ms, {:.2} GB/s end to end, result checked",
                wall.as_secs_f64() * 1e3,
                gbps(c.bytes, wall)
            );
            for s in &stages {
                let moved = if s.fetch > Duration::from_micros(500) {
                    format!(
                        " (of which {:.1} ms fetching its input)",
                        s.fetch.as_secs_f64() * 1e3
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {:<9} on {:<24} {:>8.1} ms {:>6.2} GB/s{moved}",
                    s.name,
                    s.node,
                    s.elapsed.as_secs_f64() * 1e3,
                    gbps(c.bytes, s.elapsed)
                );
            }
        }
        // a, b and r drop here: every copy of both arrays is freed on every node.
    }
    if !c.quiet && !c.json && walls.len() > 1 {
        let mut w = walls[1..].to_vec();
        w.sort();
        let median = w[w.len() / 2];
        println!(
            "median after the first round: {:.1} ms, {:.2} GB/s",
            median.as_secs_f64() * 1e3,
            gbps(c.bytes, median)
        );
    }
    Ok(())
}

fn main() {
    let builder = Builder::new("pipeline")
        .function("produce", produce)
        .function("transform", transform)
        .function("reduce", reduce);
    // In a function process, `init` serves the stages and never returns;
    // arguments are only read by the driver.
    let yr = match builder.init() {
        Ok(yr) => yr,
        Err(e) => {
            eprintln!("pipeline: {e}");
            std::process::exit(1);
        }
    };
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pipeline: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&yr, &config) {
        eprintln!("pipeline: {e}");
        std::process::exit(1);
    }
}
