//! Resource sampling from `/proc` (Linux only).
//!
//! Node-wide CPU and memory come from `/proc/stat` and `/proc/meminfo`;
//! per-process CPU time and resident memory from `/proc/<pid>/stat` and
//! `/proc/<pid>/statm`. Samples are cheap snapshots of cumulative counters:
//! CPU use is only meaningful as the difference of two samples, which is
//! what [`cpu_busy_millis`] and [`process_cpu_millis`] compute.
//!
//! Invariants:
//! - Nothing here panics on odd `/proc` contents; unparsable text is a
//!   [`ProcError::Parse`] naming the file.
//! - A process that disappears while being sampled is always reported as
//!   [`ProcError::Gone`], never as a generic I/O error, so callers can tell
//!   "exited" apart from "broken".
//! - Differences of counters saturate at zero, so samples passed in the wrong
//!   order (or across a pid reuse) give 0 rather than a huge number.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// Why a sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process (pid) exited while, or before, being sampled.
    #[error("process {0} is gone")]
    Gone(u32),
    /// A `/proc` file could not be read for another reason.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `/proc` file's text is not what Linux writes there.
    #[error("could not parse {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

/// A snapshot of node-wide capacity and cumulative CPU counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSample {
    /// Usable CPU capacity in millicores (cores * 1000).
    pub cpu_millis_total: u64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Cumulative non-idle ticks over all CPUs since boot.
    pub cpu_busy_ticks: u64,
    /// Cumulative ticks over all CPUs since boot.
    pub cpu_total_ticks: u64,
}

/// A snapshot of one process's cumulative CPU time and current RSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    pub utime_stime_ticks: u64,
    pub rss_bytes: u64,
    pub at: Instant,
}

fn read_proc(path: &Path) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| ProcError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, detail: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

pub fn sample_node() -> Result<NodeSample, ProcError> {
    let stat_path = Path::new("/proc/stat");
    let stat = read_proc(stat_path)?;
    let cpu = parse_proc_stat(&stat).ok_or_else(|| parse_err(stat_path, "no valid 'cpu' line"))?;

    let meminfo_path = Path::new("/proc/meminfo");
    let meminfo = read_proc(meminfo_path)?;
    let (memory_total_bytes, memory_available_bytes) = parse_meminfo(&meminfo)
        .ok_or_else(|| parse_err(meminfo_path, "MemTotal or MemAvailable/MemFree missing"))?;

    // available_parallelism honours affinity masks and cgroup CPU quotas, which
    // is the capacity we may actually hand out; the /proc/stat count is only
    // a fallback for when it cannot be determined.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(cpu.cpus)
        .max(1);

    Ok(NodeSample {
        cpu_millis_total: cores.saturating_mul(1000),
        memory_total_bytes,
        memory_available_bytes: memory_available_bytes.min(memory_total_bytes),
        cpu_busy_ticks: cpu.busy,
        cpu_total_ticks: cpu.total,
    })
}

