//! Test helper: a prefork server on the sockets systemd's socket
//! activation passed (`LISTEN_FDS`, set up by the test). Prints the names
//! of the sockets it got, then `ready` and its workers' pids; each worker
//! answers a connection with its pid; on a line on stdin the server stops.

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

async fn whoami(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|mut conn, _link| async move {
        let _ = conn
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .await;
    })
    .await
}
static WHOAMI: PreforkEntry = fork_prefork::entry!(whoami);

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: activated
    let passed = fork_core::take_listen_fds();
    let names: Vec<_> = passed.iter().map(|l| l.name.clone()).collect();
    println!("names {names:?}");
    let mut server = Prefork::builder(Template::new()?, &WHOAMI).workers(2);
    for socket in passed {
        server = server.listener(socket);
    }
    let server = server.start()?;
    // ANCHOR_END: activated
    let stats = server.wait_until(|s| s.idle == 2).await;
    println!("ready {:?}", stats.pids_of(1));
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    server.stop().await?;
    Ok(())
}
