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
        // A no-op for benchmarks: the request's bytes back.
        .handler("echo", |_ctx, input| Ok(input.to_vec()))
        .handler("crash", |_ctx, _input| {
            // For tests of crash handling: the process dies mid-call.
            eprintln!("crash requested; exiting with status 3");
            std::process::exit(3)
        })
        .run()
}