/// Millicores busy between two node samples: the busy share of the elapsed
/// ticks times the node's capacity.
pub fn cpu_busy_millis(prev: &NodeSample, now: &NodeSample) -> u64 {
    let total = now.cpu_total_ticks.saturating_sub(prev.cpu_total_ticks);
    if total == 0 {
        return 0;
    }
    let busy = now
        .cpu_busy_ticks
        .saturating_sub(prev.cpu_busy_ticks)
        .min(total);
    let millis = u128::from(busy) * u128::from(now.cpu_millis_total) / u128::from(total);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTicks {
    busy: u64,
    total: u64,
    cpus: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat` and counts `cpuN` lines.
fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let mut aggregate = None;
    let mut cpus = 0u64;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(label) = fields.next() else { continue };
        if label == "cpu" {
            let values: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
            // user nice system idle [iowait irq softirq steal guest guest_nice];
            // guest time is already included in user/nice, so it is not added.
            if values.len() < 4 {
                return None;
            }
            let total: u64 = values.iter().take(8).sum();
            let idle = values[3].saturating_add(values.get(4).copied().unwrap_or(0));
            aggregate = Some((total.saturating_sub(idle), total));
        } else if label
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            cpus += 1;
        }
    }
    let (busy, total) = aggregate?;
    Some(CpuTicks {
        busy,
        total,
        cpus: cpus.max(1),
    })
}

/// Returns (total, available) memory in bytes from `/proc/meminfo` text.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut available = None;
    let mut free_ish = 0u64;
    let mut saw_free = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(kib) = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = kib.saturating_mul(1024);
        match key {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            // Kernels before 3.14 lack MemAvailable; free + reclaimable
            // caches is the conventional approximation.
            "MemFree" => {
                saw_free = true;
                free_ish = free_ish.saturating_add(bytes);
            }
            "Buffers" | "Cached" => free_ish = free_ish.saturating_add(bytes),
            _ => {}
        }
    }
    let available = available.or(saw_free.then_some(free_ish))?;
    Some((total?, available))
}

pub fn sample_process(pid: u32) -> Result<ProcSample, ProcError> {
    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = read_process_file(pid, &stat_path)?;
    let at = Instant::now();
    let utime_stime_ticks = parse_stat_ticks(&stat).map_err(|d| parse_err(&stat_path, d))?;

    let statm_path = PathBuf::from(format!("/proc/{pid}/statm"));
    let statm = read_process_file(pid, &statm_path)?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| parse_err(&statm_path, "missing resident page count"))?;

    Ok(ProcSample {
        pid,
        utime_stime_ticks,
        rss_bytes: pages.saturating_mul(page_size()),
        at,
    })
}

/// Reads a `/proc/<pid>/...` file, mapping "the process went away" to `Gone`.
fn read_process_file(pid: u32, path: &Path) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| {
        // ENOENT: no such pid. ESRCH: it exited between open and read.
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            ProcError::Gone(pid)
        } else {
            ProcError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Extracts utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(line: &str) -> Result<u64, String> {
    let close = line
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command name".to_owned())?;
    // After ')' come fields 3 (state) onwards, so field N is at index N - 3.
    let mut fields = line[close + 1..].split_ascii_whitespace();
    let mut field = |n: usize, name: &str| -> Result<u64, String> {
        let raw = fields
            .nth(n)
            .ok_or_else(|| format!("missing field {name}"))?;
        raw.parse::<u64>()
            .map_err(|e| format!("field {name} {raw:?}: {e}"))
    };
    let utime = field(14 - 3, "14 (utime)")?;
    let stime = field(0, "15 (stime)")?;
    Ok(utime.saturating_add(stime))
}

/// CPU use of a process in millicores over the interval between two samples.
pub fn process_cpu_millis(prev: &ProcSample, now: &ProcSample) -> u64 {
    if prev.pid != now.pid {
        return 0;
    }
    let elapsed_ns = now.at.saturating_duration_since(prev.at).as_nanos();
    if elapsed_ns == 0 {
        return 0;
    }
    let ticks = u128::from(now.utime_stime_ticks.saturating_sub(prev.utime_stime_ticks));
    // millicores = 1000 * (ticks / hz) / (elapsed_ns / 1e9)
    let millis = ticks * 1_000 * 1_000_000_000 / (u128::from(clock_ticks()) * elapsed_ns);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

fn sysconf_positive(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a process-wide configuration value; it takes
    // no pointers and is safe to call with any name (unknown ones return -1).
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&v| v > 0)
}

fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    // 4 KiB is the page size on every Linux target we run on; the fallback
    // only matters if sysconf were to fail, which Linux does not do.
    *PAGE_SIZE.get_or_init(|| sysconf_positive(libc::_SC_PAGESIZE).unwrap_or(4096))
}

/// Clock ticks per second (`USER_HZ`): the unit of `/proc`'s cpu times.
pub fn clock_ticks() -> u64 {
    static CLK_TCK: OnceLock<u64> = OnceLock::new();
    // USER_HZ is fixed at 100 in the Linux ABI; sysconf is asked anyway.
    *CLK_TCK.get_or_init(|| sysconf_positive(libc::_SC_CLK_TCK).unwrap_or(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parse_stat_with_tricky_comm() {
        let line = "4242 (we ) (ird) n a)me) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 25 3 4 20 0 1 0 12345 1000000 200 18446744073709551615\n";
        assert_eq!(parse_stat_ticks(line), Ok(42));
        assert!(parse_stat_ticks("4242 (x S 1 2").is_err());
        assert!(parse_stat_ticks("4242 (x) S 1 2 3").is_err());
        let bad = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 25 0 0";
        assert!(parse_stat_ticks(bad).unwrap_err().contains("utime"));
    }

    #[test]
    fn parse_proc_stat_and_meminfo() {
        let stat = "cpu  100 10 50 800 40 5 5 0 7 0\n\
                    cpu0 50 5 25 400 20 2 3 0 0 0\n\
                    cpu1 50 5 25 400 20 3 2 0 0 0\n\
                    intr 1 2 3\n";
        let ticks = parse_proc_stat(stat).unwrap();
        assert_eq!(ticks.total, 1010);
        assert_eq!(ticks.busy, 1010 - 840);
        assert_eq!(ticks.cpus, 2);
        assert_eq!(parse_proc_stat("intr 1\n"), None);

        let mem = "MemTotal: 2000 kB\nMemFree: 100 kB\nMemAvailable: 1500 kB\n";
        assert_eq!(parse_meminfo(mem), Some((2000 * 1024, 1500 * 1024)));
        let old = "MemTotal: 2000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 90 kB\n";
        assert_eq!(parse_meminfo(old), Some((2000 * 1024, 200 * 1024)));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn sample_node_is_sane() {
        let a = sample_node().unwrap();
        assert!(a.cpu_millis_total >= 1000);
        assert!(a.memory_total_bytes > 0);
        assert!(a.memory_available_bytes <= a.memory_total_bytes);
        assert!(a.cpu_total_ticks > 0);
        assert!(a.cpu_busy_ticks <= a.cpu_total_ticks);
        let b = sample_node().unwrap();
        assert!(cpu_busy_millis(&a, &b) <= b.cpu_millis_total);
        assert_eq!(cpu_busy_millis(&a, &a), 0);
    }

    #[test]
    fn cpu_busy_millis_arithmetic() {
        let prev = NodeSample {
            cpu_millis_total: 2000,
            memory_total_bytes: 1,
            memory_available_bytes: 1,
            cpu_busy_ticks: 100,
            cpu_total_ticks: 1000,
        };
        let now = NodeSample {
            cpu_busy_ticks: 150,
            cpu_total_ticks: 1200,
            ..prev
        };
        assert_eq!(cpu_busy_millis(&prev, &now), 500);
        // Reversed order saturates instead of wrapping.
        assert_eq!(cpu_busy_millis(&now, &prev), 0);
    }

    #[test]
    fn sample_self_has_rss() {
        let s = sample_process(std::process::id()).unwrap();
        assert_eq!(s.pid, std::process::id());
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn busy_thread_shows_cpu_use() {
        let pid = std::process::id();
        let before = sample_process(pid).unwrap();
        let spinner = std::thread::spawn(|| {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(200) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        let _ = spinner.join();
        let after = sample_process(pid).unwrap();
        assert!(after.utime_stime_ticks > before.utime_stime_ticks);
        assert!(process_cpu_millis(&before, &after) > 0);
        assert_eq!(process_cpu_millis(&after, &before), 0);
    }

    #[test]
    fn missing_process_is_gone() {
        assert!(matches!(sample_process(u32::MAX), Err(ProcError::Gone(p)) if p == u32::MAX));

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(sample_process(pid), Err(ProcError::Gone(p)) if p == pid));
    }
}
