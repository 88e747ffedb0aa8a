//! fork-core, end to end: templates, preparation, workers, exit statuses,
//! descriptors, exec, and bad input. A `harness = false` target, because
//! `main` must call `fork_core::init` before libtest-mimic starts threads.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fork_core::testing::wait_exit;
use fork_core::{Context, Entry, Error, InitFn, Template};
use integration_tests::{
    FORBID_FORKS, Failed, all_exit, block_on, children_of, ensure, fail, fds_of, parent_of,
    state_of, threads_of,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

// ===== entries and init functions used by the tests =====

fn exit_with(ctx: Context) -> i32 {
    ctx.arg(0).expect("an exit code")
}
static EXIT_WITH: Entry = fork_core::entry!(exit_with);

/// What a worker reports about itself.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    pid: u32,
    args: Vec<Vec<u8>>,
    /// Descriptor → (link target, close-on-exec).
    fds: BTreeMap<i32, (String, bool)>,
    marker: Option<String>,
    preloaded: u64,
    fd_contents: Vec<String>,
    /// Its name in `ps` and `top`.
    comm: String,
}

fn cloexec(fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .unwrap_or(0);
    flags & libc::O_CLOEXEC as u32 != 0
}

fn report(mut ctx: Context) -> std::io::Result<()> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.insert(fd, (target.to_string_lossy().into_owned(), cloexec(fd)));
        }
    }
    let mut fd_contents = Vec::new();
    for fd in ctx.take_fds() {
        let mut file = std::fs::File::from(fd);
        let mut s = String::new();
        let _ = file.read_to_string(&mut s);
        fd_contents.push(s);
    }
    let r = Report {
        pid: std::process::id(),
        args: ctx.args().to_vec(),
        fds,
        marker: std::env::var("FORK_CORE_TEMPLATE").ok(),
        preloaded: PRELOADED.load(Ordering::SeqCst),
        fd_contents,
        comm: std::fs::read_to_string("/proc/self/comm")?
            .trim_end()
            .to_owned(),
    };
    let bytes = bincode::serialize(&r).expect("encodable");
    ctx.socket().write_all(&bytes)
}
static REPORT: Entry = fork_core::entry!(report);

/// Blocks until the parent closes the socket, then exits 0.
fn wait_for_eof(ctx: Context) -> i32 {
    let mut buf = [0u8; 64];
    while matches!(ctx.socket().read(&mut buf), Ok(n) if n > 0) {}
    0
}
static WAIT_FOR_EOF: Entry = fork_core::entry!(wait_for_eof);

fn panics(_ctx: Context) {
    panic!("this entry panics on purpose");
}
static PANICS: Entry = fork_core::entry!(panics);

fn write_to_fds(mut ctx: Context) -> std::io::Result<()> {
    let message: String = ctx.arg(0).expect("a message");
    for fd in ctx.take_fds() {
        std::fs::File::from(fd).write_all(message.as_bytes())?;
    }
    Ok(())
}
static WRITE_TO_FDS: Entry = fork_core::entry!(write_to_fds);

/// Writes its pid to the descriptor it was given, then waits for a signal,
/// whatever happens to its socket.
fn write_pid_and_park(mut ctx: Context) -> std::io::Result<()> {
    for fd in ctx.take_fds() {
        std::fs::File::from(fd).write_all(&std::process::id().to_le_bytes())?;
    }
    loop {
        nix::unistd::pause();
    }
}
static WRITE_PID_AND_PARK: Entry = fork_core::entry!(write_pid_and_park);

/// An init function that never returns.
fn park_init(_: ()) -> Result<(), String> {
    loop {
        nix::unistd::pause();
    }
}
static PARK_INIT: InitFn<()> = fork_core::init_fn!(park_init);

// Two entries registered under the same name.
static DUP_A: Entry = fork_core::entry!(exit_with, name = "integration::duplicate");
static DUP_B: Entry = fork_core::entry!(panics, name = "integration::duplicate");

static PRELOADED: AtomicU64 = AtomicU64::new(0);

fn preload(value: u64) -> Result<(), String> {
    PRELOADED.store(value, Ordering::SeqCst);
    Ok(())
}
static PRELOAD: InitFn<u64> = fork_core::init_fn!(preload);

fn failing_init(message: String) -> Result<(), String> {
    Err(message)
}
static FAILING_INIT: InitFn<String> = fork_core::init_fn!(failing_init);

fn panicking_init(_: ()) -> Result<(), String> {
    panic!("init panics on purpose")
}
static PANICKING_INIT: InitFn<()> = fork_core::init_fn!(panicking_init);

fn init_starting_a_thread(_: ()) -> Result<(), String> {
    std::thread::spawn(|| std::thread::sleep(Duration::from_secs(3600)));
    Ok(())
}
static INIT_STARTING_A_THREAD: InitFn<()> = fork_core::init_fn!(init_starting_a_thread);

/// A child an init function started in the template (as a library might),
/// and waits for itself.
static INIT_CHILD: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);

/// Starts a child that exits at once, and waits until it has exited without
/// reaping it: it is then a zombie that only its owner may reap.
fn start_child(_: ()) -> Result<(), String> {
    let child = std::process::Command::new("true")
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(pid),
        nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
    )
    .map_err(|e| e.to_string())?;
    *INIT_CHILD.lock().map_err(|e| e.to_string())? = Some(child);
    Ok(())
}
static START_CHILD: InitFn<()> = fork_core::init_fn!(start_child);

/// Its owner waits for the child: fails if someone else reaped it.
fn wait_child(_: ()) -> Result<(), String> {
    let mut child = INIT_CHILD
        .lock()
        .map_err(|e| e.to_string())?
        .take()
        .ok_or("no child")?;
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("the child exited with {status}")),
        Err(e) => Err(format!("its owner could not wait for the child: {e}")),
    }
}
static WAIT_CHILD: InitFn<()> = fork_core::init_fn!(wait_child);

/// Starts a template of its own, forks a worker exiting with the code it
/// was given, and exits with that worker's code.
fn nested_template(ctx: Context) -> i32 {
    let code: i32 = ctx.arg(0).expect("a code");
    let run = || -> Result<i32, Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let template = Template::new()?;
            let mut worker = template.fork().arg(&code).run(&EXIT_WITH).await?;
            Ok(worker.wait().await?.code().unwrap_or(-1))
        })
    };
    run().unwrap_or_else(|e| {
        eprintln!("nested template: {e}");
        1
    })
}
static NESTED_TEMPLATE: Entry = fork_core::entry!(nested_template);

