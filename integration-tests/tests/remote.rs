//! Remote templates through the command connector: the "remote" side is
//! this same test binary, started by a local command (`env -i`, `sh`), so
//! everything but ssh is exercised: the greeting and its checks, the
//! relay, the channels and their flow control, exit statuses, lifetimes,
//! and bad bytes from the other side. A `harness = false` target, because
//! `main` must call `fork_core::init` first (the remote side starts there).

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use fork_core::remote::{
    BoxFuture, CommandConnector, Connection, Connector, Forward, RemoteCommand, UploadFailure,
};
use fork_core::{Context, Entry, Error, InitFn, Template};
use fork_rpc::WorkerLost;
use integration_tests::remote::{SHOUT, calc_worker, is_forwarded};
use integration_tests::{
    Failed, Scratch, all_exit_within, block_on, bounded, ensure, fail, parent_of, state_of,
};
use tarpc::context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ===== entries and init functions used by the tests =====
// (SHOUT and the Calc service, which the ssh and netns tests use too, are
// in `integration_tests::remote`.)

/// Writes what the template preloaded and its arguments, then exits.
fn report(ctx: Context) -> std::io::Result<()> {
    let first: String = ctx.arg(0).expect("a preloaded argument");
    let preloaded = PRELOADED.get().cloned().unwrap_or_default();
    write!(ctx.socket(), "{first}|{preloaded}|{}", std::process::id())
}
static REPORT: Entry = fork_core::entry!(report);

static PRELOADED: OnceLock<String> = OnceLock::new();
fn preload(text: String) -> Result<(), String> {
    PRELOADED
        .set(text)
        .map_err(|_| "preloaded twice".to_string())
}
static PRELOAD: InitFn<String> = fork_core::init_fn!(preload);

/// Never reads, never exits by itself.
fn sleep_forever(_: Context) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
static SLEEP_FOREVER: Entry = fork_core::entry!(sleep_forever);

/// Writes until writing fails; exits with the errno (0 if none).
fn write_until_error(ctx: Context) -> i32 {
    let mut socket = ctx.socket();
    loop {
        if let Err(e) = socket.write_all(&[b'w'; 4096]) {
            return e.raw_os_error().unwrap_or(0);
        }
    }
}
static WRITE_UNTIL_ERROR: Entry = fork_core::entry!(write_until_error);

/// Exits at once, reading nothing.
fn exit_at_once(_: Context) {}
static EXIT_AT_ONCE: Entry = fork_core::entry!(exit_at_once);

// ===== helpers =====

thread_local! {
    /// Whether this test thread's remote templates carry their workers'
    /// streams through a forwarded socket ([`SameHost`]) rather than as
    /// channels: the tests registered under `forwarded::` set it.
    static FORWARDED: Cell<bool> = const { Cell::new(false) };
}

/// A remote template: this binary, run by `env -i` (an empty environment:
/// nothing is inherited the way a local template inherits it); with its
/// workers' streams forwarded in the `forwarded::` tests.
async fn remote() -> Result<Template, Failed> {
    let template = if FORWARDED.get() {
        Template::remote(SameHost::new()).start().await
    } else {
        Template::remote(CommandConnector::new("env").arg("-i"))
            .start()
            .await
    };
    template.map_err(fail)
}

/// `env -i` as a connector to this same machine that "forwards" a socket
/// by handing out the remote side's own socket: what a connector with a
/// real forward (ssh) gives, without ssh. Or, with `to`, a forward to
/// another socket (that of a test, or none).
#[derive(Debug)]
struct SameHost {
    env: CommandConnector,
    to: Option<Scratch>,
}

impl SameHost {
    fn new() -> SameHost {
        SameHost {
            env: CommandConnector::new("env").arg("-i"),
            to: None,
        }
    }

    fn forwarding_to(to: Scratch) -> SameHost {
        SameHost {
            to: Some(to),
            ..SameHost::new()
        }
    }
}

/// [`SameHost`]'s forward: the remote side's socket itself.
#[derive(Debug)]
struct Direct(PathBuf);

impl Forward for Direct {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Connector for SameHost {
    fn connect<'a>(
        &'a self,
        command: &'a RemoteCommand,
    ) -> BoxFuture<'a, std::io::Result<Connection>> {
        self.env.connect(command)
    }

    fn name(&self) -> String {
        self.env.name()
    }

    fn forward<'a>(
        &'a self,
        remote: &'a Path,
    ) -> BoxFuture<'a, std::io::Result<Option<Box<dyn Forward>>>> {
        let path = self.to.as_ref().map_or(remote, Scratch::path).to_path_buf();
        Box::pin(async move { Ok(Some(Box::new(Direct(path)) as Box<dyn Forward>)) })
    }

    fn forwards(&self) -> bool {
        true
    }
}

/// Registers `test` a second time, as `forwarded::<name>`, run with its
/// workers' streams forwarded.
macro_rules! forwarded {
    ($($test:ident),* $(,)?) => {
        mod forwarded {
            $(
                pub(super) fn $test() -> Result<(), libtest_mimic::Failed> {
                    super::FORWARDED.set(true);
                    super::$test()
                }
            )*
            pub(super) const TESTS: &[(&str, integration_tests::TestFn)] = &[
                $((concat!("forwarded::", stringify!($test)), $test),)*
            ];
        }
    };
}

forwarded!(
    a_remote_worker_talks_and_exits_with_its_status,
    a_remote_template_is_preloaded,
    a_closed_stream_is_a_broken_pipe_on_both_sides,
    rpc_over_a_remote_worker,
    deadlines_and_a_lost_worker_over_a_remote_worker,
    dropping_the_template_ends_everything_remote,
    shutdown_returns_the_remote_status,
    a_stalled_worker_does_not_stall_others,
    a_remote_side_that_dies_is_lost_at_once,
);

