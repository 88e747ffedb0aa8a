//! Test helper: starts a remote template (this binary, run by a local
//! command through `CommandConnector`) with two workers that ignore EOF,
//! prints the pids of the remote side, its template and the workers, then
//! waits forever, to be killed with SIGKILL. Also a binary of another build
//! than the test's, for the build check. With the arguments `ssh CONFIG`,
//! the command is `ssh -F CONFIG fork-test` (the throwaway sshd of
//! `.ci/sshd`); with `openssh CONFIG`, the same host through `SshConnector`
//! (a ControlMaster; the workers' streams forwarded).

use fork_core::remote::{CommandConnector, Connector, SshConnector};
use fork_core::{Context, Entry, Template};

fn sleep_forever(_: Context) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
static SLEEP_FOREVER: Entry = fork_core::entry!(sleep_forever);

#[fork_core::main]
async fn main() -> fork_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let connector: Box<dyn Connector> = match args.as_slice() {
        [ssh, config] if ssh == "ssh" => Box::new(
            CommandConnector::new("ssh")
                .args(["-F", config, "fork-test"])
                .shell_line(true),
        ),
        [openssh, config] if openssh == "openssh" => {
            Box::new(SshConnector::new("fork-test").config_file(config))
        }
        _ => Box::new(CommandConnector::new("env").arg("-i")),
    };
    let template = Template::remote(connector).start().await?;
    let agent = std::fs::read_to_string(format!("/proc/{}/stat", template.id()))?
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse::<u32>().ok())
        .expect("the template's parent pid");
    println!("remote side {agent}");
    println!("template {}", template.id());
    let mut workers = Vec::new();
    for _ in 0..2 {
        let w = template.fork().run(&SLEEP_FOREVER).await?;
        println!("worker {}", w.id());
        workers.push(w);
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
