//! What a bench's figures were measured on: CPU count and model, memory, kernel. Read from
//! `/proc`, so a missing fact is `null` rather than an error (the figures still stand).

use serde_json::{json, Value};

/// The first value of `key` in a `key : value` file such as /proc/cpuinfo.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// This machine's facts as one JSON object.
pub fn facts() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_bytes = field(&meminfo, "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": field(&cpuinfo, "model name"),
        "mem_total_bytes": mem_bytes,
        "kernel": kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_key_not_by_prefix() {
        let t = "model name\t: Some CPU @ 2GHz\nmodel\t: 85\nMemTotal:  1024 kB\n";
        assert_eq!(field(t, "model name").as_deref(), Some("Some CPU @ 2GHz"));
        assert_eq!(field(t, "model").as_deref(), Some("85"));
        assert_eq!(field(t, "MemTotal").as_deref(), Some("1024 kB"));
        assert_eq!(field(t, "flags"), None);
    }
}