/// A command connector that poses as a remote template: `sh` prints the
/// file `bytes` were written to, then reads its input to EOF.
/// The file is removed when the returned `Scratch` is dropped.
fn fake_remote(name: &str, bytes: &[u8]) -> Result<(CommandConnector, Scratch), Failed> {
    let file = Scratch::new(&format!("remote-{name}"));
    std::fs::write(file.path(), bytes).map_err(fail)?;
    let sh = CommandConnector::new("sh").args([
        "-c".into(),
        r#"cat "$1"; exec cat >/dev/null"#.into(),
        "sh".into(),
        file.path().as_os_str().to_owned(),
    ]);
    Ok((sh, file))
}

/// A frame header as the stream protocol lays it out.
fn header(kind: u8, channel: u64, len: u32) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&channel.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

// ===== tests =====

/// A worker forked remotely: the bytes, its exit status, `kill`, and that
/// it runs where it should (under the remote template, under the command).
fn a_remote_worker_talks_and_exits_with_its_status() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        ensure!(template.is_remote(), "not a remote template");
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        ensure!(
            parent_of(agent) == Some(std::process::id()),
            "the remote side {agent} is not the command this process started"
        );
        let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        ensure!(
            parent_of(worker.id()) == Some(template.id()),
            "worker {} is not the remote template's child",
            worker.id()
        );
        let mut stream = worker.take_stream().ok_or("no stream")?;
        ensure!(
            is_forwarded(&stream)? == FORWARDED.get(),
            "forwarded: {}, expected {}",
            is_forwarded(&stream)?,
            FORWARDED.get()
        );
        stream.write_all(b"hello, remote").await.map_err(fail)?;
        let mut reply = [0u8; 13];
        stream.read_exact(&mut reply).await.map_err(fail)?;
        ensure!(&reply == b"HELLO, REMOTE", "reply {reply:?}");
        stream.shutdown().await.map_err(fail)?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.map_err(fail)?;
        ensure!(rest.is_empty(), "more after EOF: {rest:?}");
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(7), "status {status:?}");

        let mut worker = template.fork().run(&SLEEP_FOREVER).await.map_err(fail)?;
        let pid = worker.id();
        worker.kill().await.map_err(fail)?;
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.signal() == Some(libc::SIGKILL), "status {status:?}");
        ensure!(state_of(pid).is_none(), "killed worker {pid} not reaped");
        Ok(())
    }))
}

/// A closed stream looks the same on both sides as with a local worker:
/// the parent drops a worker's stream, the worker's next writes fail
/// (`EPIPE`, or `ECONNRESET` when unread bytes were left behind, as a local
/// socket says); a worker exits, the parent's writes to it fail.
fn a_closed_stream_is_a_broken_pipe_on_both_sides() -> Result<(), Failed> {
    block_on(bounded(async {
        let local = Template::new().map_err(fail)?;
        let remote = remote().await?;
        for (side, template) in [("local", &local), ("remote", &remote)] {
            let mut worker = template
                .fork()
                .run(&WRITE_UNTIL_ERROR)
                .await
                .map_err(fail)?;
            let mut stream = worker.take_stream().ok_or("no stream")?;
            let mut first = [0u8; 100];
            stream.read_exact(&mut first).await.map_err(fail)?;
            drop(stream);
            let status = worker.wait().await.map_err(fail)?;
            ensure!(
                matches!(status.code(), Some(libc::EPIPE | libc::ECONNRESET)),
                "{side}: the worker ended with {status:?}, not EPIPE or ECONNRESET"
            );

            let mut worker = template.fork().run(&EXIT_AT_ONCE).await.map_err(fail)?;
            let mut stream = worker.take_stream().ok_or("no stream")?;
            ensure!(worker.wait().await.map_err(fail)?.success(), "{side}: exit");
            let error = loop {
                if let Err(e) = stream.write_all(&[0; 4096]).await {
                    break e;
                }
            };
            ensure!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{side}: writing to an exited worker gave {error:?}"
            );
        }
        Ok(())
    }))
}

/// Preparation reaches the remote template: arguments and init functions
/// run there, and every worker forked afterwards has them.
fn a_remote_template_is_preloaded() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        template
            .arg("first")
            .init(&PRELOAD, &"loaded once".to_string());
        template.ready().await.map_err(fail)?;
        for _ in 0..3 {
            let mut worker = template.fork().run(&REPORT).await.map_err(fail)?;
            let mut text = String::new();
            worker
                .take_stream()
                .ok_or("no stream")?
                .read_to_string(&mut text)
                .await
                .map_err(fail)?;
            ensure!(
                text == format!("first|loaded once|{}", worker.id()),
                "worker said {text:?}"
            );
            ensure!(
                worker.wait().await.map_err(fail)?.success(),
                "worker failed"
            );
        }
        Ok(())
    }))
}

/// fork-rpc, unchanged, over a remote worker: single and pipelined calls,
/// and the graceful close.
fn rpc_over_a_remote_worker() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        let (calc, mut worker) = calc_worker(&template).await?;
        // Descriptors cannot reach it: a typed error, and the worker serves
        // on.
        let (reader, _writer) = std::io::pipe().map_err(fail)?;
        match worker.send_fd(&reader).await {
            Err(fork_rpc::Error::Core(e)) if e.is_remote_unsupported() => {}
            other => return Err(format!("send_fd gave {other:?}").into()),
        }
        let pid = calc.pid(context::current()).await.map_err(fail)?;
        ensure!(
            pid == worker.id(),
            "served by {pid}, not worker {}",
            worker.id()
        );
        let calls = (0..500i64).map(|i| {
            let calc = calc.clone();
            async move { calc.add(context::current(), i, i).await }
        });
        let sums = futures::future::join_all(calls).await;
        for (i, sum) in sums.into_iter().enumerate() {
            ensure!(sum.map_err(fail)? == 2 * i as i64, "call {i}");
        }
        // A reply bigger than a channel's window and the stream's frames.
        let big = "x".repeat(3 * 256 * 1024 + 17);
        ensure!(
            calc.echo(context::current(), big.clone())
                .await
                .map_err(fail)?
                == big,
            "big echo"
        );
        // A payload that would be a shared memory file locally (1 MiB, over
        // the 256 KiB threshold) travels as bytes: descriptors cannot cross.
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let back = calc
            .echo_shared(context::current(), payload.clone().into())
            .await
            .map_err(fail)?;
        ensure!(
            back[..] == payload[..] && !back.is_shared(),
            "a 1 MiB SharedBytes comes back whole, as bytes"
        );
        drop(calc);
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.success(), "worker ended with {status:?}");
        Ok(())
    }))
}

