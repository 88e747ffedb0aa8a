//! fork-prefork's signal table (`Prefork::trap_signals_with`, Parallel::
//! Prefork's `trap_signals`), with signals this test process sends itself:
//! a rolling restart replaces every worker one at a time while the server
//! serves, and starts over when asked again; a signal forwarded to every
//! worker at once; `signal_received`; `wait_all_children` with a timeout.
//!
//! The tests run one at a time: signals reach the whole process.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use fork_core::{Signal, Template};
use fork_prefork::{
    Context, Event, Events, ExitReason, Prefork, PreforkEntry, SignalAction, Signals,
};
use integration_tests::{Failed, block_on, ensure, fail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Runs a test body on the shared runtime, failing it after a minute
/// instead of hanging.
fn bounded(body: impl std::future::Future<Output = Result<(), Failed>>) -> Result<(), Failed> {
    block_on(async {
        tokio::time::timeout(Duration::from_secs(60), body)
            .await
            .unwrap_or_else(|_| Err("still running after 60 s".into()))
    })
}

/// What the workers tell the test: when each is ready, and when it stops
/// accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mark {
    Ready(u32),
    Draining(u32),
}

/// An accept loop of its own that marks its life: `Ready` once it
/// accepts, `Draining` the moment it stops. One command byte per
/// connection, answered with "<pid>\n": `p` at once, `h` after "holding\n"
/// and one more byte.
async fn marked(mut ctx: Context) -> Result<(), String> {
    let link = ctx.link().clone();
    let listeners = ctx.take_listeners();
    let pid = std::process::id();
    link.ready();
    link.yell(&Mark::Ready(pid)).map_err(|e| e.to_string())?;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = link.draining() => break,
            accepted = listeners[0].accept() => {
                let Ok(mut conn) = accepted else { continue };
                let busy = link.busy();
                conns.spawn(async move {
                    let mut command = [0u8; 1];
                    if conn.read_exact(&mut command).await.is_ok() {
                        if command[0] == b'h' {
                            let _ = conn.write_all(b"holding\n").await;
                            let _ = conn.read_exact(&mut command).await;
                        }
                        let _ = conn.write_all(format!("{pid}\n").as_bytes()).await;
                    }
                    drop(busy);
                });
            }
        }
    }
    link.yell(&Mark::Draining(pid)).map_err(|e| e.to_string())?;
    while conns.join_next().await.is_some() {}
    Ok(())
}
static MARKED: PreforkEntry = fork_prefork::entry!(marked);

/// A server of `n` workers, its address and its events, once they are
/// ready; and their pids.
async fn server(n: usize) -> Result<(Prefork, SocketAddr, Events, Vec<u32>), Failed> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    let server = Prefork::builder(Template::new().map_err(fail)?, &MARKED)
        .listener(listener)
        .workers(n)
        .graceful_timeout(Duration::from_secs(20))
        .start()
        .map_err(fail)?;
    let events = server.events().ok_or("the event stream")?;
    let pids = server.wait_until(|s| s.idle == n).await.pids_of(1);
    Ok((server, addr, events, pids))
}

/// Sends this process `signal`.
fn raise(signal: Signal) -> Result<(), Failed> {
    nix::sys::signal::kill(nix::unistd::getpid(), signal).map_err(fail)
}

/// What happened to the workers, as the events say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Mark(Mark),
    Reaped(u32, ExitReason, Option<i32>),
}

/// The next mark or reap, within 10 s.
async fn next(events: &mut Events) -> Result<Seen, Failed> {
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .map_err(|_| "no event within 10 s")?;
    match event {
        Some(Event::Data(d)) => Ok(Seen::Mark(d.decode().map_err(fail)?)),
        Some(Event::Reaped(r)) => Ok(Seen::Reaped(
            r.pid,
            r.reason,
            r.status.and_then(|s| s.code()),
        )),
        Some(other) => Err(format!("a mark or a reap, got {other:?}").into()),
        None => Err("the event stream ended".into()),
    }
}

/// Follows a rolling restart: returns the workers that drained, in order,
/// once every one of `wanted` has been reaped, after checking on each
/// event that at most one worker is down (draining or gone, not yet
/// replaced by a ready one), each was stopped cleanly, and none drained
/// twice. `on_ready` is called with each new worker's pid as it is ready.
async fn follow(
    events: &mut Events,
    mut serving: usize,
    n: usize,
    wanted: &BTreeSet<u32>,
    mut on_ready: impl FnMut(u32) -> Result<(), Failed>,
) -> Result<Vec<u32>, Failed> {
    let mut drained = Vec::new();
    let mut reaped = BTreeSet::new();
    while !wanted.is_subset(&reaped) {
        match next(events).await? {
            Seen::Mark(Mark::Draining(pid)) => {
                ensure!(!drained.contains(&pid), "{pid} drained twice: {drained:?}");
                drained.push(pid);
                serving -= 1;
                ensure!(
                    serving + 1 >= n,
                    "two workers down at once: {pid} drains, {serving} of {n} serve ({drained:?})"
                );
            }
            Seen::Mark(Mark::Ready(pid)) => {
                serving += 1;
                on_ready(pid)?;
            }
            Seen::Reaped(pid, reason, code) => {
                ensure!(
                    drained.contains(&pid) && reason == ExitReason::Stopped && code == Some(0),
                    "{pid} left after draining, stopped, exit 0: {reason:?} {code:?}"
                );
                reaped.insert(pid);
            }
        }
    }
    Ok(drained)
}

