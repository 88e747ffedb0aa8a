//! Test helper: breaks the init-first rule in the way named by its argument
//! and prints what fork-core says (exit code 3), or shows the right way with
//! `#[fork_core::main]`-like code (`macro`).

use fork_core::{Context, Entry, Template};

fn exit7(_: Context) -> i32 {
    7
}
static EXIT7: Entry = fork_core::entry!(exit7);

fn report(result: fork_core::Result<()>) -> ! {
    match result {
        Ok(()) => {
            println!("no error");
            std::process::exit(0)
        }
        Err(e) => {
            println!("{e}");
            std::process::exit(3)
        }
    }
}

#[fork_core::main]
async fn with_macro() -> fork_core::Result<()> {
    let mut worker = Template::shared()?.fork().run(&EXIT7).await?;
    let status = worker.wait().await?;
    println!("worker exited with {}", status.code().unwrap_or(-1));
    Ok(())
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "thread" => {
            let _t = std::thread::spawn(std::thread::park);
            report(fork_core::Init::new().try_init())
        }
        "runtime" => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let _guard = rt.enter();
            report(fork_core::Init::new().try_init())
        }
        "no-init" => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            report(rt.block_on(async { Template::new().map(drop) }))
        }
        "macro" => report(with_macro()),
        _ => {
            // Templates are started without arguments: this is where one
            // arrives, so init() comes first on this path.
            fork_core::init();
            eprintln!("usage: init-order thread|runtime|no-init|macro");
            std::process::exit(2)
        }
    }
}
