//! fork-prefork's reap events with real workers: why each worker ended
//! (`ExitReason`: recycled, retired, returned, crashed, stopped by a
//! `SIGTERM`, killed by a signal the server sent), the value a worker
//! leaves with (`Link::exit_with`), and `Link::yell_wait`, which waits for
//! room in the worker without ever holding up the manager.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fork_core::{Signal, Template};
use fork_prefork::{Context, Event, Events, ExitReason, Prefork, PreforkEntry, Reaped};
use integration_tests::{Failed, block_on, ensure, fail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs a test body on the shared runtime, failing it after a minute
/// instead of hanging.
fn bounded(body: impl std::future::Future<Output = Result<(), Failed>>) -> Result<(), Failed> {
    block_on(async {
        tokio::time::timeout(Duration::from_secs(60), body)
            .await
            .unwrap_or_else(|_| Err("still running after 60 s".into()))
    })
}

/// What a worker leaves with.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    pid: u32,
    served: u64,
}

/// A chunk of data yelled with `yell_wait`.
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    index: u32,
    bytes: Vec<u8>,
}

/// The worker function returns an error once its connections are done.
static FAIL: AtomicBool = AtomicBool::new(false);

// ANCHOR: reasons
/// One command byte per connection, answered with "<pid>\n": `p` only
/// answers; `r` retires the worker; `w` retires it with a [`Summary`]
/// (`exit_with`); `W` does too, then its function returns an error; `R`
/// retires it, then its function returns an error; `c` exits with code 3
/// at once; `a` aborts (`SIGABRT`); `Y` yells 100 chunks of 60 KiB with
/// `yell_wait` (6 MB, more than the 4 MiB that may wait in a worker). A worker
/// whose template has the argument "once" serves one connection with a
/// loop of its own, and returns.
async fn reasons(mut ctx: Context) -> Result<(), String> {
    let link = ctx.link().clone();
    if ctx.arg::<String>(0).unwrap_or_default() == "once" {
        let listeners = ctx.take_listeners();
        link.ready();
        let mut conn = tokio::select! {
            accepted = listeners[0].accept() => accepted.map_err(|e| e.to_string())?,
            () = link.draining() => return Ok(()),
        };
        let _busy = link.busy();
        let mut command = [0u8; 1];
        conn.read_exact(&mut command)
            .await
            .map_err(|e| e.to_string())?;
        let answer = format!("{}\n", std::process::id());
        conn.write_all(answer.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let served = ctx.serve(|mut conn, link| async move {
        let mut command = [0u8; 1];
        if conn.read_exact(&mut command).await.is_err() {
            return;
        }
        let pid = std::process::id();
        let answer = format!("{pid}\n");
        let summary = || Summary {
            pid,
            served: link.served(),
        };
        match command[0] {
            b'r' => link.retire(),
            b'w' => link.exit_with(&summary()).expect("a small summary"),
            b'W' => {
                link.exit_with(&summary()).expect("a small summary");
                FAIL.store(true, Ordering::SeqCst);
            }
            b'R' => {
                FAIL.store(true, Ordering::SeqCst);
                link.retire();
            }
            b'c' => {
                let _ = conn.write_all(answer.as_bytes()).await;
                std::process::exit(3);
            }
            b'a' => {
                let _ = conn.write_all(answer.as_bytes()).await;
                std::process::abort();
            }
            b'Y' => {
                for index in 0..100 {
                    let chunk = Chunk {
                        index,
                        bytes: vec![7; 60 * 1024],
                    };
                    link.yell_wait(&chunk).await.expect("room, in time");
                }
            }
            _ => {}
        }
        let _ = conn.write_all(answer.as_bytes()).await;
    });
    served.await.map_err(|e| e.to_string())?;
    if FAIL.load(Ordering::SeqCst) {
        return Err("failed on purpose".into());
    }
    Ok(())
}
static REASONS: PreforkEntry = fork_prefork::entry!(reasons);
// ANCHOR_END: reasons

/// A server of one worker (from a template with `label`), its address and
/// its events, once the worker is ready.
async fn one_worker(
    label: &str,
    configure: impl FnOnce(fork_prefork::Builder) -> fork_prefork::Builder,
) -> Result<(Prefork, std::net::SocketAddr, Events), Failed> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    let template = Template::new().map_err(fail)?;
    template.arg(label);
    let builder = Prefork::builder(template, &REASONS)
        .listener(listener)
        .workers(1)
        .err_respawn_interval(Duration::from_millis(10));
    let server = configure(builder).start().map_err(fail)?;
    let events = server.events().ok_or("the event stream")?;
    server.wait_until(|s| s.idle == 1).await;
    Ok((server, addr, events))
}

/// Sends one command byte; returns the pid that answered.
async fn ask(addr: std::net::SocketAddr, command: u8) -> Result<u32, Failed> {
    let mut conn = TcpStream::connect(addr).await.map_err(fail)?;
    conn.write_all(&[command]).await.map_err(fail)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.map_err(fail)?;
    answer
        .trim()
        .parse()
        .map_err(|_| format!("an answer: {answer:?}").into())
}

/// The reap of `pid` (data before it is skipped), within 10 s.
async fn reap_of(events: &mut Events, pid: u32) -> Result<Reaped, Failed> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .map_err(|_| format!("no reap of {pid} within 10 s"))?;
        match event {
            Some(Event::Reaped(r)) if r.pid == pid => return Ok(r),
            Some(Event::Reaped(r)) => return Err(format!("the reap of {pid}, got {r:?}").into()),
            Some(_) => {}
            None => return Err(format!("the event stream ended before the reap of {pid}").into()),
        }
    }
}