/// A call's deadline and a worker that dies under a call behave over a
/// remote worker as over a local one: the late call fails with
/// `DeadlineExceeded` at its deadline and the worker serves on; a worker
/// that exits under a call fails it with the worker-lost error carrying
/// the remote exit status, which `wait` gives too.
fn deadlines_and_a_lost_worker_over_a_remote_worker() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        let (calc, mut worker) = calc_worker(&template).await?;
        let mut ctx = context::current();
        ctx.deadline = std::time::Instant::now() + Duration::from_millis(200);
        let asked = std::time::Instant::now();
        match calc.nap(ctx, 10_000).await {
            Err(tarpc::client::RpcError::DeadlineExceeded) => {}
            other => return Err(format!("a late call gave {other:?}").into()),
        }
        ensure!(
            asked.elapsed() < Duration::from_secs(2),
            "the deadline of 200 ms ended the call only after {:?}",
            asked.elapsed()
        );
        ensure!(
            calc.add(context::current(), 1, 1).await.map_err(fail)? == 2,
            "the worker serves on after a deadline"
        );
        let e = calc
            .quit(context::current(), 9)
            .await
            .err()
            .ok_or("quit answered")?;
        let lost = WorkerLost::find(&e).ok_or_else(|| format!("quit gave {e:?}"))?;
        ensure!(
            lost.pid() == worker.id() && lost.status().and_then(|s| s.code()) == Some(9),
            "worker-lost error {lost:?}"
        );
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(9), "wait gave {status:?}");
        Ok(())
    }))
}

/// Descriptors cannot cross: every way to send one is a typed error, and
/// the template works on.
fn descriptors_cannot_cross() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        let (reader, _writer) = std::io::pipe().map_err(fail)?;
        let e = template.fork().fd(&reader).run(&SHOUT).await.unwrap_err();
        ensure!(e.is_remote_unsupported(), "Fork::fd gave {e:?}");
        let e = template.fork().template().await.unwrap_err();
        ensure!(e.is_remote_unsupported(), "Fork::template gave {e:?}");
        let e = template
            .command("true")
            .stdout(&_writer)
            .spawn()
            .await
            .unwrap_err();
        ensure!(e.is_remote_unsupported(), "Command::stdout gave {e:?}");
        // The template still forks.
        let mut worker = template.fork().arg(&3i32).run(&SHOUT).await.map_err(fail)?;
        drop(worker.take_stream());
        ensure!(
            worker.wait().await.map_err(fail)?.code() == Some(3),
            "worker"
        );
        // A command without descriptors runs there.
        let mut child = template.command("true").spawn().await.map_err(fail)?;
        ensure!(child.wait().await.map_err(fail)?.success(), "true failed");
        let e = template.clone().into_fd().await.unwrap_err();
        ensure!(matches!(e, Error::HandOver(_)), "into_fd gave {e:?}");
        // A descriptor for the template itself fails the template, typed.
        template.fd(&reader);
        let e = template.ready().await.unwrap_err();
        ensure!(e.is_remote_unsupported(), "Template::fd gave {e:?}");
        Ok(())
    }))
}

/// Another build of the program is refused (the build ids differ); allowed
/// explicitly, it connects, and an entry only this build has is a typed
/// error from the other side.
fn another_build_is_refused() -> Result<(), Failed> {
    block_on(bounded(async {
        let other = env!("CARGO_BIN_EXE_remote-host");
        let connector = CommandConnector::new("env").arg("-i");
        let e = Template::remote(connector.clone())
            .program(other)
            .start()
            .await
            .unwrap_err();
        ensure!(
            matches!(e, Error::RemoteBuild { .. }) && e.is_remote_mismatch(),
            "got {e:?}"
        );
        let template = Template::remote(connector)
            .program(other)
            .same_build(false)
            .start()
            .await
            .map_err(fail)?;
        let e = template.fork().arg(&0i32).run(&SHOUT).await.unwrap_err();
        ensure!(
            matches!(&e, Error::UnknownEntry(name) if name == SHOUT.name()),
            "got {e:?}"
        );
        template.shutdown().await.map_err(fail)?;
        Ok(())
    }))
}

/// A remote side of another protocol version is refused, typed.
fn another_protocol_version_is_refused() -> Result<(), Failed> {
    block_on(bounded(async {
        let ours = fork_core::testing::remote_greeting(1, None);
        // The version follows the 16-byte magic string in the payload.
        let at = 13 + 16;
        let version = u16::from_le_bytes([ours[at], ours[at + 1]]);
        let theirs = fork_core::testing::remote_greeting(1, Some(version + 1));
        let (fake, _file) = fake_remote("version", &theirs)?;
        let e = Template::remote(fake).start().await.unwrap_err();
        ensure!(
            matches!(e, Error::RemoteVersion { ours, theirs } if ours == version && theirs == version + 1),
            "got {e:?}"
        );
        Ok(())
    }))
}

