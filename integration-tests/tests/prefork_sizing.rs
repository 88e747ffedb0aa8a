//! fork-prefork's sizing, end to end (issue #13): spare regulation under
//! slow clients (growth, the `max_servers` cap, shrinking, and no busy
//! worker ever retired), reloads under `Sizing::Spare` (with clients
//! asking all along, with new workers ready apart, after a resize down),
//! dropping the last handle without `stop()`, and a worker that runs its
//! own accept loop (Perl's `start(\&code)` with `pf_kid_busy`/`pf_kid_idle`).
//!
//! Every worker here runs [`own_loop`]: it accepts one connection at a
//! time and holds a busy mark per request, so a client holding its request
//! keeps exactly one worker busy, as in a blocking prefork server. The
//! counts and durations are small so that each test takes a few seconds;
//! every wait is on the server's state, its events or a client's answer,
//! bounded, except where a test gives the policy ticks to do what it must
//! not (it says so).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fork_core::Template;
use fork_prefork::{
    Context, Event, Events, ExitReason, Link, Prefork, PreforkEntry, Reaped, Spare, Stats, Stream,
    WorkerState,
};
use integration_tests::{Failed, block_on, ensure, fail, read_line, state_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Runs a test body on the shared runtime, failing it after two minutes
/// instead of hanging (each wait inside has a tighter bound of its own).
fn bounded(body: impl std::future::Future<Output = Result<(), Failed>>) -> Result<(), Failed> {
    block_on(async {
        tokio::time::timeout(Duration::from_secs(120), body)
            .await
            .unwrap_or_else(|_| Err("still running after 120 s".into()))
    })
}

// ===== the worker =====

// ANCHOR: own_loop
/// A worker with a loop of its own (Perl's `start(\&code)`): it takes its
/// listener, says it is ready, and serves one connection at a time until
/// it is told to drain. Each request holds a busy mark (`pf_kid_busy`)
/// until it is answered (`pf_kid_idle`), so the worker is idle between
/// the requests of an open connection.
async fn own_loop(mut ctx: Context) -> std::io::Result<()> {
    let listener = ctx
        .take_listeners()
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no listener"))?;
    let link = ctx.link().clone();
    link.ready();
    let draining = link.draining();
    tokio::pin!(draining);
    loop {
        let conn = tokio::select! {
            biased;
            () = &mut draining => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            },
        };
        serve_connection(conn, &link).await;
    }
    // Dropping the listener stops accepting; connections still queued wait
    // for the other workers.
    Ok(())
}

/// One request per command byte, until the client closes: `p` answers
/// "<pid> <generation>\n"; `h` answers "holding <pid>\n", waits for one
/// more byte (the client holds the worker busy until then), then answers
/// as `p`. The first request of a connection is always served; between
/// requests, a draining worker closes the connection instead of waiting.
async fn serve_connection(mut conn: Stream, link: &Link) {
    let pid = std::process::id();
    let mut command = [0u8; 1];
    let mut first = true;
    loop {
        let read = if first {
            conn.read(&mut command).await
        } else {
            tokio::select! {
                biased;
                read = conn.read(&mut command) => read,
                () = link.draining() => return,
            }
        };
        first = false;
        if !matches!(read, Ok(1)) {
            return;
        }
        let busy = link.busy();
        if command[0] == b'h' {
            let holding = format!("holding {pid}\n");
            if conn.write_all(holding.as_bytes()).await.is_err()
                || conn.read_exact(&mut command).await.is_err()
            {
                return;
            }
        }
        let answer = format!("{pid} {}\n", link.generation());
        if conn.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        drop(busy);
    }
}
static OWN_LOOP: PreforkEntry = fork_prefork::entry!(own_loop);
// ANCHOR_END: own_loop