/// The pid of the worker that replaced `old`, once it is ready.
async fn replaced(server: &Prefork, old: u32) -> Result<u32, Failed> {
    let s = server
        .wait_until(|s| s.idle == 1 && !s.pids_of(1).contains(&old))
        .await;
    s.pids_of(1)
        .first()
        .copied()
        .ok_or_else(|| format!("a replacement: {s:?}").into())
}

fn code(r: &Reaped) -> Option<i32> {
    r.status.and_then(|s| s.code())
}

fn signal(r: &Reaped) -> Option<i32> {
    r.status.and_then(|s| s.signal())
}

fn a_worker_at_max_requests_is_reaped_as_recycled() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events) = one_worker("", |b| b.max_requests(2, 0)).await?;
        let pid = ask(addr, b'p').await?;
        ensure!(ask(addr, b'p').await? == pid, "the same worker twice");
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Recycled && code(&r) == Some(0) && r.data.is_none(),
            "recycled, exit 0: {r:?}"
        );
        server.stop().await.map_err(fail)?;
        ensure!(server.stats().crashed == 0, "{:?}", server.stats());
        Ok(())
    })
}

fn a_worker_that_retires_is_reaped_as_retired() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events) = one_worker("", |b| b.max_requests(5, 0)).await?;
        let pid = ask(addr, b'r').await?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Retired && code(&r) == Some(0),
            "retired, exit 0 (one request of five): {r:?}"
        );
        server.stop().await.map_err(fail)?;
        ensure!(server.stats().crashed == 0, "{:?}", server.stats());
        Ok(())
    })
}

fn a_worker_whose_function_returns_is_reaped_as_exited() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events) = one_worker("once", |b| b).await?;
        let pid = ask(addr, b'p').await?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Exited && code(&r) == Some(0),
            "returned unasked, exit 0: {r:?}"
        );
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

fn workers_that_fail_are_reaped_as_crashed() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events) = one_worker("", |b| b).await?;
        // An exit code, a signal nobody sent, and a retirement that ends
        // with an error: each a crash.
        let pid = ask(addr, b'c').await?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Crashed && code(&r) == Some(3),
            "exit 3: {r:?}"
        );
        replaced(&server, pid).await?;
        let pid = ask(addr, b'a').await?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Crashed && signal(&r) == Some(libc::SIGABRT),
            "aborted: {r:?}"
        );
        replaced(&server, pid).await?;
        let pid = ask(addr, b'R').await?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Crashed && code(&r) == Some(1),
            "retired, then an error: {r:?}"
        );
        replaced(&server, pid).await?;
        server.stop().await.map_err(fail)?;
        let stats = server.stats();
        ensure!(stats.crashed == 3, "three crashes counted: {stats:?}");
        Ok(())
    })
}

fn signals_the_server_sends_are_no_crash_and_others_are() -> Result<(), Failed> {
    bounded(async {
        let (server, _addr, mut events) = one_worker("", |b| b).await?;
        // SIGTERM through the server: the worker drains and exits 0.
        let pid = server.stats().pids_of(1)[0];
        let sent = server.signal_all_children(Signal::SIGTERM);
        ensure!(sent == 1, "sent to {sent}: {:?}", server.stats());
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Stopped && code(&r) == Some(0),
            "stopped by SIGTERM: {r:?}"
        );
        // SIGUSR1 through the server: its default action ends the worker,
        // as asked.
        let pid = replaced(&server, pid).await?;
        ensure!(server.signal_all_children(Signal::SIGUSR1) == 1, "sent");
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Killed && signal(&r) == Some(libc::SIGUSR1),
            "killed by the server's signal: {r:?}"
        );
        ensure!(
            server.stats().crashed == 0,
            "no crash: {:?}",
            server.stats()
        );
        // The same signal from someone else: a crash.
        let pid = replaced(&server, pid).await?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGUSR1)
            .map_err(fail)?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Crashed && signal(&r) == Some(libc::SIGUSR1),
            "a signal the server did not send: {r:?}"
        );
        server.stop().await.map_err(fail)?;
        ensure!(server.stats().crashed == 1, "{:?}", server.stats());
        Ok(())
    })
}