/// What is not a remote template is a typed error naming what came: text
/// instead of a greeting, a command that ends, one that cannot start.
fn not_a_remote_template() -> Result<(), Failed> {
    block_on(bounded(async {
        let (motd, _file) = fake_remote("motd", b"Welcome to build-1! Have a nice day.\n")?;
        let e = Template::remote(motd).start().await.unwrap_err();
        ensure!(
            matches!(&e, Error::RemoteHandshake(m) if m.contains("Welcome to build-1")),
            "got {e:?}"
        );
        let e = Template::remote(CommandConnector::new("true"))
            .start()
            .await
            .unwrap_err();
        ensure!(matches!(e, Error::RemoteHandshake(_)), "got {e:?}");
        let e = Template::remote(CommandConnector::new("/nonexistent/ssh"))
            .start()
            .await
            .unwrap_err();
        ensure!(matches!(e, Error::RemoteConnect(_)), "got {e:?}");
        Ok(())
    }))
}

/// Malformed frames after a good greeting fail the template with a
/// protocol error: no panic, no hang.
fn malformed_frames_fail_the_template() -> Result<(), Failed> {
    block_on(bounded(async {
        let greeting = fork_core::testing::remote_greeting(1, None);
        let cases: [(&str, Vec<u8>); 5] = [
            ("unknown-kind", header(0x7f, 0, 0)),
            ("oversized-control", header(2, 0, u32::MAX)),
            ("oversized-data", header(3, 1, 1 << 20)),
            ("control-on-a-channel", header(2, 9, 0)),
            ("bad-reply-record", {
                let mut f = header(2, 0, 1);
                f.push(0xee);
                f
            }),
        ];
        for (name, frame) in cases {
            let mut bytes = greeting.clone();
            bytes.extend_from_slice(&frame);
            let (fake, _file) = fake_remote(name, &bytes)?;
            let template = Template::remote(fake).start().await.map_err(fail)?;
            let e = template.ready().await.unwrap_err();
            ensure!(e.is_protocol(), "{name}: ready() gave {e:?}");
            let e = template.fork().arg(&0i32).run(&SHOUT).await.unwrap_err();
            ensure!(
                e.is_protocol() || e.is_template_gone(),
                "{name}: run() gave {e:?}"
            );
        }
        Ok(())
    }))
}

/// The pids of a remote template's side: (remote side, template, workers).
async fn remote_with_workers(
    n: usize,
) -> Result<(Template, Vec<fork_core::Worker>, Vec<u32>), Failed> {
    let template = remote().await?;
    let agent = parent_of(template.id()).ok_or("no remote side")?;
    let mut workers = Vec::new();
    for _ in 0..n {
        workers.push(template.fork().run(&SLEEP_FOREVER).await.map_err(fail)?);
    }
    let mut pids = vec![agent, template.id()];
    pids.extend(workers.iter().map(fork_core::Worker::id));
    Ok((template, workers, pids))
}

/// Dropping every handle ends the remote side, its template and its
/// workers (which ignore EOF: the template kills them) within 2 s.
fn dropping_the_template_ends_everything_remote() -> Result<(), Failed> {
    block_on(bounded(async {
        let (template, workers, pids) = remote_with_workers(2).await?;
        drop(workers);
        drop(template);
        all_exit_within(pids, Duration::from_secs(2)).await
    }))
}

/// `shutdown` ends it all too and returns the remote side's exit status.
fn shutdown_returns_the_remote_status() -> Result<(), Failed> {
    block_on(bounded(async {
        let (template, workers, pids) = remote_with_workers(1).await?;
        drop(workers);
        let lost = template.lost();
        let status = template.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "the remote side ended with {status:?}");
        // Our own shutdown is not a loss.
        ensure!(
            futures::FutureExt::now_or_never(lost).is_none(),
            "lost() resolved after shutdown()"
        );
        all_exit_within(pids, Duration::from_secs(2)).await
    }))
}

/// The parent killed with SIGKILL: nothing remote survives it by 2 s.
fn no_survivors_when_the_parent_is_killed() -> Result<(), Failed> {
    // The remote side, its template and two workers.
    integration_tests::killed_host_leaves_nothing(
        env!("CARGO_BIN_EXE_remote-host"),
        &[],
        4,
        Duration::from_secs(2),
        |_| Ok(()),
    )
}

/// A worker that does not read stops only its own channel: another worker
/// answers meanwhile, the writer to the stalled one is held back (the
/// bytes are not buffered without bound on the way), and once the stalled
/// worker is gone the writer is released.
fn a_stalled_worker_does_not_stall_others() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = remote().await?;
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        let mut stalled = template.fork().run(&SLEEP_FOREVER).await.map_err(fail)?;
        let mut to_stalled = stalled.take_stream().ok_or("no stream")?;
        const FLOOD: usize = 32 << 20;
        let flood = tokio::spawn(async move {
            let bytes = vec![b'x'; FLOOD];
            let r = to_stalled.write_all(&bytes).await;
            (r, to_stalled)
        });
        let mut live = template.fork().arg(&0i32).run(&SHOUT).await.map_err(fail)?;
        let mut stream = live.take_stream().ok_or("no stream")?;
        for i in 0..100u32 {
            let text = format!("ping {i}");
            stream.write_all(text.as_bytes()).await.map_err(fail)?;
            let mut reply = vec![0u8; text.len()];
            stream.read_exact(&mut reply).await.map_err(fail)?;
            ensure!(reply == text.to_uppercase().as_bytes(), "round trip {i}");
        }
        ensure!(
            !flood.is_finished(),
            "32 MiB went to a worker that reads nothing"
        );
        let rss = std::fs::read_to_string(format!("/proc/{agent}/status"))
            .map_err(fail)?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .ok_or("no VmRSS")?;
        ensure!(
            rss < 24 * 1024,
            "the remote side holds {rss} kB while a worker does not read"
        );
        stalled.kill().await.map_err(fail)?;
        // The rest is discarded on the far side, and credited: the writer
        // finishes (or fails, if the stream is closed first), never hangs.
        let (_written, _stream) = flood.await.map_err(fail)?;
        drop(stream);
        ensure!(
            live.wait().await.map_err(fail)?.success(),
            "live worker failed"
        );
        Ok(())
    }))
}