/// [`own_loop`], but a worker of a template given a unix socket's path
/// (argument 0) first connects to it and waits for a byte: the test lets
/// each through, as if its start-up took that long.
async fn gated_loop(ctx: Context) -> std::io::Result<()> {
    if let Ok(gate) = ctx.arg::<String>(0) {
        let mut gate = tokio::net::UnixStream::connect(gate).await?;
        gate.read_exact(&mut [0u8; 1]).await?;
    }
    own_loop(ctx).await
}
static GATED_LOOP: PreforkEntry = fork_prefork::entry!(gated_loop);

// ===== clients =====

fn loopback() -> Result<(std::net::TcpListener, SocketAddr), Failed> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    Ok((listener, addr))
}

/// The pid and generation of an answer "<pid> <generation>".
fn answer(text: &str) -> Result<(u32, u64), Failed> {
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|p| p.parse().ok());
    let generation = words.next().and_then(|g| g.parse().ok());
    pid.zip(generation)
        .ok_or_else(|| format!("an answer: {text:?}").into())
}

/// One quick request on a connection of its own: who answered.
async fn ask(addr: SocketAddr) -> Result<(u32, u64), Failed> {
    let mut conn = TcpStream::connect(addr).await.map_err(fail)?;
    conn.write_all(b"p").await.map_err(fail)?;
    conn.shutdown().await.map_err(fail)?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await.map_err(fail)?;
    answer(&text)
}

/// A slow client: its request is in progress (its worker busy) until it
/// is released.
struct Held {
    conn: TcpStream,
    pid: u32,
}

