//! Test helper: starts a prefork server of three workers on a loopback
//! listener, prints the template's and every worker's pid, then waits
//! forever, to be killed with SIGKILL.

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};

async fn idle(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|_conn, _link| async {}).await
}
static IDLE: PreforkEntry = fork_prefork::entry!(idle);

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let template = Template::new()?;
    println!("template {}", template.id());
    let server = Prefork::builder(template, &IDLE)
        .listener(std::net::TcpListener::bind("127.0.0.1:0")?)
        .workers(3)
        .start()?;
    let stats = server.wait_until(|s| s.idle == 3).await;
    for pid in stats.pids_of(1) {
        println!("worker {pid}");
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