/// A remote template that stops answering gives no EOF (here its process
/// is frozen with `SIGSTOP`: to this side it looks like a partition). The
/// keepalive finds it lost within its timeout: an RPC call in flight
/// fails with fork-rpc's worker-lost error, which names the host; the
/// worker's `wait()` gives `RemoteLost` naming the host and the silence;
/// `lost()` resolves and new forks fail the same way. Once the frozen
/// process runs again it finds its input closed and exits by itself,
/// before this side's grace period would have killed it, leaving nothing.
fn a_frozen_remote_template_is_lost_within_the_timeout() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    const TIMEOUT: Duration = Duration::from_secs(1);
    const MARGIN: Duration = Duration::from_secs(2);
    block_on(bounded(async {
        let template = Template::remote(CommandConnector::new("env").arg("-i"))
            .name("frozen-host")
            .keepalive(TIMEOUT / 5, TIMEOUT)
            .start()
            .await
            .map_err(fail)?;
        ensure!(
            template.host() == Some("frozen-host"),
            "host {:?}",
            template.host()
        );
        let lost = template.lost();
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        let (calc, mut worker) = calc_worker(&template).await?;
        // Idle for longer than the timeout: pings and pongs keep it alive.
        tokio::time::sleep(2 * TIMEOUT).await;
        ensure!(!template.is_lost(), "an idle template was found lost");
        let pids = [agent, template.id(), worker.id()];

        kill(Pid::from_raw(agent as i32), Signal::SIGSTOP).map_err(fail)?;
        let frozen = std::time::Instant::now();
        // A deadline far beyond the timeout: only the loss ends the call.
        let mut ctx = context::current();
        ctx.deadline = std::time::Instant::now() + Duration::from_secs(50);
        let e = calc.add(ctx, 1, 2).await.unwrap_err();
        let failed_after = frozen.elapsed();
        ensure!(
            // Silence is counted from the last pong, up to an interval
            // before the freeze.
            failed_after >= TIMEOUT / 2 && failed_after < TIMEOUT + MARGIN,
            "the call in flight failed {failed_after:?} after the freeze ({e})"
        );
        let worker_lost =
            fork_rpc::WorkerLost::find(&e).ok_or_else(|| format!("call gave {e:?}"))?;
        ensure!(
            worker_lost.remote_lost().is_some_and(Error::is_remote_lost)
                && worker_lost.to_string().contains("frozen-host"),
            "the worker-lost error names the host: {worker_lost}"
        );
        let e = match worker.wait().await {
            Err(fork_rpc::Error::Core(e)) => e,
            other => return Err(format!("wait() gave {other:?}").into()),
        };
        ensure!(
            matches!(&e, Error::RemoteLost { host, cause: fork_core::LostCause::Silent(silent) }
                if host == "frozen-host" && *silent >= TIMEOUT)
                && e.is_remote_lost(),
            "wait() gave {e:?}"
        );
        let e = tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .map_err(|_| "lost() did not resolve")?;
        ensure!(
            e.is_remote_lost() && e.to_string().contains("frozen-host"),
            "lost() gave {e}"
        );
        ensure!(template.is_lost(), "is_lost()");
        let e = template.fork().arg(&0i32).run(&SHOUT).await.unwrap_err();
        ensure!(e.is_remote_lost(), "a new fork gave {e:?}");

        // Running again, it reads its closed input and ends by itself,
        // its template and worker with it (the relay here would kill it
        // only 5 s after the loss).
        kill(Pid::from_raw(agent as i32), Signal::SIGCONT).map_err(fail)?;
        let resumed = frozen.elapsed();
        all_exit_within(pids, Duration::from_secs(2)).await?;
        ensure!(
            frozen.elapsed() < failed_after + Duration::from_secs(4),
            "gone only {:?} after the freeze, resumed at {resumed:?}",
            frozen.elapsed()
        );
        let e = template.shutdown().await.unwrap_err();
        ensure!(
            e.is_remote_lost(),
            "shutdown() of a lost template gave {e:?}"
        );
        Ok(())
    }))
}

/// A worker of `template` answers: one round trip through SHOUT.
async fn answers(template: &Template) -> Result<(), Failed> {
    let mut worker = template.fork().arg(&5i32).run(&SHOUT).await.map_err(fail)?;
    let mut stream = worker.take_stream().ok_or("no stream")?;
    stream.write_all(b"uploaded").await.map_err(fail)?;
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).await.map_err(fail)?;
    ensure!(&reply == b"UPLOADED", "reply {reply:?}");
    drop(stream);
    ensure!(
        worker.wait().await.map_err(fail)?.code() == Some(5),
        "worker status"
    );
    Ok(())
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Result<Vec<String>, Failed> {
    let mut names = std::fs::read_dir(dir)
        .map_err(fail)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    names.sort();
    Ok(names)
}

/// The first start uploads this binary as `<name>-<sha256>` (this exact
/// content, mode 755) into a directory it creates, and the remote side
/// runs that file; the second start finds it and sends nothing (the same
/// inode, untouched); no temporary file is left.
fn an_upload_happens_once() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-once");
        let dir = scratch.path().join("bin");
        let target = dir.join(integration_tests::upload_name()?);
        let connector = CommandConnector::new("env").arg("-i");
        let template = Template::remote(&connector)
            .upload_to(&dir)
            .start()
            .await
            .map_err(fail)?;
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        let exe = std::fs::read_link(format!("/proc/{agent}/exe")).map_err(fail)?;
        ensure!(
            exe == target,
            "the remote side runs {exe:?}, not {target:?}"
        );
        let here = std::fs::read("/proc/self/exe").map_err(fail)?;
        ensure!(
            std::fs::read(&target).map_err(fail)? == here,
            "the uploaded file is this binary"
        );
        let first = std::fs::metadata(&target).map_err(fail)?;
        ensure!(
            first.permissions().mode() & 0o777 == 0o755,
            "mode {:o}",
            first.permissions().mode()
        );
        answers(&template).await?;
        template.shutdown().await.map_err(fail)?;

        let template = Template::remote(&connector)
            .upload_to(&dir)
            .start()
            .await
            .map_err(fail)?;
        let again = std::fs::metadata(&target).map_err(fail)?;
        ensure!(
            (
                again.ino(),
                again.mtime(),
                again.mtime_nsec(),
                again.ctime_nsec()
            ) == (
                first.ino(),
                first.mtime(),
                first.mtime_nsec(),
                first.ctime_nsec()
            ),
            "the second start uploaded again: {again:?}, was {first:?}"
        );
        answers(&template).await?;
        template.shutdown().await.map_err(fail)?;
        let names = names_in(&dir)?;
        ensure!(
            names.len() == 1,
            "the directory holds the binary only: {names:?}"
        );
        Ok(())
    }))
}

