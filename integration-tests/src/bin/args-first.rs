//! Test helper: a program that breaks the init-first rule by parsing its
//! command line before `init`, as many do. A template gets only `argv[0]`,
//! takes the "no arguments" branch and exits 0 before `init`: the first
//! fork must say so clearly. Prints the error; exits 0 if it is the
//! expected one.

use fork_core::{Context, Entry, Error, Template};

fn exit_0(_: Context) -> i32 {
    0
}
static EXIT_0: Entry = fork_core::entry!(exit_0);

fn main() {
    if std::env::args().len() < 2 {
        // The bug: a template arrives here, and never reaches init().
        println!("usage: args-first run");
        return;
    }
    fork_core::init();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let result = rt.block_on(async { Template::new()?.fork().run(&EXIT_0).await.map(drop) });
    match result {
        Err(e @ Error::TemplateNotStarted { .. }) => {
            println!("{e}");
        }
        other => {
            println!("unexpected: {other:?}");
            std::process::exit(1);
        }
    }
}
