//! `hello`: a stateless function. Replies "hello, <input>" and says which instance answered.
//!
//! Deploy and call it (after `yr start --master`):
//! `yr function deploy --file examples/hello/function.toml && yr invoke hello --data world`

fn main() {
    yr_runtime::App::new()
        .handler("hello", |ctx, input| {
            let who = String::from_utf8_lossy(input);
            // The deployment's environment reaches the process (GREETING=hi makes it "hi, ...").
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
            let who = if who.is_empty() { "world".into() } else { who };
            Ok(format!("{greeting}, {who} (from {})", ctx.instance_id()).into_bytes())
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
        // Calls another function through the proxy: "relay" forwards its input to `hello`.
        .handler("relay", |ctx, input| {
            let reply = ctx.invoke("hello", input)?;
            Ok([b"relayed: ".as_slice(), &reply].concat())
        })
        // Stores its input in the node's data worker, reads it back as a zero-copy view, and
        // says whether the view lies in the shared mapping and holds the same bytes.
        .handler("store", |ctx, input| {
            let store = ctx.store()?;
            let id = yr_datastore::ObjectId::random(7);
            store.put(id, input).map_err(|e| e.to_string())?;
            let view = store
                .get_one(id, std::time::Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let inside = store.mapping().contains(&(view.as_ptr() as usize));
            let same = &view[..] == input;
            drop(view);
            store.delete_one(id).map_err(|e| e.to_string())?;
            Ok(format!(
                "stored {} bytes; zero-copy view: {inside}; same bytes: {same}",
                input.len()
            )
            .into_bytes())
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