/// After an upload, older uploads of this program beyond the newest three
/// are removed (the user's `<name>-<64 characters>` files, by modification
/// time); other files stay, and `keep_uploads` changes the count.
fn old_uploads_are_pruned() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-prune");
        let dir = scratch.path().join("bin");
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let ours = integration_tests::upload_name()?;
        let program = &ours[..ours.len() - 65];
        // Five older uploads, a day apart, the newest first.
        let day = Duration::from_secs(86_400);
        let mut old = Vec::new();
        for i in 1..=5u32 {
            let name = format!("{program}-{:064x}", i);
            let file = std::fs::File::create(dir.join(&name)).map_err(fail)?;
            let when = std::time::SystemTime::now() - day * i;
            file.set_modified(when).map_err(fail)?;
            old.push(name);
        }
        let others = [format!("{program}-not-a-hash"), format!("other-{:064x}", 1)];
        for name in &others {
            std::fs::write(dir.join(name), b"").map_err(fail)?;
        }
        let connector = CommandConnector::new("env").arg("-i");
        let template = Template::remote(&connector)
            .upload_to(&dir)
            .start()
            .await
            .map_err(fail)?;
        answers(&template).await?;
        template.shutdown().await.map_err(fail)?;
        let mut want = vec![ours.clone(), old[0].clone(), old[1].clone()];
        want.extend(others.iter().cloned());
        want.sort();
        let names = names_in(&dir)?;
        ensure!(names == want, "left {names:?}, expected {want:?}");

        // Another build's upload (here: ours removed, so it is sent again)
        // with keep_uploads(1) leaves it alone with the other files.
        std::fs::remove_file(dir.join(&ours)).map_err(fail)?;
        let template = Template::remote(&connector)
            .upload_to(&dir)
            .keep_uploads(1)
            .start()
            .await
            .map_err(fail)?;
        template.shutdown().await.map_err(fail)?;
        let mut want = vec![ours.clone()];
        want.extend(others.iter().cloned());
        want.sort();
        let names = names_in(&dir)?;
        ensure!(names == want, "left {names:?}, expected {want:?}");
        Ok(())
    }))
}

/// Two parents uploading into one directory at once both start, the file
/// left in place is this binary, and no temporary file is left (each
/// writes a temporary file of its own and renames it into place).
fn two_uploads_at_once_both_start() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-race");
        let connector = CommandConnector::new("env").arg("-i");
        let start = || {
            Template::remote(&connector)
                .upload_to(scratch.path())
                .start()
        };
        let (a, b) = tokio::join!(start(), start());
        for template in [a.map_err(fail)?, b.map_err(fail)?] {
            answers(&template).await?;
        }
        let target = scratch.path().join(integration_tests::upload_name()?);
        ensure!(
            std::fs::read(&target).map_err(fail)?
                == std::fs::read("/proc/self/exe").map_err(fail)?,
            "the file in place is this binary"
        );
        let names = names_in(scratch.path())?;
        ensure!(names.len() == 1, "no temporary file left: {names:?}");
        Ok(())
    }))
}

/// While the bytes are on their way, nothing is at the hash path: they go
/// to a temporary file, renamed into place once whole and checked (a
/// start meanwhile would upload too, never run a half-written file).
fn nothing_half_written_is_at_the_hash_path() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-stall");
        let dir = scratch.path().join("bin");
        let target = dir.join(integration_tests::upload_name()?);
        let fifos = Scratch::new("upload-stall-fifos");
        std::fs::create_dir_all(fifos.path()).map_err(fail)?;
        let (stalled, go) = (fifos.path().join("stalled"), fifos.path().join("go"));
        for fifo in [&stalled, &go] {
            nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::S_IRWXU).map_err(fail)?;
        }
        // A transport that, for the upload (`sh`, not the template),
        // passes 100 kB of the input, says so on `stalled`, waits for a
        // word on `go`, then passes the rest.
        let staller = CommandConnector::new("sh").args([
            "-c".into(),
            concat!(
                r#"s=$1 g=$2; shift 2; [ "$1" = sh ] || exec "$@"; "#,
                r#"{ head -c 100000; echo >"$s"; read -r _ <"$g"; cat; } | "$@""#
            )
            .into(),
            "sh".into(),
            stalled.clone().into_os_string(),
            go.clone().into_os_string(),
        ]);
        let start = tokio::spawn({
            let dir = dir.clone();
            async move { Template::remote(staller).upload_to(dir).start().await }
        });
        let mut word = String::new();
        tokio::task::spawn_blocking({
            let stalled = stalled.clone();
            move || std::fs::File::open(stalled)?.read_to_string(&mut word)
        })
        .await
        .map_err(fail)?
        .map_err(fail)?;
        let half_sent = target.exists();
        // Released before judging, so that a failure leaves no transport
        // waiting on the fifo.
        tokio::task::spawn_blocking(move || std::fs::write(go, b"go\n"))
            .await
            .map_err(fail)?
            .map_err(fail)?;
        ensure!(
            !half_sent,
            "a half-sent binary is at the hash path {target:?}"
        );
        let template = start.await.map_err(fail)?.map_err(fail)?;
        answers(&template).await?;
        ensure!(
            std::fs::read(&target).map_err(fail)?
                == std::fs::read("/proc/self/exe").map_err(fail)?,
            "the file in place is this binary"
        );
        Ok(())
    }))
}