/// Takes over the template whose descriptor it was sent, prepares it
/// further (an argument), forks a [`REPORT`] worker from it, and writes back
/// the template's pid and the worker's report.
fn take_over(mut ctx: Context) -> std::io::Result<()> {
    let fd = ctx.take_fds().pop().expect("the template's descriptor");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (pid, bytes) = rt
        .block_on(async {
            let template = Template::from_fd(fd).await?;
            template.arg("from the second process");
            let mut worker = template.fork().run(&REPORT).await?;
            let mut bytes = Vec::new();
            if let Some(mut stream) = worker.take_stream() {
                stream.read_to_end(&mut bytes).await?;
            }
            worker.wait().await?;
            Ok::<_, fork_core::Error>((template.id(), bytes))
        })
        .map_err(std::io::Error::other)?;
    ctx.socket().write_all(&pid.to_le_bytes())?;
    ctx.socket().write_all(&bytes)
}
static TAKE_OVER: Entry = fork_core::entry!(take_over);

/// The signal masks of `pid` from `/proc/<pid>/status`: (blocked, ignored).
fn signal_masks(pid: u32) -> Result<(u64, u64), Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(fail)?;
    let mask = |name: &str| -> Result<u64, Failed> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        u64::from_str_radix(line.trim(), 16).map_err(fail)
    };
    Ok((mask("SigBlk:")?, mask("SigIgn:")?))
}

/// Writes its own signal masks (blocked, ignored), then waits for EOF.
fn report_signal_masks(ctx: Context) -> std::io::Result<()> {
    let (blocked, ignored) =
        signal_masks(std::process::id()).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut socket = ctx.socket();
    socket.write_all(&blocked.to_le_bytes())?;
    socket.write_all(&ignored.to_le_bytes())?;
    let mut buf = [0u8; 64];
    while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}
static REPORT_SIGNAL_MASKS: Entry = fork_core::entry!(report_signal_masks);

/// Writes what its slot holds (data, and what its descriptors read), then
/// what the entry's own arguments and descriptors are.
fn report_slot(mut ctx: Context) -> std::io::Result<()> {
    let slot = ctx.take_slot().unwrap_or_default();
    let mut slot_fds = Vec::new();
    for fd in slot.fds {
        slot_fds.push(std::io::read_to_string(std::fs::File::from(fd))?);
    }
    let args: Vec<String> = (0..ctx.args().len())
        .map(|i| ctx.arg(i).unwrap_or_default())
        .collect();
    let fds: Vec<String> = ctx
        .take_fds()
        .into_iter()
        .map(|fd| std::io::read_to_string(std::fs::File::from(fd)).unwrap_or_default())
        .collect();
    let again = ctx.take_slot().is_some();
    let report = format!(
        "slot {:?} {slot_fds:?}; args {args:?}; fds {fds:?}; again {again}",
        String::from_utf8_lossy(&slot.data)
    );
    ctx.socket().write_all(report.as_bytes())
}
static REPORT_SLOT: Entry = fork_core::entry!(report_slot);

/// A pipe holding `text`, closed for writing: its read end.
fn pipe_with(text: &str) -> Result<std::io::PipeReader, Failed> {
    let (r, mut w) = std::io::pipe().map_err(fail)?;
    w.write_all(text.as_bytes()).map_err(fail)?;
    Ok(r)
}

/// Runs a helper binary and returns its stdout, failing unless it exits 0.
fn run_helper(path: &str, args: &[&str]) -> Result<String, Failed> {
    let out = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(fail)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{path} {args:?} exited with {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

// ===== helpers =====

/// Runs `entry` in a fork and returns the bytes it wrote and its status.
async fn collect(fork: &mut fork_core::Fork, entry: &Entry) -> Result<(Vec<u8>, i32), Failed> {
    let mut worker = fork.run(entry).await.map_err(fail)?;
    let mut out = Vec::new();
    let mut stream = worker.take_stream().ok_or("no stream")?;
    stream.read_to_end(&mut out).await.map_err(fail)?;
    let status = worker.wait().await.map_err(fail)?;
    Ok((out, status.into_raw()))
}

async fn report_of(fork: &mut fork_core::Fork) -> Result<Report, Failed> {
    let (bytes, status) = collect(fork, &REPORT).await?;
    ensure!(status == 0, "report exited with raw status {status}");
    bincode::deserialize(&bytes).map_err(fail)
}

// ===== tests =====

fn exit_codes_and_signals() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        for code in [0, 1, 42] {
            let mut w = t.fork().arg(&code).run(&EXIT_WITH).await.map_err(fail)?;
            let status = w.wait().await.map_err(fail)?;
            ensure!(status.code() == Some(code), "code {code}: got {status}");
        }
        let mut w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        ensure!(
            w.try_wait().map_err(fail)?.is_none(),
            "running worker has a status"
        );
        w.kill().await.map_err(fail)?;
        let status = w.wait().await.map_err(fail)?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "killed: got {status}"
        );
        ensure!(
            w.try_wait().map_err(fail)?.is_some(),
            "no status after kill"
        );
        // Killing again after exit is fine.
        w.kill().await.map_err(fail)?;
        // A catchable signal.
        let w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        w.signal(fork_core::Signal::SIGTERM).map_err(fail)?;
        let mut w = w;
        let status = w.wait().await.map_err(fail)?;
        ensure!(
            status.signal() == Some(libc::SIGTERM),
            "terminated: got {status}"
        );
        Ok(())
    })
}

fn worker_stream_is_nonblocking_and_cloexec() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let mut w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        let fd = w.stream().ok_or("no stream")?.as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(fail)?;
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .ok_or("no flags")?;
        ensure!(
            flags & libc::O_NONBLOCK as u32 != 0,
            "stream is blocking: {flags:o}"
        );
        ensure!(
            flags & libc::O_CLOEXEC as u32 != 0,
            "stream is not close-on-exec"
        );
        ensure!(
            w.id() > 0 && w.id() != std::process::id(),
            "bad pid {}",
            w.id()
        );
        ensure!(
            parent_of(w.id()) == Some(t.id()),
            "worker is not the template's child"
        );
        drop(w.take_stream());
        ensure!(w.wait().await.map_err(fail)?.success(), "worker failed");
        Ok(())
    })
}