/// Connects again and again until `done`, counting the answers and the
/// failures, and noting who answered.
async fn client(
    addr: SocketAddr,
    done: watch::Receiver<bool>,
) -> Result<(usize, BTreeSet<u32>), Failed> {
    let mut answered = 0;
    let mut by = BTreeSet::new();
    while !*done.borrow() {
        let mut conn = TcpStream::connect(addr).await.map_err(fail)?;
        conn.write_all(b"p").await.map_err(fail)?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.map_err(fail)?;
        let pid: u32 = answer
            .trim()
            .parse()
            .map_err(|_| format!("answer {answered}: {answer:?}"))?;
        by.insert(pid);
        answered += 1;
    }
    Ok((answered, by))
}

// ANCHOR: rolling
fn a_rolling_restart_replaces_every_worker_one_at_a_time() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, mut events, first) = server(3).await?;
        // Parallel::Prefork's `HUP => ['TERM', n]`.
        let signals = Signals::empty().on(Signal::SIGTERM, SignalAction::Stop).on(
            Signal::SIGHUP,
            SignalAction::Rolling {
                signal: Signal::SIGTERM,
                interval: Duration::from_millis(100),
            },
        );
        let trap = tokio::spawn(server.trap_signals_with(signals).map_err(fail)?);
        ensure!(server.signal_received().is_none(), "no signal yet");
        // ANCHOR_END: rolling
        for _ in 0..3 {
            next(&mut events).await?; // the first workers' `Ready`
        }
        let (done, done_rx) = watch::channel(false);
        let clients: Vec<_> = (0..2)
            .map(|_| tokio::spawn(client(addr, done_rx.clone())))
            .collect();

        raise(Signal::SIGHUP)?;
        let wanted: BTreeSet<u32> = first.iter().copied().collect();
        let mut new = Vec::new();
        let drained = follow(&mut events, 3, 3, &wanted, |pid| {
            new.push(pid);
            Ok(())
        })
        .await?;
        ensure!(
            drained == first,
            "the first workers drained oldest first: {drained:?} {first:?}"
        );
        ensure!(
            server.signal_received() == Some(Signal::SIGHUP),
            "signal_received: {:?}",
            server.signal_received()
        );
        // (The reap comes before the stats drop the worker.)
        let replaced = |s: &fork_prefork::Stats| {
            s.idle + s.busy == 3 && s.pids_of(1).iter().all(|p| !first.contains(p))
        };
        let stats = server.wait_until(replaced).await;
        ensure!(
            replaced(&stats),
            "all replaced: {:?}, were {first:?}",
            stats.pids_of(1)
        );

        done.send_replace(true);
        let mut answered_by = BTreeSet::new();
        for c in clients {
            let (answered, by) = c.await.map_err(fail)??;
            ensure!(answered > 0, "a client was answered");
            answered_by.extend(by);
        }
        ensure!(
            answered_by.iter().any(|p| new.contains(p)),
            "served by the new workers too: {answered_by:?}, new {new:?}"
        );
        raise(Signal::SIGTERM)?;
        trap.await.map_err(fail)?.map_err(fail)?;
        ensure!(
            server.signal_received() == Some(Signal::SIGTERM),
            "signal_received: {:?}",
            server.signal_received()
        );
        Ok(())
    })
}

fn a_second_rolling_request_starts_over_with_the_workers_serving_then() -> Result<(), Failed> {
    bounded(async {
        let (server, _addr, mut events, first) = server(2).await?;
        let signals = Signals::empty().on(
            Signal::SIGHUP,
            SignalAction::Rolling {
                signal: Signal::SIGTERM,
                // Long enough to ask again before the second worker's turn.
                interval: Duration::from_millis(1500),
            },
        );
        let trap = tokio::spawn(server.trap_signals_with(signals).map_err(fail)?);
        for _ in 0..2 {
            next(&mut events).await?;
        }
        raise(Signal::SIGHUP)?;
        // The first worker's replacement, once ready, is serving when the
        // second request comes: it is restarted too.
        let mut replacement = None;
        let mut wanted: BTreeSet<u32> = first.iter().copied().collect();
        let drained = follow(&mut events, 2, 2, &wanted.clone(), |pid| {
            if replacement.is_none() {
                replacement = Some(pid);
                raise(Signal::SIGHUP)?;
            }
            Ok(())
        })
        .await?;
        let replacement = replacement.ok_or("a replacement")?;
        wanted.insert(replacement);
        ensure!(
            drained == first,
            "the first two, oldest first: {drained:?} {first:?}"
        );
        let more = follow(
            &mut events,
            2,
            2,
            &[replacement].into_iter().collect(),
            |_| Ok(()),
        )
        .await?;
        ensure!(
            more == [replacement],
            "then the worker serving at the second request: {more:?}, {replacement}"
        );
        server.stop().await.map_err(fail)?;
        trap.await.map_err(fail)?.map_err(fail)?;
        Ok(())
    })
}

