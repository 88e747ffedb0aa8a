//! Test helper: a prefork server of two workers driven by signals
//! (`Prefork::trap_signals`). Prints `ready`, then `generation N` each time
//! a reload's generation is serving, then `stopped` when the server has
//! stopped, and exits 0 (or `timed out` and 1 if no signal stopped it
//! within 20 s).

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};

async fn idle(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|_conn, _link| async {}).await
}
static IDLE: PreforkEntry = fork_prefork::entry!(idle);

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Prefork::builder(Template::new()?, &IDLE)
        .listener(std::net::TcpListener::bind("127.0.0.1:0")?)
        .workers(2)
        .on_reload(|| async { Template::new() })
        .start()?;
    // ANCHOR: signals
    server.wait_until(|s| s.idle == 2).await;
    let signals = server.trap_signals()?;
    println!("ready");
    // ANCHOR_END: signals
    let watcher = server.clone();
    tokio::spawn(async move {
        let mut generation = 1;
        loop {
            let s = watcher
                .wait_until(|s| {
                    s.stopped || (s.generation > generation && s.idle == 2 && s.stopping == 0)
                })
                .await;
            if s.stopped {
                return;
            }
            generation = s.generation;
            println!("generation {generation}");
        }
    });
    // Bounded: a signal that does nothing fails the test in 20 s, not
    // never.
    match tokio::time::timeout(std::time::Duration::from_secs(20), signals).await {
        Ok(outcome) => outcome?,
        Err(_) => {
            println!("timed out");
            server.stop().await?;
            std::process::exit(1);
        }
    }
    println!("stopped");
    Ok(())
}