fn no_zombies_after_many_spawns() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..300 {
            let t = t.clone();
            set.spawn(async move {
                let mut w = t.fork().arg(&(i % 3)).run(&EXIT_WITH).await?;
                w.wait().await
            });
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            let status = r.map_err(fail)?.map_err(fail)?;
            ensure!(status.code().is_some(), "status {status}");
            n += 1;
        }
        ensure!(n == 300, "only {n} workers");
        // Every status was reported, so every child was reaped: the template
        // has no children left, zombie or not.
        let kids = children_of(t.id()).map_err(fail)?;
        ensure!(kids.is_empty(), "template still has children {kids:?}");
        ensure!(
            threads_of(t.id()).map_err(fail)? == 1,
            "template is multi-threaded"
        );
        Ok(())
    })
}

fn template_is_clean() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.ready().await.map_err(fail)?;
        ensure!(
            parent_of(t.id()) == Some(std::process::id()),
            "not our child"
        );
        ensure!(
            threads_of(t.id()).map_err(fail)? == 1,
            "template has threads"
        );
        let fds = fds_of(t.id()).map_err(fail)?;
        ensure!(
            fds.get(&0).map(String::as_str) == Some("/dev/null"),
            "stdin: {fds:?}"
        );
        // 0-2, the control socket and the signalfd: nothing inherited.
        let extra: Vec<_> = fds.iter().filter(|(fd, _)| **fd > 2).collect();
        ensure!(extra.len() == 2, "template holds {extra:?}");
        ensure!(
            extra.iter().any(|(_, l)| l.starts_with("socket:"))
                && extra.iter().any(|(_, l)| l.contains("signalfd")),
            "template holds {extra:?}"
        );
        // The marker is gone from the template's (and so the worker's) env.
        let r = report_of(&mut t.fork()).await?;
        ensure!(r.marker.is_none(), "marker leaked: {:?}", r.marker);
        Ok(())
    })
}

/// The name (`comm`) of process `pid`, as `ps` and `top` show it.
fn comm_of(pid: u32) -> Result<String, Failed> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(fail)?;
    Ok(comm.trim_end().to_owned())
}

/// Templates show as `tmpl:<program>` and workers as their entry's name in
/// `ps` and `top`, instead of all as the program.
fn templates_and_workers_are_named_in_ps() -> Result<(), Failed> {
    block_on(async {
        let program = comm_of(std::process::id())?;
        let mut expected = format!("tmpl:{program}");
        expected.truncate(15);
        let t = Template::new().map_err(fail)?;
        t.ready().await.map_err(fail)?;
        ensure!(
            comm_of(t.id())? == expected,
            "template: {}",
            comm_of(t.id())?
        );
        let early = Template::early().map_err(fail)?;
        early.ready().await.map_err(fail)?;
        ensure!(
            comm_of(early.id())? == expected,
            "early template: {}",
            comm_of(early.id())?
        );
        // A worker: its entry's name, without the module path.
        let r = report_of(&mut t.fork()).await?;
        ensure!(r.comm == "report", "worker: {}", r.comm);
        // A template forked by a template keeps its name.
        let child = t.fork().template().await.map_err(fail)?;
        child.ready().await.map_err(fail)?;
        ensure!(
            comm_of(child.id())? == expected,
            "template's template: {}",
            comm_of(child.id())?
        );
        let r = report_of(&mut child.fork()).await?;
        ensure!(r.comm == "report", "its worker: {}", r.comm);
        Ok(())
    })
}

/// AnyEvent::Fork's `to_fh` / `new_from_fh` (its test `04_tofrom`): a
/// template prepared here is handed to another process, which prepares it
/// further and forks from it; the template ends when that process lets it
/// go, and leaves no zombie here.
fn a_template_handed_to_another_process() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let pid = t.id();
        t.init(&PRELOAD, &41).arg("from the first process");
        let fd = tokio::time::timeout(Duration::from_secs(20), t.into_fd())
            .await
            .map_err(|_| "the hand-over hung")?
            .map_err(fail)?;
        let shared = Template::shared().map_err(fail)?;
        let (bytes, status) = tokio::time::timeout(
            Duration::from_secs(20),
            collect(shared.fork().fd(&fd), &TAKE_OVER),
        )
        .await
        .map_err(|_| "the other process hung with the template")??;
        drop(fd);
        ensure!(
            status == 0,
            "the other process exited with raw status {status}"
        );
        let (their_pid, report) = bytes.split_at(4);
        let their_pid = u32::from_le_bytes(their_pid.try_into().map_err(fail)?);
        ensure!(
            their_pid == pid,
            "the other process saw template {their_pid}, not {pid}"
        );
        let r: Report = bincode::deserialize(report).map_err(fail)?;
        let args: Vec<String> = r
            .args
            .iter()
            .map(|a| bincode::deserialize(a))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        ensure!(
            args == ["from the first process", "from the second process"],
            "args {args:?}"
        );
        ensure!(r.preloaded == 41, "preloaded {}", r.preloaded);
        // Let go by both processes, it exits, and this process (its parent)
        // reaps it in the background: its pidfd hangs up once reaped.
        let reaped = tokio::task::spawn_blocking(move || {
            fork_core::testing::wait_reaped(pid, Duration::from_secs(10))
        })
        .await
        .map_err(fail)?
        .map_err(fail)?;
        ensure!(reaped, "template {pid} left a zombie ({:?})", state_of(pid));
        Ok(())
    })
}

/// What cannot be handed over is refused, and nothing is lost.
fn a_template_with_other_handles_is_not_handed_over() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let other = t.clone();
        let e = t.into_fd().await.unwrap_err();
        ensure!(matches!(e, fork_core::Error::HandOver(_)), "gave {e:?}");
        // The template still serves the handle that is left.
        let mut w = other.fork().arg(&4).run(&EXIT_WITH).await.map_err(fail)?;
        ensure!(
            w.wait().await.map_err(fail)?.code() == Some(4),
            "fork after refusal"
        );
        let e = other.into_fd().await.unwrap_err();
        ensure!(
            matches!(e, fork_core::Error::HandOver(_)),
            "with a worker: {e:?}"
        );
        Ok(())
    })
}