/// Starts a held request on `conn`; returns once a worker took it.
async fn hold_on(mut conn: TcpStream) -> Result<Held, Failed> {
    conn.write_all(b"h").await.map_err(fail)?;
    let said = read_line(&mut conn).await?;
    let pid = said
        .strip_prefix("holding ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("holding, got {said:?}"))?;
    Ok(Held { conn, pid })
}

/// A held request on a new connection.
async fn hold(addr: SocketAddr) -> Result<Held, Failed> {
    hold_on(TcpStream::connect(addr).await.map_err(fail)?).await
}

impl Held {
    /// Lets the request finish: its answer, which must come from the
    /// worker that held it. Keeps the connection open.
    async fn finish(&mut self) -> Result<(u32, u64), Failed> {
        let said = async {
            self.conn.write_all(b"r").await.map_err(fail)?;
            read_line(&mut self.conn).await
        };
        let said = said
            .await
            .map_err(|e| format!("no answer from worker {}: {e:?}", self.pid))?;
        let (pid, generation) = answer(&said)?;
        ensure!(pid == self.pid, "answered by {pid}, held by {}", self.pid);
        Ok((pid, generation))
    }

    /// [`finish`](Held::finish), then closes the connection.
    async fn release(mut self) -> Result<(u32, u64), Failed> {
        self.finish().await
    }
}

// ===== watching the server =====

/// Waits until the server's state satisfies `condition`, failing with the
/// last state after 30 s.
/// Releases the `held` requests (each answered by generation 1), then waits
/// for `reload` to complete (30 s at most).
async fn old_requests_finish_and_the_reload_completes(
    server: &Prefork,
    held: Vec<Held>,
    reload: tokio::task::JoinHandle<Result<(), fork_prefork::Error>>,
) -> Result<(), Failed> {
    for h in held {
        let (_, generation) = h.release().await?;
        ensure!(generation == 1, "finished by its old worker");
    }
    let done = tokio::time::timeout(Duration::from_secs(30), reload).await;
    ensure!(
        matches!(done, Ok(Ok(Ok(())))),
        "the reload completed: {done:?}, {:?}",
        server.stats()
    );
    Ok(())
}

/// Starts a reload of generation 1 to 2 with a fresh template, and waits
/// until every old worker is told to go; returns the reload's task.
async fn reload_until_old_drain(
    server: &Prefork,
) -> Result<tokio::task::JoinHandle<Result<(), fork_prefork::Error>>, Failed> {
    let reload = tokio::spawn({
        let (server, next) = (server.clone(), Template::new().map_err(fail)?);
        async move { server.reload_with(next).await }
    });
    until(server, "every old worker told to go", |s| {
        s.generation == 2
            && s.workers
                .iter()
                .filter(|w| w.generation == 1)
                .all(|w| w.state == WorkerState::Stopping)
    })
    .await?;
    Ok(reload)
}

async fn until(
    server: &Prefork,
    what: &str,
    condition: impl FnMut(&Stats) -> bool,
) -> Result<Stats, Failed> {
    match tokio::time::timeout(Duration::from_secs(30), server.wait_until(condition)).await {
        Ok(stats) => Ok(stats),
        Err(_) => Err(format!("not {what} within 30 s: {:?}", server.stats()).into()),
    }
}

/// Every state the server is seen in, from now until it stops (a state
/// that lasts less than the recording task takes to run may be missed).
type Log = Arc<Mutex<Vec<Stats>>>;

fn record(server: &Prefork) -> Log {
    let log = Log::default();
    let (server, into) = (server.clone(), log.clone());
    tokio::spawn(async move {
        server
            .wait_until(|s| {
                into.lock().expect("the log").push(s.clone());
                false
            })
            .await;
    });
    log
}

fn snapshots(log: &Log) -> Vec<Stats> {
    log.lock().expect("the log").clone()
}

/// Workers serving or about to: not told to stop.
fn active(s: &Stats) -> usize {
    s.starting + s.idle + s.busy
}

fn state_of_pid(s: &Stats, pid: u32) -> Option<WorkerState> {
    s.workers
        .iter()
        .find(|w| w.pid == Some(pid))
        .map(|w| w.state)
}

/// The next event, failing after 30 s.
async fn next(events: &mut Events) -> Result<Option<Event>, Failed> {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .map_err(|_| "no event within 30 s".into())
}

/// The reaps queued now (the stream holds nothing else here).
fn reaps_so_far(events: &mut Events) -> Result<Vec<Reaped>, Failed> {
    let mut reaps = Vec::new();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    while let std::task::Poll::Ready(Some(event)) = events.poll_recv(&mut cx) {
        match event {
            Event::Reaped(r) => reaps.push(r),
            other => return Err(format!("only reaps, got {other:?}").into()),
        }
    }
    Ok(reaps)
}

/// Every reap left in a stopped server's stream.
async fn reaps(mut events: Events) -> Result<Vec<Reaped>, Failed> {
    let mut reaps = Vec::new();
    while let Some(event) = next(&mut events).await? {
        match event {
            Event::Reaped(r) => reaps.push(r),
            other => return Err(format!("only reaps, got {other:?}").into()),
        }
    }
    Ok(reaps)
}

/// A worker that left when told to, by itself, exiting 0.
fn graceful(r: &Reaped) -> bool {
    r.reason == ExitReason::Stopped && r.status.is_some_and(|s| s.success())
}

/// Waits until process `pid` has exited and been reaped by its parent:
/// neither running nor a zombie.
async fn reaped(pid: u32) -> Result<(), Failed> {
    let gone = tokio::task::spawn_blocking(move || {
        fork_core::testing::wait_reaped(pid, Duration::from_secs(10))
    })
    .await
    .map_err(fail)?
    .map_err(fail)?;
    ensure!(gone, "process {pid} is still there: {:?}", state_of(pid));
    Ok(())
}

fn spare(start: usize, min: usize, max_spare: usize, max: usize) -> Spare {
    let mut spare = Spare::default();
    spare.start_servers = start;
    spare.min_spare_servers = min;
    spare.max_spare_servers = max_spare;
    spare.max_servers = max;
    spare
}

// ===== the tests =====

/// Slow clients make the server grow until it has its idle spares again
/// (by a doubling number of workers per tick, never past `max_servers`,
/// where further clients wait in the queue); once they are gone it retires
/// one idle worker per tick down to `max_spare_servers`, gracefully, and
/// never the worker a client is still holding.
fn slow_clients_grow_the_server_and_it_shrinks_after_never_retiring_a_busy_worker()
-> Result<(), Failed> {
    const TICK: Duration = Duration::from_millis(200);
    const MIN_SPARE: usize = 3;
    const MAX_SPARE: usize = 5;
    const MAX: usize = 9;
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(Template::new().map_err(fail)?, &OWN_LOOP)
            .listener(listener)
            .spare(spare(2, MIN_SPARE, MAX_SPARE, MAX))
            .maintenance_interval(TICK)
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        let mut events = server.events().ok_or("the event stream")?;
        let log = record(&server);
        // Two start servers, and a third at the first tick: the spares.
        until(&server, "three idle spares", |s| {
            s.idle == MIN_SPARE && s.total() == MIN_SPARE
        })
        .await?;

        // A burst of six slow clients: three are taken at once, three
        // wait in the queue until the server has grown.
        let burst: Vec<_> = (0..6).map(|_| tokio::spawn(hold(addr))).collect();
        let mut held = Vec::new();
        for client in burst {
            held.push(client.await.map_err(fail)??);
        }
        let pids: BTreeSet<u32> = held.iter().map(|h| h.pid).collect();
        ensure!(
            pids.len() == 6,
            "six workers hold the six clients: {pids:?}"
        );
        // Grown until three spares are idle again: 6 + 3 = max_servers.
        let stats = until(&server, "back to three spares", |s| {
            s.busy == 6 && s.idle == MIN_SPARE && s.starting == 0
        })
        .await?;
        ensure!(stats.total() == MAX, "at max_servers: {stats:?}");

        // The cap: three more clients take the spares; none is replaced,
        // and a tenth client waits in the queue meanwhile.
        for _ in 0..3 {
            held.push(hold(addr).await?);
        }
        until(&server, "nine busy", |s| s.busy == MAX).await?;
        let tenth = tokio::spawn(hold(addr));
        // Four ticks are given to the policy to start a tenth worker, which
        // it must not.
        let at = server.stats().ticks;
        until(&server, "four more ticks", |s| s.ticks >= at + 4).await?;
        ensure!(!tenth.is_finished(), "a tenth client was served");
        let stats = server.stats();
        ensure!(
            stats.total() == MAX && stats.spawned == MAX as u64,
            "no worker past max_servers: {stats:?}"
        );
        // One client leaves: its worker takes the tenth.
        let first = held.remove(1);
        let freed = first.pid;
        first.release().await?;
        let tenth = tenth.await.map_err(fail)??;
        ensure!(
            tenth.pid == freed,
            "the tenth client was taken by the freed worker {freed}, not {}",
            tenth.pid
        );
        held.push(tenth);

        // Every client but one leaves: nine idle, one busy. The server
        // retires idle workers one per tick, down to max_spare_servers.
        let keeper = held.remove(0);
        let released_at = Instant::now();
        let (spawned, ticks) = (server.stats().spawned, server.stats().ticks);
        for h in held {
            let (_, generation) = h.release().await?;
            ensure!(generation == 1, "answered by generation 1");
        }
        let stats = until(&server, "shrunk to five spares", |s| {
            s.idle == MAX_SPARE && s.busy == 1 && s.stopping == 0 && s.total() == MAX_SPARE + 1
        })
        .await?;
        let took = released_at.elapsed();
        println!("    three idle workers retired in {took:?}");
        // Three retired, one per tick: three ticks at least.
        ensure!(
            stats.ticks >= ticks + 3,
            "three workers retired within {} ticks: more than one at a tick",
            stats.ticks - ticks
        );
        ensure!(stats.spawned == spawned, "none started: {stats:?}");
        let retired = reaps_so_far(&mut events)?;
        ensure!(
            retired.len() == 3 && retired.iter().all(graceful),
            "three retired, each by itself when told, exit 0: {retired:?}"
        );
        ensure!(
            retired.iter().all(|r| r.pid != keeper.pid),
            "the busy worker {} was retired: {retired:?}",
            keeper.pid
        );

        // The client held throughout gets its answer.
        let keeper_pid = keeper.pid;
        keeper.release().await?;
        server.stop().await.map_err(fail)?;
        let rest = reaps(events).await?;
        ensure!(
            rest.len() == MAX_SPARE + 1 && rest.iter().all(graceful),
            "the rest stopped gracefully: {rest:?}"
        );
        let log = snapshots(&log);
        // The growth after the burst, from three workers to nine: batches
        // started at a tick (two batches seen together would only look
        // larger).
        let mut spawned: Vec<u64> = log.iter().map(|s| s.spawned).collect();
        spawned.dedup();
        let batches: Vec<u64> = spawned
            .windows(2)
            .filter(|w| w[0] >= MIN_SPARE as u64)
            .map(|w| w[1] - w[0])
            .collect();
        println!("    workers started per tick while growing: {batches:?}");
        ensure!(
            batches.iter().any(|&n| n >= 2),
            "more than one started at a tick as the growth doubles: {batches:?}"
        );
        for s in &log {
            ensure!(
                active(s) <= MAX,
                "more than max_servers workers at once: {s:?}"
            );
            // (At the stop, every worker is told at once.)
            ensure!(
                state_of_pid(s, keeper_pid) != Some(WorkerState::Stopping) || active(s) == 0,
                "the busy worker {keeper_pid} was told to stop: {s:?}"
            );
        }
        Ok(())
    })
}

