//! Test helper: a prefork server of two workers driven by signals
//! (`Prefork::trap_signals`). Prints `ready`, then `generation N` each time
//! a reload's generation is serving (or, with the argument `resize`,
//! `workers N, generation G` each time the server settles at another
//! number of workers or generation),
//! then `stopped` when the server has stopped, and exits 0 (or `timed out`
//! and 1 if no signal stopped it within 20 s).

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};

async fn idle(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|_conn, _link| async {}).await
}
static IDLE: PreforkEntry = fork_prefork::entry!(idle);

/// Prints `generation N` each time a new generation serves alone.
async fn generations(server: Prefork) {
    let mut generation = 1;
    loop {
        let s = server
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
}

/// Prints `workers N, generation G` each time the server settles (nothing
/// starting or stopping) at another number of workers or generation.
async fn sizes(server: Prefork) {
    let mut now = (2, 1);
    loop {
        let s = server
            .wait_until(|s| {
                s.stopped
                    || (s.starting == 0
                        && s.stopping == 0
                        && (s.idle + s.busy, s.generation) != now)
            })
            .await;
        if s.stopped {
            return;
        }
        now = (s.idle + s.busy, s.generation);
        println!("workers {}, generation {}", now.0, now.1);
    }
}

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
    if std::env::args().nth(1).as_deref() == Some("resize") {
        tokio::spawn(sizes(server.clone()));
    } else {
        tokio::spawn(generations(server.clone()));
    }
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
