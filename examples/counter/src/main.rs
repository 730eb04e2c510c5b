//! `counter`: a stateful function. Each named instance keeps its own count; calls arrive in order.
//!
//! `yr function deploy --file examples/counter/function.toml`
//! `yr instance create counter --name c1`
//! `yr invoke counter --instance c1 --method add --data 5` prints the new count.

struct Counter {
    count: i64,
    calls: u64,
}

impl yr_runtime::Instance for Counter {
    fn call(
        &mut self,
        _ctx: &yr_runtime::Context,
        method: &str,
        input: &[u8],
    ) -> yr_runtime::HandlerResult {
        self.calls += 1;
        match method {
            "add" | "" => {
                let text =
                    std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
                let n: i64 = if text.trim().is_empty() {
                    1
                } else {
                    text.trim()
                        .parse()
                        .map_err(|_| format!("{text:?} is not an integer"))?
                };
                self.count += n;
                Ok(self.count.to_string().into_bytes())
            }
            // "MS N": waits MS milliseconds, then adds N (for tests of calls that time out: the
            // addition must never show once the caller was told the call failed).
            "add_after" => {
                let text =
                    std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
                let (ms, n) = text
                    .trim()
                    .split_once(' ')
                    .and_then(|(ms, n)| Some((ms.parse::<u64>().ok()?, n.parse::<i64>().ok()?)))
                    .ok_or_else(|| format!("{text:?} is not \"MS N\""))?;
                std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
                self.count += n;
                Ok(self.count.to_string().into_bytes())
            }
            "get" => Ok(self.count.to_string().into_bytes()),
            // The order in which calls arrived, as seen by the instance.
            "calls" => Ok(self.calls.to_string().into_bytes()),
            other => Err(format!(
                "counter has no method {other:?} (add, add_after, get, calls)"
            )),
        }
    }
}

fn main() {
    yr_runtime::App::new()
        .class("counter", |_ctx| Ok(Counter { count: 0, calls: 0 }))
        .run()
}