/// A reload under spare regulation: the new generation starts first, as
/// large as the old one; the old one drains (requests in progress on it
/// finish); every request sent meanwhile is answered; afterwards the new
/// generation is regulated as before.
fn a_reload_under_spare_sizing_loses_nothing_and_keeps_the_bounds() -> Result<(), Failed> {
    const MIN_SPARE: usize = 2;
    const MAX_SPARE: usize = 3;
    const MAX: usize = 8;
    const CLIENTS: usize = 4;
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(Template::new().map_err(fail)?, &OWN_LOOP)
            .listener(listener)
            .spare(spare(2, MIN_SPARE, MAX_SPARE, MAX))
            .maintenance_interval(Duration::from_millis(100))
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        until(&server, "two idle", |s| s.idle == MIN_SPARE).await?;
        // Three slow clients on generation 1: it grows to keep its spares.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(hold(addr).await?);
        }
        let before = until(&server, "three busy and the spares", |s| {
            s.busy == 3 && s.idle >= MIN_SPARE && s.starting == 0
        })
        .await?;
        let old = before.pids_of(1);

        // Clients asking all along.
        let (done_tx, done) = watch::channel(false);
        let (progress, mut answered) = watch::channel(0u64);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (done, progress) = (done.clone(), progress.clone());
                tokio::spawn(async move {
                    let mut generations = Vec::new();
                    let mut errors = Vec::new();
                    while !*done.borrow() {
                        match ask(addr).await {
                            Ok((_, g)) => {
                                generations.push(g);
                                progress.send_modify(|n| *n += 1);
                            }
                            Err(e) => errors.push(format!("{e:?}")),
                        }
                    }
                    (generations, errors)
                })
            })
            .collect();
        answered.wait_for(|&n| n >= 50).await.map_err(fail)?;

        let log = record(&server);
        // Every old worker is told to drain; the held requests go on.
        let reload = reload_until_old_drain(&server).await?;
        for h in held {
            let (_, generation) = h.release().await?;
            ensure!(generation == 1, "finished by its old worker");
        }
        reload.await.map_err(fail)?.map_err(fail)?;
        let at_reload = *answered.borrow();
        answered
            .wait_for(|&n| n >= at_reload + 50)
            .await
            .map_err(fail)?;
        done_tx.send_replace(true);
        let mut generations = BTreeSet::new();
        let mut errors = Vec::new();
        for client in clients {
            let (g, e) = client.await.map_err(fail)?;
            generations.extend(g);
            errors.extend(e);
        }
        ensure!(errors.is_empty(), "every request answered: {errors:?}");
        ensure!(
            generations == BTreeSet::from([1, 2]),
            "both generations answered: {generations:?}"
        );

        // Afterwards: generation 2 alone, its spares within the bounds.
        let after = until(&server, "the spares within bounds", |s| {
            s.starting == 0
                && s.stopping == 0
                && s.busy == 0
                && (MIN_SPARE..=MAX_SPARE).contains(&s.idle)
        })
        .await?;
        ensure!(
            after.workers.iter().all(|w| w.generation == 2),
            "generation 2 alone: {after:?}"
        );
        server.stop().await.map_err(fail)?;

        let log = snapshots(&log);
        ensure!(
            log.last()
                .is_some_and(|s| s.spawned >= before.spawned + old.len() as u64),
            "the new generation started as large as the old ({}): {:?}",
            old.len(),
            log.last()
        );
        for s in &log {
            let old_left = old
                .iter()
                .filter(|&&pid| {
                    !matches!(
                        state_of_pid(s, pid),
                        Some(WorkerState::Idle | WorkerState::Busy)
                    )
                })
                .count();
            let new_ready = s
                .workers
                .iter()
                .filter(|w| w.generation == 2)
                .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy))
                .count();
            ensure!(
                // (At the stop, every worker is told at once.)
                old_left == 0 || new_ready > 0 || active(s) == 0,
                "an old worker left before a new one was ready: {s:?}"
            );
        }
        Ok(())
    })
}

