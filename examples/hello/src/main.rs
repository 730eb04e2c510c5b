//! `hello`: a stateless function. Replies "hello, <input>" and says which instance answered.
//!
//! Deploy and call it (after `yr start --master`):
//! `yr function deploy --file examples/hello/function.toml && yr invoke hello --data world`

fn main() {
    yr_runtime::App::new()
        .handler("hello", |ctx, input| {
            let who = String::from_utf8_lossy(input);
            let who = if who.is_empty() { "world".into() } else { who };
            Ok(format!("hello, {who} (from {})", ctx.instance_id()).into_bytes())
        })
        // Holds the call for the given number of milliseconds (for tests of queueing and
        // scaling), then says which instance served it.
        .handler("sleep", |ctx, input| {
            let ms: u64 = std::str::from_utf8(input)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| "sleep takes a number of milliseconds".to_string())?;
            std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
            Ok(ctx.instance_id().as_bytes().to_vec())
        })
        // A no-op for benchmarks: the request's bytes back.
        .handler("echo", |_ctx, input| Ok(input.to_vec()))
        .handler("crash", |_ctx, _input| {
            // For tests of crash handling: the process dies mid-call.
            eprintln!("crash requested; exiting with status 3");
            std::process::exit(3)
        })
        .run()
}