/// A file at the hash path with other content (a truncated earlier
/// upload, a tampered file) is found out and replaced, atomically (a new
/// inode), and the template runs.
fn a_wrong_file_at_the_hash_path_is_replaced() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-wrong");
        let target = scratch.path().join(integration_tests::upload_name()?);
        std::fs::create_dir_all(scratch.path()).map_err(fail)?;
        std::fs::write(&target, b"#!/bin/sh\necho not this program\n").map_err(fail)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
        let wrong = std::fs::metadata(&target).map_err(fail)?.ino();
        let template = Template::remote(CommandConnector::new("env").arg("-i"))
            .upload_to(scratch.path())
            .start()
            .await
            .map_err(fail)?;
        let here = std::fs::read("/proc/self/exe").map_err(fail)?;
        ensure!(
            std::fs::read(&target).map_err(fail)? == here,
            "the wrong file was replaced by this binary"
        );
        ensure!(
            std::fs::metadata(&target).map_err(fail)?.ino() != wrong,
            "replaced by a rename, not written in place"
        );
        answers(&template).await?;
        Ok(())
    }))
}

/// The remote side dying (here killed) is an EOF this side did not ask
/// for: the template is lost at once, not after the keepalive timeout,
/// and the cause says EOF.
fn a_remote_side_that_dies_is_lost_at_once() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    block_on(bounded(async {
        let (template, mut workers, _pids) = remote_with_workers(1).await?;
        let lost = template.lost();
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        let host = template.host().ok_or("no host")?.to_string();
        ensure!(
            host == "env -i",
            "a command connector is named by its command line: {host:?}"
        );
        let killed = std::time::Instant::now();
        kill(Pid::from_raw(agent as i32), Signal::SIGKILL).map_err(fail)?;
        let e = workers[0].wait().await.unwrap_err();
        ensure!(
            matches!(&e, Error::RemoteLost { host: h, cause: fork_core::LostCause::Eof } if *h == host),
            "wait() gave {e:?}"
        );
        let e = lost.await;
        ensure!(
            killed.elapsed() < Duration::from_secs(5) && e.is_remote_lost(),
            "lost() gave {e} after {:?} (the keepalive timeout is 10 s)",
            killed.elapsed()
        );
        Ok(())
    }))
}

/// A directory that cannot be written is a typed error naming it and
/// what the other side said; one that cannot be created too.
fn an_unwritable_dir_is_a_typed_error() -> Result<(), Failed> {
    block_on(bounded(async {
        // Not writable even by root (the tests may run as root).
        for dir in ["/proc", "/proc/fork-core-upload"] {
            let e = Template::remote(CommandConnector::new("env").arg("-i"))
                .upload_to(dir)
                .start()
                .await
                .unwrap_err();
            ensure!(
                matches!(&e, Error::RemoteUpload { failure: UploadFailure::NotWritable, dir: d, detail, .. }
                    if d == Path::new(dir) && !detail.is_empty()),
                "{dir}: got {e:?}"
            );
            let text = e.to_string();
            ensure!(
                text.contains(&format!("{dir:?}")),
                "the message names {dir}: {text}"
            );
        }
        Ok(())
    }))
}

/// Bytes lost on the way are found out on arrival: a typed hash mismatch,
/// nothing installed, no temporary file left.
fn a_damaged_transfer_is_refused() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-damaged");
        // A transport that passes the first 1000 bytes of the input only.
        let lossy = CommandConnector::new("sh").args(["-c", r#"head -c 1000 | "$@""#, "sh"]);
        let e = Template::remote(lossy)
            .upload_to(scratch.path())
            .start()
            .await
            .unwrap_err();
        ensure!(
            matches!(
                &e,
                Error::RemoteUpload {
                    failure: UploadFailure::HashMismatch,
                    ..
                }
            ),
            "got {e:?}"
        );
        let names = names_in(scratch.path())?;
        ensure!(names.is_empty(), "nothing installed or left: {names:?}");
        Ok(())
    }))
}

/// No `sh` on the other side: a typed error saying so, not a hang.
fn no_shell_is_a_typed_error() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-no-sh");
        let no_sh = CommandConnector::new("env").args(["-i", "PATH=/nonexistent"]);
        let e = Template::remote(no_sh)
            .upload_to(scratch.path())
            .start()
            .await
            .unwrap_err();
        ensure!(
            matches!(
                &e,
                Error::RemoteUpload {
                    failure: UploadFailure::NoShell,
                    ..
                }
            ),
            "got {e:?}"
        );
        Ok(())
    }))
}

/// A spawn whose forwarded connection never reaches the remote side (a
/// forward that answers its start-up check, then swallows every
/// connection) fails with an error that says so, after at most half the
/// keepalive timeout (the remote side reads nothing from the parent while
/// it waits); the template is not lost meanwhile, and it ends cleanly.
fn a_stream_that_never_comes_fails_its_spawn_not_the_template() -> Result<(), Failed> {
    block_on(bounded(async {
        let hole = Scratch::new("black-hole");
        let listener = tokio::net::UnixListener::bind(hole.path()).map_err(fail)?;
        let swallow = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut header = [0u8; 16];
                if conn.read_exact(&mut header).await.is_err() {
                    continue;
                }
                if header[8..] == u64::MAX.to_le_bytes() {
                    // The start-up check's connection: answered.
                    let _ = conn.write_all(b"+").await;
                } else {
                    kept.push(conn);
                }
            }
        });
        let connector = SameHost::forwarding_to(hole);
        // Borrowed: its scratch path (the socket) stays while it is.
        let template = Template::remote(&connector)
            .keepalive(Duration::from_millis(500), Duration::from_secs(2))
            .start()
            .await
            .map_err(fail)?;
        let asked = std::time::Instant::now();
        let e = match template.fork().arg(&3i32).run(&SHOUT).await {
            Err(e) => e,
            Ok(w) => return Err(format!("worker {} started without its stream", w.id()).into()),
        };
        ensure!(
            matches!(&e, Error::Protocol(m) if m.contains("did not come")),
            "the spawn failed with {e:?}"
        );
        ensure!(
            asked.elapsed() < Duration::from_secs(6),
            "the spawn failed only after {:?}",
            asked.elapsed()
        );
        ensure!(!template.is_lost(), "the template was lost: {e}");
        let status = template.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "the remote side ended with {status:?}");
        swallow.abort();
        Ok(())
    }))
}