/// A reload under spare regulation whose new workers get ready apart, with
/// maintenance ticks in between at which the new generation has more idle
/// workers than `max_spare_servers`: the reload still retires every old
/// worker and completes (it used to trim the new generation below the old
/// one's size, and an old worker was never told to go).
fn a_spare_reload_whose_workers_get_ready_apart_completes() -> Result<(), Failed> {
    const TICK: Duration = Duration::from_millis(50);
    bounded(async {
        let (listener, addr) = loopback()?;
        // Removed when the test ends, passed or failed.
        let gate_file = integration_tests::Scratch::new("prefork-gate");
        let gate_path = gate_file.path();
        let gate = tokio::net::UnixListener::bind(gate_path).map_err(fail)?;
        let server = Prefork::builder(Template::new().map_err(fail)?, &GATED_LOOP)
            .listener(listener)
            .spare(spare(2, 2, 3, 12))
            .maintenance_interval(TICK)
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        until(&server, "two idle", |s| s.idle == 2).await?;
        // Four slow clients: six workers or so.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(hold(addr).await?);
        }
        let before = until(&server, "four busy and the spares", |s| {
            s.busy == 4 && s.idle >= 2 && s.starting == 0
        })
        .await?;
        let old = before.pids_of(1).len();

        let gated = Template::new().map_err(fail)?;
        gated.arg(&gate_path.to_string_lossy().into_owned());
        let reload = tokio::spawn({
            let server = server.clone();
            async move { server.reload_with(gated).await }
        });
        // The new generation starts in full, and waits at the gate.
        let mut waiting = Vec::new();
        for _ in 0..old {
            let accepted = tokio::time::timeout(Duration::from_secs(30), gate.accept()).await;
            waiting.push(
                accepted
                    .map_err(|_| "a new worker at the gate")?
                    .map_err(fail)?
                    .0,
            );
        }
        // All but two are let through; then ticks pass (with more idle new
        // workers than max_spare_servers, two of them still starting).
        for mut conn in waiting.drain(..old - 2) {
            conn.write_all(b"go").await.map_err(fail)?;
        }
        until(&server, "the first new workers ready", |s| {
            s.workers
                .iter()
                .filter(|w| w.generation == 2 && w.state == WorkerState::Idle)
                .count()
                == old - 2
        })
        .await?;
        // Four ticks pass.
        let at = server.stats().ticks;
        until(&server, "four more ticks", |s| s.ticks >= at + 4).await?;
        for mut conn in waiting {
            conn.write_all(b"go").await.map_err(fail)?;
        }
        // Every old worker is told to go: the held requests finish on
        // them, and the reload completes.
        until(&server, "every old worker told to go", |s| {
            s.workers
                .iter()
                .filter(|w| w.generation == 1)
                .all(|w| w.state == WorkerState::Stopping)
        })
        .await?;
        old_requests_finish_and_the_reload_completes(&server, held, reload).await?;
        let (_, generation) = ask(addr).await?;
        ensure!(generation == 2, "the new generation serves");
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

/// `resize(n)` under spare regulation lowers `max_servers`: the idle
/// workers above it leave at the next tick, the busy ones stay until their
/// requests are done (as `resize` says), and a reload afterwards starts
/// `n` new workers, retires every old one and completes.
fn resizing_a_spare_server_down_retires_idle_workers_and_a_reload_then_completes()
-> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(Template::new().map_err(fail)?, &OWN_LOOP)
            .listener(listener)
            .spare(spare(2, 1, 3, 8))
            .maintenance_interval(Duration::from_millis(50))
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        until(&server, "two idle", |s| s.idle == 2).await?;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(hold(addr).await?);
        }
        until(&server, "three busy and a spare", |s| {
            s.busy == 3 && s.idle >= 1 && s.starting == 0
        })
        .await?;
        ensure!(server.resize(2).await.map_err(fail)? == 2, "resized to 2");
        // The spare leaves; the three busy workers stay.
        let stats = until(&server, "the idle surplus gone", |s| {
            s.idle == 0 && s.stopping == 0 && s.starting == 0
        })
        .await?;
        ensure!(
            stats.busy == 3 && held.iter().all(|h| stats.pids_of(1).contains(&h.pid)),
            "the busy workers stay: {stats:?}"
        );

        let reload = reload_until_old_drain(&server).await?;
        old_requests_finish_and_the_reload_completes(&server, held, reload).await?;
        let stats = until(&server, "generation 2 settled", |s| {
            s.starting == 0 && s.stopping == 0
        })
        .await?;
        ensure!(
            stats.total() <= 2 && stats.workers.iter().all(|w| w.generation == 2),
            "at most two workers, of generation 2: {stats:?}"
        );
        let (_, generation) = ask(addr).await?;
        ensure!(generation == 2, "the new generation serves");
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

/// Dropping the last handle without `stop()` stops the server gracefully
/// in the background, as `stop()` would: the request in progress gets its
/// answer, every worker and the template exit and are reaped (no orphan,
/// no zombie), and the listener is closed.
fn dropping_the_last_handle_stops_the_server_gracefully() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let template = Template::new().map_err(fail)?;
        let template_pid = template.id();
        let server = Prefork::builder(template, &OWN_LOOP)
            .listener(listener)
            .workers(2)
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        let mut events = server.events().ok_or("the event stream")?;
        let stats = until(&server, "two idle", |s| s.idle == 2).await?;
        let pids = stats.pids_of(1);
        let mut held = hold(addr).await?;
        until(&server, "one busy", |s| s.busy == 1).await?;
        drop(server);

        // The idle worker leaves at once, told to.
        let first = match next(&mut events).await? {
            Some(Event::Reaped(r)) => r,
            other => return Err(format!("a reap, got {other:?}").into()),
        };
        ensure!(
            first.pid != held.pid && graceful(&first),
            "the idle worker stopped gracefully: {first:?}"
        );
        // The busy one finishes its request, then leaves.
        held.finish().await?;
        let mut rest = Vec::new();
        held.conn.read_to_end(&mut rest).await.map_err(fail)?;
        ensure!(rest.is_empty(), "then closes: {rest:?}");
        let last = reaps(events).await?;
        ensure!(
            matches!(&last[..], [r] if r.pid == held.pid && graceful(r)),
            "the busy worker stopped gracefully once done: {last:?}"
        );
        for pid in pids.into_iter().chain([template_pid]) {
            reaped(pid).await?;
        }
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => return Err(format!("the listener is closed, got {other:?}").into()),
        }
        Ok(())
    })
}