fn shared_and_early_templates() -> Result<(), Failed> {
    block_on(async {
        let early = Template::early().map_err(fail)?;
        let again = Template::early().map_err(fail)?;
        ensure!(early.id() == again.id(), "two early templates");
        ensure!(
            parent_of(early.id()) == Some(std::process::id()),
            "early not our child"
        );
        let shared = Template::shared().map_err(fail)?;
        ensure!(
            shared.id() == early.id(),
            "shared template is not the early one"
        );
        let mut w = early.fork().arg(&3).run(&EXIT_WITH).await.map_err(fail)?;
        ensure!(
            w.wait().await.map_err(fail)?.code() == Some(3),
            "early fork"
        );
        ensure!(
            threads_of(early.id()).map_err(fail)? == 1,
            "early template has threads"
        );
        let extra = fds_of(early.id())
            .map_err(fail)?
            .into_iter()
            .filter(|(fd, _)| *fd > 2)
            .count();
        ensure!(extra == 2, "early template holds {extra} extra descriptors");
        Ok(())
    })
}

fn worker_holds_exactly_its_descriptors() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let (r1, mut w1) = std::io::pipe().map_err(fail)?;
        w1.write_all(b"from the template").map_err(fail)?;
        drop(w1);
        t.fd(&r1);
        drop(r1);
        let (r2, mut w2) = std::io::pipe().map_err(fail)?;
        w2.write_all(b"from the fork").map_err(fail)?;
        drop(w2);
        let report = report_of(t.fork().fd(&r2)).await?;
        let mut fds = report.fds.clone();
        // The read_dir handle open while the worker listed its descriptors.
        fds.retain(|_, (l, _)| !l.starts_with("/proc/"));
        let numbers: Vec<i32> = fds.keys().copied().collect();
        ensure!(numbers.len() == 6, "worker holds {fds:?}");
        ensure!(numbers[..3] == [0, 1, 2], "worker holds {fds:?}");
        ensure!(fds[&0].0 == "/dev/null", "stdin is {:?}", fds[&0]);
        let extra: Vec<_> = fds.iter().filter(|(fd, _)| **fd > 2).collect();
        ensure!(
            extra
                .iter()
                .filter(|(_, (l, _))| l.starts_with("socket:"))
                .count()
                == 1
                && extra
                    .iter()
                    .filter(|(_, (l, _))| l.starts_with("pipe:"))
                    .count()
                    == 2,
            "extra descriptors {extra:?}"
        );
        ensure!(
            extra.iter().all(|(_, (_, cloexec))| *cloexec),
            "not close-on-exec: {extra:?}"
        );
        ensure!(
            report.fd_contents == ["from the template", "from the fork"],
            "contents {:?}",
            report.fd_contents
        );
        Ok(())
    })
}

fn many_descriptors_and_big_arguments() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let big = vec![7u8; 1 << 20];
        // WRITE_TO_FDS writes argument 0 to every descriptor it received.
        let mut fork = t.fork();
        fork.arg("hi").arg_bytes(big.clone());
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..300 {
            let (r, w) = std::io::pipe().map_err(fail)?;
            fork.fd(&w);
            writers.push(w);
            readers.push(r);
        }
        let mut w = fork.run(&WRITE_TO_FDS).await.map_err(fail)?;
        drop(writers);
        ensure!(w.wait().await.map_err(fail)?.success(), "writer failed");
        for mut r in readers {
            let mut s = String::new();
            r.read_to_string(&mut s).map_err(fail)?;
            ensure!(s == "hi", "pipe got {s:?}");
        }
        let report = report_of(t.fork().arg_bytes(big.clone())).await?;
        ensure!(report.args.last() == Some(&big), "big argument mangled");
        // Over the message limit: a clear error, and the template is fine.
        let e = t
            .fork()
            .arg_bytes(vec![0u8; 65 << 20])
            .run(&EXIT_WITH)
            .await
            .unwrap_err();
        ensure!(e.is_protocol() && e.to_string().contains("exceeds"), "{e}");
        t.ready().await.map_err(fail)?;
        Ok(())
    })
}

fn arguments_in_order() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.arg("first").arg_bytes(b"raw".to_vec());
        let sub = t.fork().arg(&2u32).template().await.map_err(fail)?;
        sub.arg("third");
        let r = report_of(sub.fork().arg(&[4u8, 4])).await?;
        let expected: Vec<Vec<u8>> = vec![
            bincode::serialize("first").unwrap(),
            b"raw".to_vec(),
            bincode::serialize(&2u32).unwrap(),
            bincode::serialize("third").unwrap(),
            bincode::serialize(&[4u8, 4]).unwrap(),
        ];
        ensure!(r.args == expected, "args {:?}", r.args);
        // The template keeps its presets: a second fork sees the same.
        let r2 = report_of(&mut sub.fork()).await?;
        ensure!(
            r2.args[..4] == expected[..4],
            "second fork args {:?}",
            r2.args
        );
        ensure!(
            parent_of(sub.id()) == Some(t.id()),
            "sub-template not forked from template"
        );
        Ok(())
    })
}

fn init_functions_preload_state() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.init(&PRELOAD, &1234);
        t.ready().await.map_err(fail)?;
        let r = report_of(&mut t.fork()).await?;
        ensure!(r.preloaded == 1234, "preloaded {}", r.preloaded);
        // A per-fork init runs in the new process only.
        let r = report_of(t.fork().init(&PRELOAD, &99)).await?;
        ensure!(r.preloaded == 99, "per-fork preload {}", r.preloaded);
        let r = report_of(&mut t.fork()).await?;
        ensure!(
            r.preloaded == 1234,
            "template state changed: {}",
            r.preloaded
        );
        Ok(())
    })
}