async fn shout_through(template: &Template) -> Result<bool, Failed> {
    let mut worker = template.fork().arg(&3i32).run(&SHOUT).await.map_err(fail)?;
    let mut stream = worker.take_stream().ok_or("no stream")?;
    let forwarded = is_forwarded(&stream)?;
    stream.write_all(b"still works").await.map_err(fail)?;
    stream.shutdown().await.map_err(fail)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.map_err(fail)?;
    ensure!(reply == b"STILL WORKS", "reply {reply:?}");
    let status = worker.wait().await.map_err(fail)?;
    ensure!(status.code() == Some(3), "status {status:?}");
    Ok(forwarded)
}

fn a_forward_that_does_not_work_leaves_streams_in_channels() -> Result<(), Failed> {
    block_on(bounded(async {
        // A forward to a socket path where nothing listens (what an sshd
        // with `AllowStreamLocalForwarding no` gives): the start-up check
        // finds it out, and the streams go as channels.
        let nowhere = SameHost::forwarding_to(Scratch::new("no-forward"));
        let template = Template::remote(nowhere).start().await.map_err(fail)?;
        ensure!(
            !shout_through(&template).await?,
            "a stream went through a forward that failed its check"
        );
        let status = template.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "the remote side ended with {status:?}");
        Ok(())
    }))
}

/// `forward_streams(false)`: a connector that could forward is not asked.
fn streams_in_channels_when_forwarding_is_off() -> Result<(), Failed> {
    block_on(bounded(async {
        let template = Template::remote(SameHost::new())
            .forward_streams(false)
            .start()
            .await
            .map_err(fail)?;
        ensure!(
            !shout_through(&template).await?,
            "a stream was forwarded with forward_streams(false)"
        );
        let template = Template::remote(SameHost::new())
            .start()
            .await
            .map_err(fail)?;
        ensure!(
            shout_through(&template).await?,
            "the stream was not forwarded by default"
        );
        Ok(())
    }))
}

fn main() {
    fork_core::init();
    let mut tests: Vec<(&str, integration_tests::TestFn)> = vec![
        (
            "a_remote_worker_talks_and_exits_with_its_status",
            a_remote_worker_talks_and_exits_with_its_status,
        ),
        (
            "a_remote_template_is_preloaded",
            a_remote_template_is_preloaded,
        ),
        (
            "a_closed_stream_is_a_broken_pipe_on_both_sides",
            a_closed_stream_is_a_broken_pipe_on_both_sides,
        ),
        ("rpc_over_a_remote_worker", rpc_over_a_remote_worker),
        (
            "deadlines_and_a_lost_worker_over_a_remote_worker",
            deadlines_and_a_lost_worker_over_a_remote_worker,
        ),
        ("descriptors_cannot_cross", descriptors_cannot_cross),
        ("another_build_is_refused", another_build_is_refused),
        (
            "another_protocol_version_is_refused",
            another_protocol_version_is_refused,
        ),
        ("not_a_remote_template", not_a_remote_template),
        (
            "malformed_frames_fail_the_template",
            malformed_frames_fail_the_template,
        ),
        (
            "dropping_the_template_ends_everything_remote",
            dropping_the_template_ends_everything_remote,
        ),
        (
            "shutdown_returns_the_remote_status",
            shutdown_returns_the_remote_status,
        ),
        (
            "no_survivors_when_the_parent_is_killed",
            no_survivors_when_the_parent_is_killed,
        ),
        (
            "a_stalled_worker_does_not_stall_others",
            a_stalled_worker_does_not_stall_others,
        ),
        (
            "a_frozen_remote_template_is_lost_within_the_timeout",
            a_frozen_remote_template_is_lost_within_the_timeout,
        ),
        (
            "a_remote_side_that_dies_is_lost_at_once",
            a_remote_side_that_dies_is_lost_at_once,
        ),
        ("an_upload_happens_once", an_upload_happens_once),
        ("old_uploads_are_pruned", old_uploads_are_pruned),
        (
            "nothing_half_written_is_at_the_hash_path",
            nothing_half_written_is_at_the_hash_path,
        ),
        (
            "two_uploads_at_once_both_start",
            two_uploads_at_once_both_start,
        ),
        (
            "a_wrong_file_at_the_hash_path_is_replaced",
            a_wrong_file_at_the_hash_path_is_replaced,
        ),
        (
            "an_unwritable_dir_is_a_typed_error",
            an_unwritable_dir_is_a_typed_error,
        ),
        (
            "a_damaged_transfer_is_refused",
            a_damaged_transfer_is_refused,
        ),
        ("no_shell_is_a_typed_error", no_shell_is_a_typed_error),
        (
            "a_forward_that_does_not_work_leaves_streams_in_channels",
            a_forward_that_does_not_work_leaves_streams_in_channels,
        ),
        (
            "a_stream_that_never_comes_fails_its_spawn_not_the_template",
            a_stream_that_never_comes_fails_its_spawn_not_the_template,
        ),
        (
            "streams_in_channels_when_forwarding_is_off",
            streams_in_channels_when_forwarding_is_off,
        ),
    ];
    tests.extend_from_slice(forwarded::TESTS);
    integration_tests::run(&tests);
}
