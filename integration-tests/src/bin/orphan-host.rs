//! Test helper: starts an exec'd and an early template with two workers
//! each, prints every pid, then waits forever, to be killed with SIGKILL.

use std::io::Read;

use fork_core::{Context, Entry, Template};

fn block(ctx: Context) {
    let mut buf = [0u8; 16];
    while matches!(ctx.socket().read(&mut buf), Ok(n) if n > 0) {}
}
static BLOCK: Entry = fork_core::entry!(block);

#[fork_core::main(early_template)]
async fn main() -> fork_core::Result<()> {
    let mut workers = Vec::new();
    for template in [Template::new()?, Template::early()?] {
        println!("template {}", template.id());
        for _ in 0..2 {
            let w = template.fork().run(&BLOCK).await?;
            println!("worker {}", w.id());
            workers.push(w);
        }
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