fn failing_init_is_reported() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.init(&FAILING_INIT, &"no such dictionary".to_string());
        match t.ready().await {
            Err(Error::InitFailed { name, message }) => {
                ensure!(name.ends_with("failing_init"), "name {name}");
                ensure!(message == "no such dictionary", "message {message}");
            }
            other => return Err(format!("ready gave {other:?}").into()),
        }
        let e = t.fork().run(&EXIT_WITH).await.unwrap_err();
        ensure!(e.is_init_failed(), "later fork gave {e:?}");
        // The failed template lingers, reaping its workers, until dropped.
        let pid = t.id();
        drop(t);
        ensure!(
            wait_exit(pid, Duration::from_secs(5)).map_err(fail)?,
            "template lives on"
        );

        let t = Template::new().map_err(fail)?;
        t.init(&PANICKING_INIT, &());
        let e = t.ready().await.unwrap_err();
        ensure!(
            format!("{e}").contains("init panics on purpose"),
            "panic gave {e}"
        );

        let t = Template::new().map_err(fail)?;
        t.init(&INIT_STARTING_A_THREAD, &());
        let e = t.ready().await.unwrap_err();
        ensure!(format!("{e}").contains("threads"), "thread init gave {e}");

        // In a fork, the failure is the error of run(); the template is fine.
        let t = Template::shared().map_err(fail)?;
        let e = t
            .fork()
            .init(&FAILING_INIT, &"bad".to_string())
            .run(&EXIT_WITH)
            .await
            .unwrap_err();
        ensure!(
            matches!(&e, Error::InitFailed { message, .. } if message == "bad"),
            "{e:?}"
        );
        t.ready().await.map_err(fail)?;
        Ok(())
    })
}

fn unknown_and_duplicate_entries() -> Result<(), Failed> {
    block_on(async {
        let e = Entry::lookup("no::such::entry").unwrap_err();
        ensure!(
            matches!(e, Error::UnknownEntry(ref n) if n == "no::such::entry"),
            "{e:?}"
        );
        ensure!(
            Entry::lookup(EXIT_WITH.name()).is_ok(),
            "registered entry not found"
        );
        let e = Entry::lookup("integration::duplicate").unwrap_err();
        ensure!(matches!(e, Error::DuplicateEntry(_)), "{e:?}");
        let t = Template::shared().map_err(fail)?;
        for entry in [&DUP_A, &DUP_B] {
            let e = t.fork().run(entry).await.unwrap_err();
            ensure!(
                matches!(e, Error::DuplicateEntry(ref n) if n == "integration::duplicate"),
                "{e:?}"
            );
        }
        ensure!(
            format!("{}", Error::UnknownEntry("x".into())).contains("no entry"),
            "unclear message"
        );
        Ok(())
    })
}

fn panicking_entry_exits_101_and_template_survives() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let mut w = t.fork().run(&PANICS).await.map_err(fail)?;
        let status = w.wait().await.map_err(fail)?;
        ensure!(
            status.code() == Some(fork_core::PANIC_EXIT_CODE),
            "panic gave {status}"
        );
        let mut w = t.fork().arg(&5).run(&EXIT_WITH).await.map_err(fail)?;
        ensure!(
            w.wait().await.map_err(fail)?.code() == Some(5),
            "template did not survive"
        );
        Ok(())
    })
}

fn fork_failure_is_an_error() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let limited = t
            .fork()
            .init(&FORBID_FORKS, &())
            .template()
            .await
            .map_err(fail)?;
        limited.ready().await.map_err(fail)?;
        let e = limited.fork().run(&EXIT_WITH).await.unwrap_err();
        match &e {
            Error::Fork(io) => ensure!(io.raw_os_error() == Some(libc::EAGAIN), "{io:?}"),
            other => return Err(format!("expected a fork error, got {other:?}").into()),
        }
        // What failed, the errno and the limit behind it.
        let shown = e.to_string();
        ensure!(
            shown.starts_with("fork failed in the template: Resource temporarily unavailable")
                && shown.contains("RLIMIT_NPROC"),
            "message: {shown}"
        );
        // The template survives and says so.
        limited.ready().await.map_err(fail)?;
        Ok(())
    })
}

fn template_death_fails_waiters() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let mut w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        let worker_pid = w.id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(t.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(fail)?;
        let e = w.wait().await.unwrap_err();
        ensure!(e.is_template_gone(), "wait gave {e:?}");
        let e = t.fork().run(&EXIT_WITH).await.unwrap_err();
        match e {
            Error::TemplateGone { status: Some(s) } => {
                ensure!(s.signal() == Some(libc::SIGKILL), "template status {s}")
            }
            other => return Err(format!("run gave {other:?}").into()),
        }
        ensure!(!t.is_alive(), "dead template looks alive");
        // The worker died with its template.
        ensure!(
            wait_exit(worker_pid, Duration::from_secs(1)).map_err(fail)?,
            "orphan worker"
        );
        Ok(())
    })
}

fn dropping_the_last_handle_ends_the_template() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let pid = t.id();
        let mut w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        drop(t);
        // The worker keeps its template alive.
        ensure!(
            state_of(pid).is_some_and(|s| s != 'Z'),
            "template died early"
        );
        let worker_pid = w.id();
        drop(w.take_stream());
        ensure!(w.wait().await.map_err(fail)?.success(), "worker failed");
        drop(w);
        ensure!(
            wait_exit(pid, Duration::from_secs(5)).map_err(fail)?,
            "template lives on"
        );
        ensure!(
            wait_exit(worker_pid, Duration::from_secs(1)).map_err(fail)?,
            "worker lives on"
        );
        Ok(())
    })
}

fn shutdown_reaps_everything() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        let pid = t.id();
        let mut w = t.fork().run(&WAIT_FOR_EOF).await.map_err(fail)?;
        let mut done = t.fork().arg(&0).run(&EXIT_WITH).await.map_err(fail)?;
        done.wait().await.map_err(fail)?;
        let worker = w.id();
        let status = t.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "template exited with {status}");
        // The template killed and reaped its worker, and we reaped the
        // template: neither is left, not even as a zombie.
        ensure!(
            state_of(worker).is_none(),
            "worker left as {:?}",
            state_of(worker)
        );
        ensure!(
            state_of(pid).is_none(),
            "template left as {:?}",
            state_of(pid)
        );
        let e = w.wait().await.unwrap_err();
        ensure!(e.is_template_gone(), "worker wait gave {e:?}");
        Ok(())
    })
}