fn a_forwarded_signal_reaches_every_worker_at_once() -> Result<(), Failed> {
    bounded(async {
        let (server, _addr, mut events, first) = server(3).await?;
        // Parallel::Prefork's `USR2 => 'TERM'`: another signal, to all.
        let signals = Signals::empty().on(Signal::SIGUSR2, SignalAction::Forward(Signal::SIGTERM));
        let trap = tokio::spawn(server.trap_signals_with(signals).map_err(fail)?);
        for _ in 0..3 {
            next(&mut events).await?;
        }
        raise(Signal::SIGUSR2)?;
        let mut drained = BTreeSet::new();
        let mut reaped = BTreeSet::new();
        let wanted: BTreeSet<u32> = first.iter().copied().collect();
        while reaped != wanted {
            match next(&mut events).await? {
                Seen::Mark(Mark::Draining(pid)) => {
                    drained.insert(pid);
                }
                Seen::Mark(Mark::Ready(_)) => {}
                Seen::Reaped(pid, reason, code) => {
                    ensure!(
                        reason == ExitReason::Stopped && code == Some(0),
                        "{pid} stopped by the forwarded TERM: {reason:?} {code:?}"
                    );
                    reaped.insert(pid);
                }
            }
        }
        ensure!(drained == wanted, "every worker drained: {drained:?}");
        ensure!(
            server.signal_received() == Some(Signal::SIGUSR2),
            "signal_received: {:?}",
            server.signal_received()
        );
        // The server itself goes on, with new workers (the reap comes
        // before the stats drop the worker).
        let replaced = |s: &fork_prefork::Stats| {
            s.idle == 3 && s.pids_of(1).iter().all(|p| !wanted.contains(p))
        };
        let s = server.wait_until(replaced).await;
        ensure!(!s.stopped && replaced(&s), "{s:?}");
        server.stop().await.map_err(fail)?;
        trap.await.map_err(fail)?.map_err(fail)?;
        Ok(())
    })
}

// ANCHOR: wait_all_children
fn wait_all_children_waits_for_a_stop_within_a_timeout() -> Result<(), Failed> {
    bounded(async {
        let (server, addr, _events, _first) = server(2).await?;
        let trap = server
            .trap_signals_with(Signals::empty().on(Signal::SIGWINCH, SignalAction::Stop))
            .map_err(fail)?;
        let trap = tokio::spawn(trap);
        // Running: its workers never all end.
        ensure!(
            !server.wait_all_children(Duration::from_millis(200)).await,
            "a running server's workers ended"
        );
        // A request in progress holds its worker past a stop.
        let mut held = TcpStream::connect(addr).await.map_err(fail)?;
        held.write_all(b"h").await.map_err(fail)?;
        let mut holding = [0u8; 8];
        held.read_exact(&mut holding).await.map_err(fail)?;
        raise(Signal::SIGWINCH)?;
        server
            .wait_until(|s| s.stopping == 2 || s.total() < 2)
            .await;
        ensure!(
            !server.wait_all_children(Duration::from_millis(200)).await,
            "ended while a request was held: {:?}",
            server.stats()
        );
        // The request ends: so do the workers.
        held.write_all(b".").await.map_err(fail)?;
        ensure!(
            server.wait_all_children(Duration::from_secs(10)).await,
            "still running: {:?}",
            server.stats()
        );
        // ANCHOR_END: wait_all_children
        ensure!(server.stats().total() == 0, "{:?}", server.stats());
        ensure!(
            server.signal_received() == Some(Signal::SIGWINCH),
            "signal_received: {:?}",
            server.signal_received()
        );
        trap.await.map_err(fail)?.map_err(fail)?;
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run_serially(&[
        (
            "a_rolling_restart_replaces_every_worker_one_at_a_time",
            a_rolling_restart_replaces_every_worker_one_at_a_time,
        ),
        (
            "a_second_rolling_request_starts_over_with_the_workers_serving_then",
            a_second_rolling_request_starts_over_with_the_workers_serving_then,
        ),
        (
            "a_forwarded_signal_reaches_every_worker_at_once",
            a_forwarded_signal_reaches_every_worker_at_once,
        ),
        (
            "wait_all_children_waits_for_a_stop_within_a_timeout",
            wait_all_children_waits_for_a_stop_within_a_timeout,
        ),
    ]);
}