// ANCHOR: exit_with
fn a_worker_leaves_with_a_value_that_comes_with_its_reap() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events) = one_worker("", |b| b).await?;
        ask(addr, b'p').await?;
        let pid = ask(addr, b'w').await?;
        let r = reap_of(&mut events, pid).await?;
        let summary: Option<Summary> = r.decode().map_err(fail)?;
        ensure!(
            r.reason == ExitReason::Retired
                && code(&r) == Some(0)
                && summary == Some(Summary { pid, served: 2 }),
            "retired with its summary: {r:?} {summary:?}"
        );
        // ANCHOR_END: exit_with
        // With an error: a crash, with the value all the same.
        replaced(&server, pid).await?;
        let pid = ask(addr, b'W').await?;
        let r = reap_of(&mut events, pid).await?;
        let summary: Option<Summary> = r.decode().map_err(fail)?;
        ensure!(
            r.reason == ExitReason::Crashed
                && code(&r) == Some(1)
                && summary == Some(Summary { pid, served: 1 }),
            "crashed with its summary: {r:?} {summary:?}"
        );
        // A worker that left with nothing has no value.
        let pid = replaced(&server, pid).await?;
        server.stop().await.map_err(fail)?;
        let r = reap_of(&mut events, pid).await?;
        ensure!(
            r.reason == ExitReason::Stopped && r.data.is_none(),
            "stopped, no value: {r:?}"
        );
        Ok(())
    })
}

fn yell_wait_waits_for_room_and_never_holds_up_the_manager() -> Result<(), Failed> {
    bounded(async {
        // Nobody reads the events until the server has stopped: past eight
        // values, the parent drops them; the worker never fails for room.
        let (server, addr, mut events) = one_worker("", |b| b.data_backlog(8)).await?;
        let pid = ask(addr, b'Y').await?;
        let dropped = tokio::time::timeout(
            Duration::from_secs(20),
            server.wait_until(|s| s.data_dropped == 100 - 8),
        )
        .await;
        ensure!(dropped.is_ok(), "92 dropped: {:?}", server.stats());
        let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
        ensure!(matches!(stopped, Ok(Ok(()))), "stopped: {stopped:?}");
        let mut indices = Vec::new();
        let mut reaps = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Data(d) if reaps.is_empty() => {
                    let chunk: Chunk = d.decode().map_err(fail)?;
                    ensure!(d.pid == pid && chunk.bytes.len() == 60 * 1024, "{d:?}");
                    indices.push(chunk.index);
                }
                Event::Reaped(r) => reaps.push(r.pid),
                other => return Err(format!("data then a reap, got {other:?}").into()),
            }
        }
        ensure!(
            indices == (0..8).collect::<Vec<_>>() && reaps == [pid],
            "the first eight chunks in order, then the one reap: {indices:?} {reaps:?}"
        );
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        (
            "a_worker_at_max_requests_is_reaped_as_recycled",
            a_worker_at_max_requests_is_reaped_as_recycled,
        ),
        (
            "a_worker_that_retires_is_reaped_as_retired",
            a_worker_that_retires_is_reaped_as_retired,
        ),
        (
            "a_worker_whose_function_returns_is_reaped_as_exited",
            a_worker_whose_function_returns_is_reaped_as_exited,
        ),
        (
            "workers_that_fail_are_reaped_as_crashed",
            workers_that_fail_are_reaped_as_crashed,
        ),
        (
            "signals_the_server_sends_are_no_crash_and_others_are",
            signals_the_server_sends_are_no_crash_and_others_are,
        ),
        (
            "a_worker_leaves_with_a_value_that_comes_with_its_reap",
            a_worker_leaves_with_a_value_that_comes_with_its_reap,
        ),
        (
            "yell_wait_waits_for_room_and_never_holds_up_the_manager",
            yell_wait_waits_for_room_and_never_holds_up_the_manager,
        ),
    ]);
}