fn exec_commands() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (mut out_r, out_w) = std::io::pipe().map_err(fail)?;
        let (mut err_r, err_w) = std::io::pipe().map_err(fail)?;
        let dir = std::env::temp_dir();
        let mut child = t
            .command("sh")
            .arg("-c")
            .arg("echo out:$GREETING; pwd; echo err >&2; exit 3")
            .env("GREETING", "hi")
            .current_dir(&dir)
            .stdout(&out_w)
            .stderr(&err_w)
            .spawn()
            .await
            .map_err(fail)?;
        drop((out_w, err_w));
        let status = child.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(3), "sh exited with {status}");
        let mut out = String::new();
        out_r.read_to_string(&mut out).map_err(fail)?;
        let expected = format!("out:hi\n{}\n", dir.canonicalize().map_err(fail)?.display());
        ensure!(out == expected, "stdout {out:?}, expected {expected:?}");
        let mut err = String::new();
        err_r.read_to_string(&mut err).map_err(fail)?;
        ensure!(err == "err\n", "stderr {err:?}");
        ensure!(child.stream().is_none(), "exec'd child has a stream");

        let e = t.command("/no/such/program").spawn().await.unwrap_err();
        match &e {
            Error::Exec { program, source } => {
                ensure!(program == "/no/such/program", "program {program}");
                ensure!(source.kind() == std::io::ErrorKind::NotFound, "{source:?}");
            }
            other => return Err(format!("missing program gave {other:?}").into()),
        }
        // output() captures what was not redirected.
        let out = t
            .command("sh")
            .args(["-c", "echo hi; echo oops >&2; exit 4"])
            .output()
            .await
            .map_err(fail)?;
        ensure!(out.status.code() == Some(4), "output status {}", out.status);
        ensure!(
            out.stdout == b"hi\n" && out.stderr == b"oops\n",
            "output {out:?}"
        );
        // An exec'd command inherits no descriptor but its stdio.
        let (mut r, w) = std::io::pipe().map_err(fail)?;
        let mut child = t
            .command("sh")
            .args(["-c", "ls /proc/self/fd"])
            .stdout(&w)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .spawn()
            .await
            .map_err(fail)?;
        drop(w);
        ensure!(child.wait().await.map_err(fail)?.success(), "ls failed");
        let mut listing = String::new();
        r.read_to_string(&mut listing).map_err(fail)?;
        let fds: Vec<&str> = listing.split_whitespace().collect();
        // 0-2 plus the descriptor `ls` opens for /proc/self/fd itself.
        ensure!(
            fds.len() == 4 && fds[..3] == ["0", "1", "2"],
            "exec'd fds {fds:?}"
        );
        Ok(())
    })
}

/// Starts this binary as a template by hand, to feed it raw bytes.
fn raw_template() -> Result<(std::process::Child, OwnedFd), Failed> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(fail)?;
    let child = std::process::Command::new("/proc/self/exe")
        .env(fork_core::testing::TEMPLATE_MARKER, "1:0")
        .stdin(std::process::Stdio::from(theirs))
        .spawn()
        .map_err(fail)?;
    Ok((child, ours))
}

fn recv_reply(sock: &OwnedFd) -> Result<Vec<u8>, Failed> {
    let mut buf = vec![0u8; 70_000];
    let n = nix::sys::socket::recv(
        sock.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(fail)?;
    buf.truncate(n);
    Ok(buf)
}

fn template_rejects_malformed_frames() -> Result<(), Failed> {
    let cases: [(&str, Vec<u8>); 4] = [
        ("bad magic", vec![b'x', 1, 0, 0, 0, 0, 0, 0]),
        ("unknown request", vec![b'f', 2, 0, 0, 1, 0, 0, 0, 0x7f]),
        ("oversized", {
            // Claims 16 MiB in one frame: over the per-frame maximum.
            vec![b'f', 2, 0, 0, 0, 0, 0, 1]
        }),
        ("missing descriptor", {
            // A Spawn request (tag 2) needs a socket descriptor; none sent.
            let mut body = vec![0x02];
            body.extend(0u64.to_le_bytes());
            body.push(0);
            body.extend(0u32.to_le_bytes());
            body.push(0x02);
            let mut f = vec![b'f', 2, 0, 0];
            f.extend((body.len() as u32).to_le_bytes());
            f.extend(body);
            f
        }),
    ];
    for (what, frame) in cases {
        let (mut child, sock) = raw_template()?;
        // First, unasked, the template says it serves: a Ready reply (tag
        // 0x87) alone in a frame.
        let hello = recv_reply(&sock)?;
        ensure!(
            hello == [b'f', 2, 0, 0, 1, 0, 0, 0, 0x87],
            "{what}: first message {hello:?}"
        );
        nix::sys::socket::send(
            sock.as_raw_fd(),
            &frame,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(fail)?;
        let reply = recv_reply(&sock)?;
        // A ProtocolError reply (tag 0x86) in a well-formed frame.
        ensure!(
            reply.len() > 9 && reply[0] == b'f' && reply[8] == 0x86,
            "{what}: reply {reply:?}"
        );
        // A failed template forks nothing more and exits at EOF.
        drop(sock);
        let status = child.wait().map_err(fail)?;
        ensure!(
            status.code() == Some(2),
            "{what}: template exited with {status}"
        );
    }
    // EOF: a closed socket ends the template cleanly.
    let (mut child, sock) = raw_template()?;
    drop(sock);
    let status = child.wait().map_err(fail)?;
    ensure!(status.success(), "template at EOF exited with {status}");
    Ok(())
}

fn stray_marker_is_ignored() -> Result<(), Failed> {
    // With the marker but an ordinary stdin, the program runs normally: here
    // it lists its tests and exits 0.
    let out = std::process::Command::new("/proc/self/exe")
        .arg("--list")
        .env(fork_core::testing::TEMPLATE_MARKER, "1:0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(fail)?;
    ensure!(out.status.success(), "exited with {}", out.status);
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("stray_marker_is_ignored"),
        "did not run normally"
    );
    Ok(())
}

fn no_orphans_when_the_parent_is_killed() -> Result<(), Failed> {
    integration_tests::killed_host_leaves_nothing(
        env!("CARGO_BIN_EXE_orphan-host"),
        &[],
        6,
        Duration::from_secs(1),
        |_| Ok(()),
    )
}

fn init_order_is_checked() -> Result<(), Failed> {
    let run = |mode: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_init-order"))
            .arg(mode)
            .output()
    };
    for (mode, needle) in [
        ("thread", "threads are running"),
        ("runtime", "runtime is already running"),
        ("no-init", "was not called"),
    ] {
        let out = run(mode).map_err(fail)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.code() == Some(3),
            "{mode}: exited with {}",
            out.status
        );
        ensure!(stdout.contains(needle), "{mode}: said {stdout:?}");
    }
    let out = run("macro").map_err(fail)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "macro: exited with {}: {stdout}",
        out.status
    );
    ensure!(
        stdout.contains("worker exited with 7"),
        "macro: said {stdout:?}"
    );
    Ok(())
}

