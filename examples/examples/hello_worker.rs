//! Forks workers from a template and talks to them over their sockets.
//!
//! Shows: `fork_core::init` first in `main`, a named entry, typed arguments,
//! the worker's socket, and exit statuses reported by the template.
//!
//! Run: `cargo run --example hello_worker`

use std::io::{BufRead, BufReader, Write};

use fork_core::{Context, Entry, Template};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

// ANCHOR: entry
/// Runs in the worker: reads lines from the parent and answers each.
fn greeter(ctx: Context) -> std::io::Result<i32> {
    let greeting: String = ctx.arg(0).expect("a greeting");
    let mut socket = ctx.socket();
    let mut served = 0;
    for name in BufReader::new(ctx.socket()).lines() {
        writeln!(
            socket,
            "{greeting}, {}! (from pid {})",
            name?,
            std::process::id()
        )?;
        served += 1;
    }
    Ok(served) // the exit code: how many names were greeted
}

static GREETER: Entry = fork_core::entry!(greeter);
// ANCHOR_END: entry

// ANCHOR: main
fn main() -> Result<(), Box<dyn std::error::Error>> {
    fork_core::init(); // first thing: in a template this never returns
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let template = Template::shared()?;
        for greeting in ["Hello", "Bonjour"] {
            let mut worker = template.fork().arg(greeting).run(&GREETER).await?;
            let stream = worker.take_stream().expect("a socket");
            let (read, mut write) = stream.into_split();
            write.write_all(b"Ada\nGrace\n").await?;
            drop(write); // EOF: the worker's loop ends
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Some(line) = lines.next_line().await? {
                println!("{line}");
            }
            let status = worker.wait().await?;
            println!("worker {} exited with {status}", worker.id());
            assert_eq!(status.code(), Some(2));
        }
        Ok(())
    })
}
// ANCHOR_END: main
