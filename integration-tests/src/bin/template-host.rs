//! Test helper: a program using fork-core the way a user's would, in one of
//! several situations that a test cannot set up inside its own (threaded,
//! shared) process. It prints what it saw; the test checks it.
//!
//! - `buffered-output`: an init function prints without a newline, then
//!   three workers are forked and exit. The text must appear once.
//! - `early-fds FILE`: a file opened before `init` (close-on-exec, as std
//!   opens everything) and a pipe end whose close-on-exec flag was cleared
//!   (as one inherited through `exec` is): the early template keeps the
//!   first (a worker writes to it) and closes the second.
//! - `fd-limit`: forks until `RLIMIT_NOFILE` stops it, and prints the error.
//! - `group-signal`: a pool runs four 400 ms jobs (two running, two queued);
//!   on `SIGINT` or `SIGTERM` (sent to this program's whole process group
//!   by the test, as a terminal's Ctrl-C or `kill -TERM -<pgid>` would) it
//!   shuts the pool down gracefully and reports the jobs and crashes.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use fork_core::{Context, Entry, InitFn, Template};
use fork_rpc::{RpcEntry, Setup};
use tarpc::context;

fn print_no_newline(text: String) -> Result<(), String> {
    print!("{text}");
    Ok(())
}
static PRINT_NO_NEWLINE: InitFn<String> = fork_core::init_fn!(print_no_newline);

fn exit_0(_: Context) -> i32 {
    0
}
static EXIT_0: Entry = fork_core::entry!(exit_0);

/// Opened before `init`.
static LOG: OnceLock<std::fs::File> = OnceLock::new();

fn write_log(_: Context) -> i32 {
    match LOG.get().map(|mut log| log.write_all(b"from a worker\n")) {
        Some(Ok(())) => 0,
        _ => 1,
    }
}
static WRITE_LOG: Entry = fork_core::entry!(write_log);

#[tarpc::service]
trait Sleeper {
    async fn sleep(ms: u64) -> u32;
}

#[derive(Clone)]
struct SleeperServer;

impl Sleeper for SleeperServer {
    async fn sleep(self, _: context::Context, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }
}

fn sleeper(_: &mut Setup<()>) -> Result<ServeSleeper<SleeperServer>, String> {
    Ok(SleeperServer.serve())
}
static SLEEPER: RpcEntry<SleeperRequest, SleeperResponse> = fork_rpc::entry!(sleeper);

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The descriptors `pid` holds, as link targets.
fn links_of(pid: u32) -> Result<Vec<String>> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let link = std::fs::read_link(entry?.path())?;
        links.push(link.to_string_lossy().into_owned());
    }
    Ok(links)
}

fn main() -> Result {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    // Only `early-fds` opens anything before `init`, as a program's statics
    // and loggers would; `init` still comes first on a template's path (a
    // template gets no arguments).
    let mut inherited: Option<OwnedFd> = None;
    if mode == "early-fds" {
        let path = args.next().ok_or("early-fds needs a file")?;
        LOG.set(std::fs::File::create(path)?)
            .map_err(|_| "log set twice")?;
        // Its only end (both ends of a pipe show the same link).
        let (r, _) = std::io::pipe()?;
        // As if inherited through exec: no close-on-exec.
        nix::fcntl::fcntl(
            r.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        inherited = Some(r.into());
        fork_core::Init::new().early_template(true).init();
    } else {
        fork_core::init();
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match mode.as_str() {
            "buffered-output" => buffered_output().await,
            "early-fds" => early_fds(inherited.ok_or("no pipe")?).await,
            "fd-limit" => fd_limit().await,
            "group-signal" => group_signal().await,
            _ => Err(
                "usage: template-host buffered-output|early-fds FILE|fd-limit|group-signal".into(),
            ),
        }
    })
}

async fn buffered_output() -> Result {
    let t = Template::new()?;
    t.init(&PRINT_NO_NEWLINE, &"[text printed once]".to_owned());
    for _ in 0..3 {
        let mut w = t.fork().run(&EXIT_0).await?;
        w.wait().await?;
    }
    t.shutdown().await?;
    Ok(())
}

async fn early_fds(inherited: OwnedFd) -> Result {
    let early = Template::early()?;
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", inherited.as_raw_fd()))?;
    let pipe = pipe.to_string_lossy();
    let log = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        LOG.get().ok_or("no log")?.as_raw_fd()
    ))?;
    let log = log.to_string_lossy();
    early.ready().await?;
    let links = links_of(early.id())?;
    println!(
        "early template keeps the log: {}",
        links.iter().any(|l| *l == log)
    );
    println!(
        "early template keeps the inherited pipe: {}",
        links.iter().any(|l| *l == pipe)
    );
    let mut w = early.fork().run(&WRITE_LOG).await?;
    println!("worker wrote to the log: {}", w.wait().await?.success());
    let exec = Template::new()?;
    exec.ready().await?;
    let links = links_of(exec.id())?;
    println!(
        "exec'd template keeps the inherited pipe: {}",
        links.iter().any(|l| *l == pipe)
    );
    Ok(())
}

async fn fd_limit() -> Result {
    let t = Template::new()?;
    t.ready().await?;
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        open + 8,
        open + 8,
    )?;
    let mut workers = Vec::new();
    for _ in 0..100 {
        match t.fork().run(&EXIT_0).await {
            Ok(w) => workers.push(w),
            Err(e) => {
                println!("{e}");
                return Ok(());
            }
        }
    }
    Err("the descriptor limit was never reached".into())
}

async fn group_signal() -> Result {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let t = Template::new()?;
    let pool = fork_pool::Pool::builder(t.clone(), &SLEEPER)
        .max(2)
        .idle(2)
        .load(1)
        .build();
    let client = SleeperClient::from(pool.clone());
    let jobs = tokio::spawn(async move {
        let calls = (0..4).map(|_| client.sleep(context::current(), 400));
        futures::future::join_all(calls).await
    });
    pool.wait_until(|s| s.busy == 2 && s.queued == 2).await;
    println!("ready {} {:?}", t.id(), pool.worker_pids());
    std::io::stdout().flush()?;
    tokio::select! {
        _ = interrupt.recv() => println!("SIGINT"),
        _ = terminate.recv() => println!("SIGTERM"),
    }
    // The parent decides: a graceful shutdown, every job finished.
    pool.shutdown().await;
    let ok = jobs.await?.into_iter().filter(Result::is_ok).count();
    println!("jobs ok: {ok}, crashed: {}", pool.stats().crashed);
    Ok(())
}