/// A `run` dropped after the template forked, before it took the pid, kills
/// the process: no handle to it was ever returned. Twice: dropped before the
/// template's answer was read, and after it was read but not yet taken.
fn run_given_up_before_the_pid_came_kills_the_process() -> Result<(), Failed> {
    // One thread: what runs when is up to the test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    rt.block_on(async {
        let t = Template::new().map_err(fail)?;
        t.ready().await.map_err(fail)?;
        for answer_read in [false, true] {
            let (pid_r, pid_w) = std::io::pipe().map_err(fail)?;
            let mut fork = t.fork();
            fork.fd(&pid_w);
            drop(pid_w);
            let mut run = Box::pin(fork.run(&WRITE_PID_AND_PARK));
            // The request goes out on the first poll.
            ensure!(
                futures::poll!(run.as_mut()).is_pending(),
                "run resolved at once"
            );
            if answer_read {
                // The answer comes before the pong, and waits for `run`.
                t.ready().await.map_err(fail)?;
            }
            // Blocks the runtime's thread until the process runs.
            let mut pid = [0u8; 4];
            (&pid_r).read_exact(&mut pid).map_err(fail)?;
            let pid = u32::from_le_bytes(pid);
            drop(run);
            all_exit([pid])
                .await
                .map_err(|e| format!("answer read: {answer_read}: {e:?}"))?;
        }
        t.shutdown().await.map_err(fail)?;
        Ok(())
    })
}

/// A `run` dropped while the new process runs its init functions (as by a
/// timeout) kills the process.
fn run_given_up_during_init_kills_the_process() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.ready().await.map_err(fail)?;
        let mut fork = t.fork();
        fork.init(&PARK_INIT, &());
        let mut run = Box::pin(fork.run(&EXIT_WITH));
        // The spawn request goes out first, so the template answers it (with
        // the pid) before the ping of `ready`.
        tokio::select! {
            biased;
            r = run.as_mut() => return Err(format!("run returned {:?}", r.map(|w| w.id())).into()),
            r = t.ready() => r.map_err(fail)?,
        }
        // Takes the pid, then waits for the init functions' report.
        ensure!(
            futures::poll!(run.as_mut()).is_pending(),
            "run resolved with its init function parked"
        );
        let children = children_of(t.id()).map_err(fail)?;
        let [pid] = children[..] else {
            return Err(format!("the template has children {children:?}").into());
        };
        drop(run);
        all_exit([pid]).await?;
        t.shutdown().await.map_err(fail)?;
        Ok(())
    })
}

/// A child that an init function started in the template is its own: the
/// template does not reap it behind its back.
fn template_leaves_children_of_init_functions_to_their_owners() -> Result<(), Failed> {
    block_on(async {
        let t = Template::new().map_err(fail)?;
        t.init(&START_CHILD, &());
        t.ready().await.map_err(fail)?;
        // A worker exits: the template reaps it, and only it.
        let mut w = t.fork().arg(&0).run(&EXIT_WITH).await.map_err(fail)?;
        ensure!(w.wait().await.map_err(fail)?.success(), "worker");
        t.init(&WAIT_CHILD, &());
        t.ready().await.map_err(fail)?;
        Ok(())
    })
}

/// A worker can start templates of its own (it runs the program past
/// `init`).
fn workers_may_start_templates() -> Result<(), Failed> {
    block_on(async {
        for template in [
            Template::new().map_err(fail)?,
            Template::early().map_err(fail)?,
        ] {
            let mut w = template
                .fork()
                .arg(&42)
                .run(&NESTED_TEMPLATE)
                .await
                .map_err(fail)?;
            let status = w.wait().await.map_err(fail)?;
            ensure!(status.code() == Some(42), "nested: {status}");
        }
        Ok(())
    })
}

/// Templates (and their workers) have a process group of their own, and
/// ignore the signals meant for a whole group, which their parent decides
/// about; workers start with no signal blocked or ignored by the template.
fn templates_leave_signals_to_their_parent() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::{Pid, getpgid};
    block_on(async {
        let ours = getpgid(None).map_err(fail)?;
        for template in [
            Template::new().map_err(fail)?,
            Template::early().map_err(fail)?,
        ] {
            template.ready().await.map_err(fail)?;
            let pid = Pid::from_raw(template.id() as i32);
            ensure!(
                getpgid(Some(pid)).map_err(fail)? == pid && pid != ours,
                "template {pid} is not the leader of a group of its own"
            );
            for signal in [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                kill(pid, signal).map_err(fail)?;
            }
            // Still serving, after those signals were handled.
            template.ready().await.map_err(fail)?;
            let mut w = template
                .fork()
                .run(&REPORT_SIGNAL_MASKS)
                .await
                .map_err(fail)?;
            ensure!(template.is_alive(), "template {pid} died of a signal");
            ensure!(
                getpgid(Some(Pid::from_raw(w.id() as i32))).map_err(fail)? == pid,
                "worker not in its template's group"
            );
            let mut masks = [0u8; 16];
            let stream = w.stream().ok_or("no stream")?;
            stream.read_exact(&mut masks).await.map_err(fail)?;
            let blocked = u64::from_le_bytes(masks[..8].try_into().map_err(fail)?);
            let ignored = u64::from_le_bytes(masks[8..].try_into().map_err(fail)?);
            let bit = |s: Signal| 1u64 << (s as i32 - 1);
            let ours = signal_masks(std::process::id())?;
            ensure!(blocked == ours.0, "worker blocks {blocked:#x}");
            ensure!(
                ignored & (bit(Signal::SIGINT) | bit(Signal::SIGTERM) | bit(Signal::SIGHUP)) == 0,
                "worker ignores {ignored:#x}"
            );
            // A worker gets SIGTERM's default action.
            w.signal(fork_core::Signal::SIGTERM).map_err(fail)?;
            let status = w.wait().await.map_err(fail)?;
            ensure!(status.signal() == Some(libc::SIGTERM), "worker: {status}");
        }
        Ok(())
    })
}

/// Text an init function printed without a newline is written once, not
/// once per worker.
fn output_buffered_in_a_template_is_written_once() -> Result<(), Failed> {
    let out = run_helper(env!("CARGO_BIN_EXE_template-host"), &["buffered-output"])?;
    ensure!(out == "[text printed once]", "stdout: {out:?}");
    Ok(())
}

