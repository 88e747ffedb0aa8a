//! Test helper: a prefork server as systemd would run it (`NOTIFY_SOCKET`
//! set by the test): starts two workers, then, on a line on stdin, reloads
//! once and stops; exits 0.

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};
use tokio::io::AsyncBufReadExt;

async fn idle(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|_conn, _link| async {}).await
}
static IDLE: PreforkEntry = fork_prefork::entry!(idle);

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Prefork::builder(Template::new()?, &IDLE)
        .listener(std::net::TcpListener::bind("127.0.0.1:0")?)
        .workers(2)
        .start()?;
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    server.reload_with(Template::new()?).await?;
    server.stop().await?;
    Ok(())
}
