//! `yr store ...`: operator and scripting access to a running data worker.

use crate::util::size_arg;
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use yr_datastore::{Client, ObjectId};

#[derive(Args)]
pub struct Conn {
    /// The data worker's socket.
    #[arg(long)]
    socket: PathBuf,
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Print the worker's counters as JSON.
    Stats(Conn),
    /// List objects.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Maximum rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Store a file (or --data) as an object; prints its ID.
    Put {
        #[command(flatten)]
        conn: Conn,
        /// Object ID in hex (default: random).
        #[arg(long)]
        id: Option<String>,
        /// File to store.
        #[arg(long, conflicts_with = "data")]
        file: Option<PathBuf>,
        /// Literal bytes to store.
        #[arg(long)]
        data: Option<String>,
    },
    /// Write an object's bytes to stdout or a file.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// Object ID in hex.
        id: String,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long to wait for the object.
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
    },
    /// Delete objects.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Object IDs in hex.
        ids: Vec<String>,
    },
    /// Demo producer: writes SIZE bytes of a pattern, puts them, prints JSON.
    #[command(hide = true)]
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: String,
        #[arg(long, value_parser = size_arg)]
        size: u64,
    },
    /// Demo consumer: waits for an object, reads it in place, prints JSON.
    #[command(hide = true)]
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Wait for a line on stdin before timing gets (so the demo can
        /// let the producer exit first and not time its teardown).
        #[arg(long)]
        sync_stdin: bool,
    },
}

fn parse_id(s: &str) -> Result<ObjectId> {
    ObjectId::from_hex(s)
        .ok_or_else(|| anyhow!("invalid object id {s:?}: expected up to 48 hex digits"))
}

fn connect(c: &Conn) -> Result<Client> {
    Ok(Client::connect_named(&c.socket, "yr-cli")?)
}

pub fn run(cmd: StoreCmd) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        StoreCmd::Stats(c) => {
            let s = connect(&c)?.stats()?;
            let v = serde_json::json!({
                "capacity": s.capacity, "used": s.used, "largest_free": s.largest_free,
                "sealed": s.sealed, "unsealed": s.unsealed, "spilled": s.spilled,
                "spilled_bytes": s.spilled_bytes, "spill_used": s.spill_used,
                "spill_limit": s.spill_limit, "pinned": s.pinned, "clients": s.clients,
                "spill_ops": s.spill_ops, "restore_ops": s.restore_ops,
                "kv_keys": s.kv_keys, "meta_bytes": s.meta_bytes, "waiters": s.waiters,
                "secondary": s.secondary, "pulls": s.pulls, "pull_joins": s.pull_joins,
                "pulled_bytes": s.pulled_bytes, "serves": s.serves, "served_bytes": s.served_bytes,
            });
            writeln!(out, "{v}")?;
        }
        StoreCmd::List { conn, limit } => {
            for o in connect(&conn)?.list(limit)? {
                writeln!(
                    out,
                    "{} {:>12} bytes (+{} meta) {:?} pins={}",
                    o.id, o.data_size, o.meta_size, o.state, o.pins
                )?;
            }
        }
        StoreCmd::Put {
            conn,
            id,
            file,
            data,
        } => {
            let id = match id {
                Some(s) => parse_id(&s)?,
                None => ObjectId::random(0),
            };
            let bytes = match (file, data) {
                (Some(f), _) => {
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, Some(d)) => d.into_bytes(),
                (None, None) => return Err(anyhow!("give --file or --data")),
            };
            connect(&conn)?.put(id, &bytes)?;
            writeln!(out, "{id}")?;
        }
        StoreCmd::Get {
            conn,
            id,
            out: path,
            timeout_ms,
        } => {
            let g = connect(&conn)?.get_one(parse_id(&id)?, Duration::from_millis(timeout_ms))?;
            match path {
                Some(p) => std::fs::write(&p, &*g)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => out.write_all(&g)?,
            }
        }
        StoreCmd::Delete { conn, ids } => {
            let ids = ids
                .iter()
                .map(|s| parse_id(s))
                .collect::<Result<Vec<_>>>()?;
            for (id, r) in ids.iter().zip(connect(&conn)?.delete(&ids)?) {
                match r {
                    Ok(()) => writeln!(out, "{id} deleted")?,
                    Err(e) => writeln!(out, "{id} {e}")?,
                }
            }
        }
        StoreCmd::Produce { conn, id, size } => {
            let id = parse_id(&id)?;
            let client = connect(&conn)?;
            let data = pattern(size as usize);
            let crc = crc32c::crc32c(&data);
            let t = Instant::now();
            client.put(id, &data)?;
            let put = t.elapsed();
            let v = serde_json::json!({
                "role": "producer", "pid": std::process::id(), "bytes": size,
                "put_ms": put.as_secs_f64() * 1e3,
                "put_gbps": size as f64 / put.as_secs_f64() / 1e9,
                "crc32c": crc,
            });
            writeln!(out, "{v}")?;
        }
        StoreCmd::Consume {
            conn,
            id,
            timeout_ms,
            sync_stdin,
        } => {
            let id = parse_id(&id)?;
            let client = connect(&conn)?;
            let waited = Instant::now();
            let g = client.get_one(id, Duration::from_millis(timeout_ms))?;
            let waited = waited.elapsed();
            if sync_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
            }
            // More gets of the now-sealed object show the zero-copy cost on
            // its own, without the wait for the producer (median of 1000).
            let mut gets = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let t = Instant::now();
                let g2 = client.get_one(id, Duration::ZERO)?;
                drop(g2);
                gets.push(t.elapsed());
            }
            gets.sort();
            let get = gets[gets.len() / 2];
            let t = Instant::now();
            let crc = crc32c::crc32c(&g);
            let read = t.elapsed();
            let addr = g.as_ptr() as usize;
            let v = serde_json::json!({
                "role": "consumer", "pid": std::process::id(), "bytes": g.len(),
                "waited_ms": waited.as_secs_f64() * 1e3,
                "get_us": get.as_secs_f64() * 1e6,
                "zero_copy": client.mapping().contains(&addr) && client.mapping().contains(&(addr + g.len() - 1)),
                "checksum_gbps": g.len() as f64 / read.as_secs_f64() / 1e9,
                "crc32c": crc,
            });
            writeln!(out, "{v}")?;
        }
    }
    Ok(())
}

/// Deterministic, incompressible-looking bytes (xorshift), fast to make.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}