/// A worker with its own loop serves; `Stats` shows it busy while a
/// request is in progress and idle between two requests of an open
/// connection; a graceful stop lets the request in progress finish.
fn a_worker_with_its_own_loop_reports_busy_per_request_and_drains() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(Template::new().map_err(fail)?, &OWN_LOOP)
            .listener(listener)
            .workers(2)
            .graceful_timeout(Duration::from_secs(60))
            .start()
            .map_err(fail)?;
        let events = server.events().ok_or("the event stream")?;
        let stats = until(&server, "two idle", |s| s.idle == 2).await?;
        let pids = stats.pids_of(1);
        let (pid, generation) = ask(addr).await?;
        ensure!(
            pids.contains(&pid) && generation == 1,
            "served by {pid}, one of {pids:?}"
        );

        // A request in progress: its worker is busy.
        let conn = TcpStream::connect(addr).await.map_err(fail)?;
        let mut held = hold_on(conn).await?;
        let stats = until(&server, "one busy", |s| s.busy == 1).await?;
        let busy = stats
            .workers
            .iter()
            .find(|w| w.state == WorkerState::Busy)
            .ok_or("a busy worker")?;
        ensure!(
            busy.pid == Some(held.pid) && busy.served >= 1,
            "the worker holding the request is busy: {stats:?}"
        );
        // Answered: idle again, with the connection still open.
        held.finish().await?;
        until(&server, "idle between requests", |s| {
            s.idle == 2 && s.workers.iter().map(|w| w.served).sum::<u64>() == 2
        })
        .await?;

        // The next request on that connection is in progress as the server
        // stops: it is answered, then the worker leaves.
        held.conn.write_all(b"h").await.map_err(fail)?;
        ensure!(
            read_line(&mut held.conn).await? == format!("holding {}", held.pid),
            "held again by the same worker"
        );
        until(&server, "busy again", |s| s.busy == 1).await?;
        let stopping = tokio::spawn({
            let server = server.clone();
            async move { server.stop().await }
        });
        until(&server, "every worker told to stop", |s| active(s) == 0).await?;
        let (_, generation) = held.finish().await?;
        ensure!(generation == 1, "answered while stopping");
        let mut rest = Vec::new();
        held.conn.read_to_end(&mut rest).await.map_err(fail)?;
        ensure!(rest.is_empty(), "then closed: {rest:?}");
        stopping.await.map_err(fail)?.map_err(fail)?;
        let reaps = reaps(events).await?;
        ensure!(
            reaps.len() == 2 && reaps.iter().all(graceful),
            "both stopped by themselves, exit 0: {reaps:?}"
        );
        ensure!(
            reaps
                .iter()
                .all(|r| r.status.and_then(|s| s.signal()).is_none()),
            "none killed: {reaps:?}"
        );
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run_quietly(&[
        (
            "slow_clients_grow_the_server_and_it_shrinks_after_never_retiring_a_busy_worker",
            slow_clients_grow_the_server_and_it_shrinks_after_never_retiring_a_busy_worker,
        ),
        (
            "a_reload_under_spare_sizing_loses_nothing_and_keeps_the_bounds",
            a_reload_under_spare_sizing_loses_nothing_and_keeps_the_bounds,
        ),
        (
            "a_spare_reload_whose_workers_get_ready_apart_completes",
            a_spare_reload_whose_workers_get_ready_apart_completes,
        ),
        (
            "resizing_a_spare_server_down_retires_idle_workers_and_a_reload_then_completes",
            resizing_a_spare_server_down_retires_idle_workers_and_a_reload_then_completes,
        ),
        (
            "dropping_the_last_handle_stops_the_server_gracefully",
            dropping_the_last_handle_stops_the_server_gracefully,
        ),
        (
            "a_worker_with_its_own_loop_reports_busy_per_request_and_drains",
            a_worker_with_its_own_loop_reports_busy_per_request_and_drains,
        ),
    ]);
}