/// The early template keeps the descriptors the program opened before
/// `init` (their owners still use them), and closes those inherited
/// through `exec`; so does an exec'd template.
fn templates_close_only_inherited_descriptors() -> Result<(), Failed> {
    let log = std::env::temp_dir().join(format!("fork-core-early-fds-{}.log", std::process::id()));
    let log_arg = log.to_string_lossy().into_owned();
    let out = run_helper(
        env!("CARGO_BIN_EXE_template-host"),
        &["early-fds", &log_arg],
    );
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let out = out?;
    ensure!(
        out == "early template keeps the log: true\n\
                early template keeps the inherited pipe: false\n\
                worker wrote to the log: true\n\
                exec'd template keeps the inherited pipe: false\n",
        "helper said: {out}"
    );
    ensure!(written == "from a worker\n", "log: {written:?}");
    Ok(())
}

/// At the descriptor limit, the error says what failed and why.
fn errors_name_what_failed_and_why() -> Result<(), Failed> {
    let out = run_helper(env!("CARGO_BIN_EXE_template-host"), &["fd-limit"])?;
    ensure!(
        out.starts_with("creating the worker's socket pair: Too many open files (os error 24)")
            && out.contains("RLIMIT_NOFILE"),
        "error: {out}"
    );
    Ok(())
}

/// A program that parses its command line before `init` sends its
/// templates down another path: the first fork says so.
fn a_template_that_never_reaches_init_is_explained() -> Result<(), Failed> {
    let out = run_helper(env!("CARGO_BIN_EXE_args-first"), &["run"])?;
    // First the template's own words, from the path it took instead of init.
    let (template_said, out) = out.split_once('\n').ok_or("one line")?;
    ensure!(
        template_said == "usage: args-first run",
        "template: {template_said}"
    );
    ensure!(
        out.starts_with("the template process ended before it started serving (exit status: 0)")
            && out.contains("before calling fork_core::init()")
            && out.contains("only argv[0]"),
        "error: {out}"
    );
    Ok(())
}

/// A layer's slot travels apart from the entry's arguments and descriptors.
fn a_fork_slot_is_apart_from_arguments_and_descriptors() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let user = pipe_with("the user's")?;
        let layer = pipe_with("the layer's")?;
        let mut fork = t.fork();
        fork.arg("user arg")
            .slot(b"layer data".to_vec(), &[std::os::fd::AsFd::as_fd(&layer)])
            .fd(&user)
            .slot(b", more".to_vec(), &[]);
        drop((user, layer));
        let (out, status) = collect(&mut fork, &REPORT_SLOT).await?;
        ensure!(status == 0, "raw status {status}");
        let out = String::from_utf8_lossy(&out);
        ensure!(
            out == "slot \"layer data, more\" [\"the layer's\"]; args [\"user arg\"]; \
                    fds [\"the user's\"]; again false",
            "worker saw: {out}"
        );
        Ok(())
    })
}

fn main() {
    fork_core::Init::new().early_template(true).init();
    integration_tests::run(&[
        ("exit_codes_and_signals", exit_codes_and_signals),
        (
            "worker_stream_is_nonblocking_and_cloexec",
            worker_stream_is_nonblocking_and_cloexec,
        ),
        ("no_zombies_after_many_spawns", no_zombies_after_many_spawns),
        ("template_is_clean", template_is_clean),
        ("shared_and_early_templates", shared_and_early_templates),
        (
            "a_template_handed_to_another_process",
            a_template_handed_to_another_process,
        ),
        (
            "a_template_with_other_handles_is_not_handed_over",
            a_template_with_other_handles_is_not_handed_over,
        ),
        (
            "templates_and_workers_are_named_in_ps",
            templates_and_workers_are_named_in_ps,
        ),
        (
            "worker_holds_exactly_its_descriptors",
            worker_holds_exactly_its_descriptors,
        ),
        (
            "many_descriptors_and_big_arguments",
            many_descriptors_and_big_arguments,
        ),
        ("arguments_in_order", arguments_in_order),
        ("init_functions_preload_state", init_functions_preload_state),
        ("failing_init_is_reported", failing_init_is_reported),
        (
            "unknown_and_duplicate_entries",
            unknown_and_duplicate_entries,
        ),
        (
            "panicking_entry_exits_101_and_template_survives",
            panicking_entry_exits_101_and_template_survives,
        ),
        ("fork_failure_is_an_error", fork_failure_is_an_error),
        ("template_death_fails_waiters", template_death_fails_waiters),
        (
            "dropping_the_last_handle_ends_the_template",
            dropping_the_last_handle_ends_the_template,
        ),
        ("shutdown_reaps_everything", shutdown_reaps_everything),
        ("exec_commands", exec_commands),
        (
            "template_rejects_malformed_frames",
            template_rejects_malformed_frames,
        ),
        ("stray_marker_is_ignored", stray_marker_is_ignored),
        (
            "no_orphans_when_the_parent_is_killed",
            no_orphans_when_the_parent_is_killed,
        ),
        ("init_order_is_checked", init_order_is_checked),
        (
            "run_given_up_before_the_pid_came_kills_the_process",
            run_given_up_before_the_pid_came_kills_the_process,
        ),
        (
            "run_given_up_during_init_kills_the_process",
            run_given_up_during_init_kills_the_process,
        ),
        (
            "template_leaves_children_of_init_functions_to_their_owners",
            template_leaves_children_of_init_functions_to_their_owners,
        ),
        ("workers_may_start_templates", workers_may_start_templates),
        (
            "templates_leave_signals_to_their_parent",
            templates_leave_signals_to_their_parent,
        ),
        (
            "output_buffered_in_a_template_is_written_once",
            output_buffered_in_a_template_is_written_once,
        ),
        (
            "templates_close_only_inherited_descriptors",
            templates_close_only_inherited_descriptors,
        ),
        (
            "errors_name_what_failed_and_why",
            errors_name_what_failed_and_why,
        ),
        (
            "a_template_that_never_reaches_init_is_explained",
            a_template_that_never_reaches_init_is_explained,
        ),
        (
            "a_fork_slot_is_apart_from_arguments_and_descriptors",
            a_fork_slot_is_apart_from_arguments_and_descriptors,
        ),
    ]);
}
