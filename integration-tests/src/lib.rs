//! Shared helpers of the integration tests: a test runner for `harness =
//! false` targets (whose `main` must call `fork_core::init` first),
//! process inspection through `/proc`, and (in [`remote`]) the fixtures of
//! the remote-template tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::LazyLock;

pub use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Trial};

pub mod remote;

/// The runtime every test of a target shares (a template belongs to the
/// runtime it was created in).
pub static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// A test body.
pub type TestFn = fn() -> Result<(), Failed>;

/// Runs `tests` with libtest-mimic's command line (so `cargo test` and
/// nextest filters work), first saying that the panics and errors they
/// print are expected. Call after `fork_core::init`.
pub fn run(tests: &[(&'static str, TestFn)]) -> ! {
    run_with(
        tests,
        Some(
            "note: these tests make workers panic, send bad bytes and get killed on purpose: \
             the panic messages, backtraces and protocol errors printed below are expected; \
             the result of each test is on its own `test ... ok` line",
        ),
    )
}

/// [`run`] for tests that print nothing on purpose: no note first.
pub fn run_quietly(tests: &[(&'static str, TestFn)]) -> ! {
    run_with(tests, None)
}

/// [`run_quietly`], one test at a time (for tests that measure the whole
/// process, as counting its allocations does).
pub fn run_serially(tests: &[(&'static str, TestFn)]) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    run_args(args, tests, None)
}

fn run_with(tests: &[(&'static str, TestFn)], note: Option<&str>) -> ! {
    run_args(Arguments::from_args(), tests, note)
}

fn run_args(args: Arguments, tests: &[(&'static str, TestFn)], note: Option<&str>) -> ! {
    if let Some(note) = note
        && !args.list
    {
        eprintln!("{note}");
    }
    let trials = tests
        .iter()
        .map(|&(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// Runs an async test body on the shared runtime.
pub fn block_on<F: Future<Output = Result<(), Failed>>>(f: F) -> Result<(), Failed> {
    RT.block_on(f)
}

/// Bounds a test's async part to 60 s: a hang is a failure, not a stuck
/// run.
///
/// # Errors
///
/// `f`'s, or that it timed out.
pub async fn bounded<T>(f: impl Future<Output = Result<T, Failed>>) -> Result<T, Failed> {
    bounded_by(std::time::Duration::from_secs(60), f).await
}

/// [`bounded`] to `limit`.
///
/// # Errors
///
/// `f`'s, or that it timed out.
pub async fn bounded_by<T>(
    limit: std::time::Duration,
    f: impl Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Failed::from(format!("timed out after {limit:?}")))?
}

/// Reads one line from `conn`, without its newline (to the end if there is
/// no newline).
///
/// # Errors
///
/// If reading fails or the line is not UTF-8.
pub async fn read_line(conn: &mut tokio::net::TcpStream) -> Result<String, Failed> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).await.map_err(fail)? == 1 && byte[0] != b'\n' {
        bytes.push(byte[0]);
    }
    String::from_utf8(bytes).map_err(fail)
}

/// Turns any error into a test failure with its `Debug` form.
pub fn fail(e: impl std::fmt::Debug) -> Failed {
    format!("{e:?}").into()
}

/// Asserts a condition, failing the test with a message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

fn forbid_forks(_: ()) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).map_err(|e| e.to_string())?;
        nix::unistd::setuid(nobody).map_err(|e| e.to_string())?;
    }
    fork_core::testing::set_nproc_limit(0).map_err(|e| e.to_string())
}
/// An init function that makes further forks in the process it runs in fail
/// with `EAGAIN` (for a template of a test's own): it drops root (which
/// ignores `RLIMIT_NPROC`) and allows no process.
pub static FORBID_FORKS: fork_core::InitFn<()> = fork_core::init_fn!(forbid_forks);

/// Waits (without sleeping: on a pidfd) until every pid has exited, up to
/// 10 s each; fails naming the first that did not.
pub async fn all_exit(pids: impl IntoIterator<Item = u32>) -> Result<(), Failed> {
    all_exit_within(pids, std::time::Duration::from_secs(10)).await
}

/// [`all_exit`], up to `limit` each.
pub async fn all_exit_within(
    pids: impl IntoIterator<Item = u32>,
    limit: std::time::Duration,
) -> Result<(), Failed> {
    for pid in pids {
        let gone = tokio::task::spawn_blocking(move || fork_core::testing::wait_exit(pid, limit))
            .await
            .map_err(fail)?
            .map_err(fail)?;
        ensure!(gone, "process {pid} did not exit within {limit:?}");
    }
    Ok(())
}

/// The descriptors a process holds: number → link target.
pub fn fds_of(pid: u32) -> std::io::Result<BTreeMap<i32, String>> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        let target = std::fs::read_link(entry.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        fds.insert(fd, target);
    }
    Ok(fds)
}

/// The pids listed as children of `pid` (including zombies not yet reaped).
pub fn children_of(pid: u32) -> std::io::Result<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(s.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Number of threads of `pid`.
pub fn threads_of(pid: u32) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...), or `None` if it is gone.
pub fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.chars().next()
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// For a worker written by hand, posing as a fork-rpc worker: says it is
/// ready (fork-rpc's handshake), then reads the parent's first frame
/// (fork-rpc's framing, bincode). `Ok(None)` if that is no request of a
/// `Req`.
///
/// # Errors
///
/// If the socket fails.
pub fn first_request<Req: serde::de::DeserializeOwned>(
    socket: &mut (impl std::io::Read + std::io::Write),
) -> std::io::Result<Option<tarpc::Request<Req>>> {
    use bincode::Options;
    socket.write_all(&[0, 0, 0, 0, 0])?;
    let mut len = [0u8; 4];
    socket.read_exact(&mut len)?;
    let mut frame = vec![0; u32::from_be_bytes(len) as usize];
    socket.read_exact(&mut frame)?;
    Ok(
        match bincode::DefaultOptions::new().deserialize::<tarpc::ClientMessage<Req>>(&frame) {
            Ok(tarpc::ClientMessage::Request(request)) => Some(request),
            _ => None,
        },
    )
}

/// Starts helper binary `exe` with its stdout piped and reads the pids it
/// announces, one a line (the last word of each), until a line `ready`.
/// For tests that kill such a helper and look for what it left.
///
/// # Errors
///
/// If it cannot be started, or says something else.
pub fn host_until_ready(exe: &str) -> Result<(std::process::Child, Vec<u32>), Failed> {
    host_until_ready_with(exe, &[])
}

/// The test of "the parent killed with `kill -9` leaves nothing behind":
/// makes this process a subreaper, starts the host binary `exe` with
/// `args` ([`host_until_ready_with`]), checks that it reported `count`
/// processes, all running, and whatever `check` says of them, then kills
/// the host with `SIGKILL` (whatever the checks said: a failed test leaves
/// no host behind) and requires every process it reported gone within
/// `limit`. Reaps those that were re-parented here, leaving no zombie.
///
/// # Errors
///
/// The first check that fails.
pub fn killed_host_leaves_nothing(
    exe: &str,
    args: &[&str],
    count: usize,
    limit: std::time::Duration,
    check: impl FnOnce(&[u32]) -> Result<(), Failed>,
) -> Result<(), Failed> {
    fork_core::testing::set_child_subreaper().map_err(fail)?;
    let (mut host, pids) = host_until_ready_with(exe, args)?;
    let checked = (|| {
        if pids.len() != count {
            return Err(format!("the host reported {count} processes: {pids:?}").into());
        }
        for &pid in &pids {
            if state_of(pid).is_none_or(|s| s == 'Z') {
                return Err(format!("{pid} not running before the kill").into());
            }
        }
        check(&pids)
    })();
    host.kill().map_err(fail)?;
    host.wait().map_err(fail)?;
    checked?;
    for &pid in &pids {
        if !fork_core::testing::wait_exit(pid, limit).map_err(fail)? {
            return Err(format!("process {pid} survived its parent by more than {limit:?}").into());
        }
    }
    // Re-parented to us (subreaper): reap them.
    for &pid in &pids {
        let _ = fork_core::testing::reap(pid);
    }
    Ok(())
}

/// As [`host_until_ready`], the host started with `args`.
///
/// # Errors
///
/// As [`host_until_ready`].
pub fn host_until_ready_with(
    exe: &str,
    args: &[&str],
) -> Result<(std::process::Child, Vec<u32>), Failed> {
    use std::io::BufRead;
    let mut host = std::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let mut out = std::io::BufReader::new(host.stdout.take().ok_or("no stdout")?);
    let mut pids = Vec::new();
    let mut line = String::new();
    while out.read_line(&mut line).map_err(fail)? > 0 {
        if line.trim() == "ready" {
            break;
        }
        let pid: u32 = line
            .split_whitespace()
            .last()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("the host said {line:?}"))?;
        pids.push(pid);
        line.clear();
    }
    Ok((host, pids))
}

/// A TCP proxy on 127.0.0.1 that forwards each connection to `target`,
/// delaying every chunk it reads by `delay`, each way: a slow link where
/// the kernel has no `tc netem`. Bytes keep their order and the throughput
/// is not capped (chunks wait in memory), only late; a round trip through
/// it takes `2 * delay` more. Returns its address and its task (abort it,
/// or let the runtime end, to stop it).
///
/// # Errors
///
/// If it cannot listen.
pub async fn latency_proxy(
    target: std::net::SocketAddr,
    delay: std::time::Duration,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_r, client_w) = client.into_split();
                let (server_r, server_w) = server.into_split();
                tokio::join!(
                    delayed(client_r, server_w, delay),
                    delayed(server_r, client_w, delay)
                );
            });
        }
    });
    Ok((addr, task))
}

/// Copies `from` to `to`, each chunk `delay` after it was read; at EOF
/// (once the chunks before it are out) shuts `to` down.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A path under the system's temporary directory, named after this process
/// and `name`, removed (with what it holds) when dropped, so a failed test
/// leaves nothing behind. Whatever an earlier run left there is removed
/// first.
#[derive(Debug)]
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `$TMPDIR/fork-test-<pid>-<name>`, not created.
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("fork-test-{}-{name}", std::process::id()));
        let scratch = Scratch(path);
        scratch.remove();
        scratch
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The file name `RemoteBuilder::upload_to` gives this binary on the other
/// side (its file name here, `-`, its SHA-256 in hex), computed here
/// independently.
pub fn upload_name() -> Result<String, Failed> {
    use sha2::Digest;
    let exe = std::fs::read_link("/proc/self/exe").map_err(fail)?;
    let bytes = std::fs::read("/proc/self/exe").map_err(fail)?;
    let hash: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = exe.file_name().ok_or("no file name")?.to_string_lossy();
    Ok(format!("{name}-{hash}"))
}
