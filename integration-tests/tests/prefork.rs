//! fork-prefork, end to end: workers serving a shared listener, graceful
//! stop, boot loops, failed reloads, reloads under keep-alive HTTP load
//! with crashing workers, losing no request, and the data and reap events
//! workers send their parent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fork_core::Template;
use fork_prefork::{BootFailure, Context, Error, Event, Events, ExitReason, Prefork, PreforkEntry};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use integration_tests::{
    Failed, all_exit, block_on, children_of, ensure, fail, parent_of, read_line,
};
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

/// The label a worker's template was given (argument 0), or "".
fn label(ctx: &Context) -> String {
    ctx.arg::<String>(0).unwrap_or_default()
}

/// What the line server's workers yell to their parent.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    pid: u32,
    generation: u64,
    text: String,
}

/// A line server's worker said goodbye: it exits with an error.
static BYE: AtomicBool = AtomicBool::new(false);

// ANCHOR: line_server
/// A tiny line protocol, one command byte per connection:
/// `p` answers "<pid> <generation>\n" and closes; `h` answers "holding\n",
/// waits for one more byte, then answers as `p`; `f` answers "forever\n"
/// and never finishes; `b` blocks the worker's thread for ever (a stuck
/// worker: its runtime, heartbeat included, stops); `y` yells a [`Note`]
/// "hello" to the parent, `z` a thousand 1 KiB ones, and `x` makes the
/// worker retire, yell "bye" as its function returns, and exit with an
/// error; each then answers as `p`.
async fn line_server(ctx: Context) -> Result<(), String> {
    if label(&ctx) == "fail" {
        return Err("cannot start: no database".into());
    }
    let link = ctx.link().clone();
    let note = move |text: &str, generation: u64| Note {
        pid: std::process::id(),
        generation,
        text: text.into(),
    };
    let served = ctx.serve(move |mut conn, link| async move {
        let note = |text: &str| note(text, link.generation());
        let mut command = [0u8; 1];
        if conn.read_exact(&mut command).await.is_err() {
            return;
        }
        let answer = format!("{} {}\n", std::process::id(), link.generation());
        match command[0] {
            b'h' => {
                let _ = conn.write_all(b"holding\n").await;
                let _ = conn.read_exact(&mut command).await;
            }
            b'f' => {
                let _ = conn.write_all(b"forever\n").await;
                std::future::pending::<()>().await;
            }
            b'b' => loop {
                std::thread::park();
            },
            b'y' => link.yell(&note("hello")).expect("a small note"),
            b'z' => {
                for _ in 0..1000 {
                    link.yell(&note(&"z".repeat(1024))).expect("a 1 KiB note");
                }
            }
            b'x' => {
                BYE.store(true, Ordering::SeqCst);
                link.retire();
            }
            _ => {}
        }
        let _ = conn.write_all(answer.as_bytes()).await;
    });
    served.await.map_err(|e| e.to_string())?;
    if BYE.load(Ordering::SeqCst) {
        // With its exit: written before the worker ends.
        link.yell(&note("bye", link.generation()))
            .map_err(|e| e.to_string())?;
        return Err("said bye".into());
    }
    Ok(())
}
static LINE_SERVER: PreforkEntry = fork_prefork::entry!(line_server);
// ANCHOR_END: line_server

static CRASH: AtomicBool = AtomicBool::new(false);

// ANCHOR: http_server
/// Hello-world HTTP/1.1 with hyper: answers "<pid> <generation> <label>".
/// While the worker drains, every answer says `Connection: close`, so a
/// keep-alive client never sends on a connection being closed. `/crash`
/// makes the worker retire, finish its connections, and exit with an error.
async fn http_server(ctx: Context) -> Result<(), String> {
    let label = Arc::new(label(&ctx));
    let served = ctx.serve(move |conn, link| {
        let label = label.clone();
        async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (link, label) = (link.clone(), label.clone());
                async move {
                    if req.uri().path() == "/crash" {
                        CRASH.store(true, Ordering::SeqCst);
                        link.retire();
                    }
                    let body = format!("{} {} {label}", std::process::id(), link.generation());
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    if link.is_draining() {
                        let close = HeaderValue::from_static("close");
                        response.headers_mut().insert(CONNECTION, close);
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let _ = http.serve_connection(TokioIo::new(conn), service).await;
        }
    });
    served.await.map_err(|e| e.to_string())?;
    if CRASH.load(Ordering::SeqCst) {
        return Err("crashed on purpose".into());
    }
    Ok(())
}
static HTTP_SERVER: PreforkEntry = fork_prefork::entry!(http_server);
// ANCHOR_END: http_server

fn loopback() -> Result<(std::net::TcpListener, SocketAddr), Failed> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    Ok((listener, addr))
}

fn template(label: &str) -> Result<Template, Failed> {
    let template = Template::new().map_err(fail)?;
    template.arg(label);
    Ok(template)
}

/// Sends one command byte and reads the answer to its end.
async fn ask(addr: SocketAddr, command: u8) -> Result<String, Failed> {
    let mut conn = TcpStream::connect(addr).await.map_err(fail)?;
    conn.write_all(&[command]).await.map_err(fail)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.map_err(fail)?;
    Ok(answer)
}

fn workers_serve_a_shared_listener() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let template = template("")?;
        let template_pid = template.id();
        // ANCHOR: start
        let server = Prefork::builder(template, &LINE_SERVER)
            .listener(listener)
            .workers(3)
            .start()
            .map_err(fail)?;
        let stats = server.wait_until(|s| s.idle == 3).await;
        // ANCHOR_END: start
        let pids = stats.pids_of(1);
        ensure!(pids.len() == 3, "three workers: {stats:?}");
        for &pid in &pids {
            ensure!(
                parent_of(pid) == Some(template_pid),
                "worker {pid} is a child of the template {template_pid}"
            );
        }
        let mut children = children_of(template_pid).map_err(fail)?;
        children.sort();
        let mut sorted = pids.clone();
        sorted.sort();
        ensure!(
            children == sorted,
            "the template's children {children:?} are the workers {sorted:?}"
        );
        for _ in 0..30 {
            let answer = ask(addr, b'p').await?;
            let (pid, generation) = answer.trim().split_once(' ').ok_or("an answer")?;
            let pid: u32 = pid.parse().map_err(fail)?;
            ensure!(pids.contains(&pid), "answered by {pid}, one of {pids:?}");
            ensure!(generation == "1", "generation 1: {answer:?}");
        }
        server.stop().await.map_err(fail)?;
        all_exit(pids.iter().copied().chain([template_pid])).await?;
        let stats = server.stats();
        ensure!(
            stats.stopped && stats.exited == 3 && stats.crashed == 0 && stats.total() == 0,
            "stopped, three reaped, no crash: {stats:?}"
        );
        // The listener is closed with the server.
        ensure!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens any more"
        );
        Ok(())
    })
}

fn graceful_stop_finishes_open_requests() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(2)
            // Never reached here: the request decides when the stop ends.
            .graceful_timeout(Duration::from_secs(3600))
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 2).await;
        let pids = server.stats().pids_of(1);
        let mut held = TcpStream::connect(addr).await.map_err(fail)?;
        held.write_all(b"h").await.map_err(fail)?;
        ensure!(read_line(&mut held).await? == "holding", "held");
        let stopping = tokio::spawn({
            let server = server.clone();
            async move { server.stop().await }
        });
        // Every worker was told (an idle one may be gone already).
        server
            .wait_until(|s| s.idle + s.busy + s.starting == 0)
            .await;
        // The request in progress still gets its answer.
        held.write_all(b"g").await.map_err(fail)?;
        let answer = read_line(&mut held).await?;
        ensure!(
            answer.ends_with(" 1"),
            "answered while stopping: {answer:?}"
        );
        stopping.await.map_err(fail)?.map_err(fail)?;
        all_exit(pids).await?;
        let stats = server.stats();
        ensure!(
            stats.exited == 2 && stats.crashed == 0,
            "both workers left cleanly: {stats:?}"
        );
        Ok(())
    })
}

fn a_request_past_the_graceful_timeout_is_killed() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let grace = Duration::from_millis(300);
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(1)
            .graceful_timeout(grace)
            .start()
            .map_err(fail)?;
        let events = server.events().ok_or("the event stream")?;
        server.wait_until(|s| s.idle == 1).await;
        let pids = server.stats().pids_of(1);
        let mut stuck = TcpStream::connect(addr).await.map_err(fail)?;
        stuck.write_all(b"f").await.map_err(fail)?;
        ensure!(read_line(&mut stuck).await? == "forever", "stuck");
        let started = tokio::time::Instant::now();
        server.stop().await.map_err(fail)?;
        ensure!(
            started.elapsed() >= grace,
            "the worker was given the graceful timeout: {:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let _ = stuck.read_to_end(&mut rest).await;
        ensure!(rest.is_empty(), "no answer from a killed worker: {rest:?}");
        all_exit(pids.clone()).await?;
        let stats = server.stats();
        ensure!(
            stats.exited == 1 && stats.crashed == 0,
            "a kill at the deadline is no crash: {stats:?}"
        );
        let reaps = reaps(events).await?;
        ensure!(
            matches!(&reaps[..], [r] if r.pid == pids[0]
                && r.reason == ExitReason::Killed
                && r.status.and_then(|s| s.signal()) == Some(libc::SIGKILL)),
            "reaped once, killed by SIGKILL at the deadline: {reaps:?}"
        );
        Ok(())
    })
}

fn a_second_stop_kills_at_once() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(1)
            .graceful_timeout(Duration::from_secs(3600))
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 1).await;
        let mut stuck = TcpStream::connect(addr).await.map_err(fail)?;
        stuck.write_all(b"f").await.map_err(fail)?;
        ensure!(read_line(&mut stuck).await? == "forever", "stuck");
        let first = tokio::spawn({
            let server = server.clone();
            async move { server.stop().await }
        });
        server.wait_until(|s| s.stopping == 1).await;
        // An hour of grace, cut short by the second stop.
        server.stop().await.map_err(fail)?;
        first.await.map_err(fail)?.map_err(fail)?;
        ensure!(server.stats().stopped, "stopped");
        Ok(())
    })
}

fn a_boot_loop_stops_the_server_with_its_cause() -> Result<(), Failed> {
    bounded(async {
        let (listener, _) = loopback()?;
        let server = Prefork::builder(template("fail")?, &LINE_SERVER)
            .listener(listener)
            .workers(2)
            .max_boot_failures(3)
            .err_respawn_interval(Duration::from_millis(10))
            .start()
            .map_err(fail)?;
        let events = server.events().ok_or("the event stream")?;
        let outcome = server.stopped().await;
        let stats = server.stats();
        match outcome {
            Err(Error::Boot {
                failures: 3,
                cause: BootFailure::Reported { message, status },
            }) => {
                ensure!(
                    message.contains("no database"),
                    "the worker's own error: {message}"
                );
                ensure!(status.code() == Some(1), "exit code 1: {status}");
            }
            other => return Err(format!("a boot error, got {other:?}").into()),
        }
        ensure!(
            stats.spawned <= 4 && stats.boot_failures >= 3 && stats.total() == 0,
            "bounded forks, none left: {stats:?}"
        );
        let reaps = reaps(events).await?;
        let failed = reaps
            .iter()
            .filter(|r| {
                r.reason == ExitReason::BootFailed && r.status.and_then(|s| s.code()) == Some(1)
            })
            .count();
        // A worker still starting when the server halted is killed.
        let killed = reaps
            .iter()
            .filter(|r| {
                let signal = r.status.and_then(|s| s.signal());
                r.reason == ExitReason::Killed && signal == Some(libc::SIGKILL)
            })
            .count();
        ensure!(
            reaps.len() as u64 == stats.spawned && failed >= 3 && failed + killed == reaps.len(),
            "each worker reaped once, a boot failure (exit code 1) or killed: {reaps:?}"
        );
        ensure!(
            server.stop().await.is_err_and(|e| e.is_boot()),
            "stop says why"
        );
        Ok(())
    })
}

fn a_reload_that_cannot_boot_keeps_the_old_generation() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(2)
            .max_boot_failures(2)
            .err_respawn_interval(Duration::from_millis(10))
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 2).await;
        let before = server.stats().pids_of(1);
        let e = server.reload_with(template("fail")?).await;
        ensure!(
            e.as_ref().is_err_and(Error::is_boot),
            "the reload fails: {e:?}"
        );
        let stats = server.wait_until(|s| s.total() == 2).await;
        ensure!(
            stats.generation == 1 && stats.pids_of(1) == before,
            "the old workers serve on: {stats:?}"
        );
        let answer = ask(addr, b'p').await?;
        ensure!(
            answer.trim().ends_with(" 1"),
            "generation 1 answers: {answer:?}"
        );
        // A good reload afterwards works.
        server.reload_with(template("")?).await.map_err(fail)?;
        let stats = server.stats();
        ensure!(
            stats.generation == 3 && stats.pids_of(3).len() == 2 && stats.pids_of(1).is_empty(),
            "the next generation took over: {stats:?}"
        );
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

fn a_stuck_worker_is_killed_at_the_heartbeat_timeout_and_replaced() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(2)
            .heartbeat(Duration::from_millis(50))
            .timeout(Duration::from_millis(500))
            .err_respawn_interval(Duration::from_millis(10))
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 2).await;
        let before = server.stats().pids_of(1);
        // Block whichever worker takes this connection.
        let mut blocking = TcpStream::connect(addr).await.map_err(fail)?;
        blocking.write_all(b"b").await.map_err(fail)?;
        let stats = server.wait_until(|s| s.crashed == 1 && s.idle == 2).await;
        let after = stats.pids_of(1);
        let gone: Vec<u32> = before
            .iter()
            .copied()
            .filter(|p| !after.contains(p))
            .collect();
        ensure!(
            gone.len() == 1,
            "one worker replaced: {before:?} -> {after:?}"
        );
        all_exit(gone).await?;
        let mut rest = Vec::new();
        let _ = blocking.read_to_end(&mut rest).await;
        ensure!(rest.is_empty(), "the stuck worker never answered: {rest:?}");
        // The others kept serving.
        let answer = ask(addr, b'p').await?;
        ensure!(answer.ends_with(" 1\n"), "still served: {answer:?}");
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

fn max_requests_recycles_workers_with_jitter() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(4)
            .max_requests(10, 5)
            .start()
            .map_err(fail)?;
        let events = server.events().ok_or("the event stream")?;
        server.wait_until(|s| s.idle == 4).await;
        let mut per_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for _ in 0..200 {
            let answer = ask(addr, b'p').await?;
            let pid = answer.split(' ').next().and_then(|p| p.parse().ok());
            *per_pid
                .entry(pid.ok_or(format!("an answer: {answer:?}"))?)
                .or_default() += 1;
        }
        let stats = server.stats();
        let alive = stats.pids_of(1);
        server.stop().await.map_err(fail)?;
        let stats_after = server.stats();
        ensure!(
            per_pid.values().all(|&n| n <= 15),
            "no worker served more than 10 + 5: {per_pid:?}"
        );
        let recycled: Vec<u64> = per_pid
            .iter()
            .filter(|(pid, _)| !alive.contains(pid))
            .map(|(_, &n)| n)
            .collect();
        ensure!(
            recycled.len() >= 200 / 15 - 4 && recycled.iter().all(|&n| n >= 10),
            "recycled workers served 10 to 15 each: {per_pid:?}"
        );
        ensure!(
            recycled.iter().any(|&n| n != recycled[0]),
            "the jitter spreads the restarts: {per_pid:?}"
        );
        ensure!(
            stats_after.crashed == 0 && stats_after.boot_failures == 0,
            "recycling is no crash: {stats_after:?}"
        );
        let reaps = reaps(events).await?;
        let mut reaped: Vec<u32> = reaps.iter().map(|r| r.pid).collect();
        reaped.sort_unstable();
        reaped.dedup();
        ensure!(
            reaped.len() == reaps.len() && reaps.len() as u64 == stats_after.spawned,
            "every worker reaped once: {reaps:?}, {stats_after:?}"
        );
        // Recycled or stopped (told as it was finishing its last request,
        // or started after `alive` was read), all exit 0; each recycled one
        // served 10 to 15.
        let mut recycled_reaps = 0;
        for r in &reaps {
            let served = per_pid.get(&r.pid).copied().unwrap_or(0);
            let recycled = r.reason == ExitReason::Recycled;
            ensure!(
                (recycled || r.reason == ExitReason::Stopped)
                    && (!recycled || (10..=15).contains(&served))
                    && r.status.is_some_and(|s| s.success()),
                "recycled after 10 to 15 or stopped, exit 0: {r:?}, served {served}"
            );
            recycled_reaps += usize::from(recycled);
        }
        ensure!(
            recycled_reaps >= recycled.len(),
            "every worker gone before the stop was recycled: {reaps:?}, {per_pid:?}"
        );
        Ok(())
    })
}

fn killing_the_parent_leaves_no_worker() -> Result<(), Failed> {
    // A template and three workers.
    integration_tests::killed_host_leaves_nothing(
        env!("CARGO_BIN_EXE_prefork-host"),
        &[],
        4,
        Duration::from_secs(1),
        |_| Ok(()),
    )
}

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct Seen {
    answered: u64,
    errors: Vec<String>,
    /// Answers per generation.
    generations: BTreeMap<u64, u64>,
    connections: u64,
}

/// Sends `GET path` requests on keep-alive connections until `done`,
/// opening a new connection only when an answer says `Connection: close`.
async fn keep_alive_client(
    addr: SocketAddr,
    path: &'static str,
    done: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
) -> Seen {
    let mut seen = Seen::default();
    'connections: while !*done.borrow() {
        seen.connections += 1;
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                seen.errors.push(format!("connect: {e}"));
                continue;
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => {
                    seen.errors.push(format!("handshake: {e}"));
                    continue;
                }
            };
        let driver = tokio::spawn(conn);
        while !*done.borrow() {
            let request = Request::get(path)
                .header(HOST, "localhost")
                .body(Empty::<Bytes>::new())
                .expect("a request");
            // (hyper sends on a connection only once it is ready for the
            // next request; an error here is the connection's end.)
            if let Err(e) = sender.ready().await {
                seen.errors.push(format!("ready: {e}"));
                continue 'connections;
            }
            let response = match sender.send_request(request).await {
                Ok(r) => r,
                Err(e) => {
                    seen.errors.push(format!("request: {e}"));
                    continue 'connections;
                }
            };
            let close = response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = response.status();
            let body = match response.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    seen.errors.push(format!("body: {e}"));
                    continue 'connections;
                }
            };
            let body = String::from_utf8_lossy(&body);
            let generation = body.split(' ').nth(1).and_then(|g| g.parse().ok());
            match (status.is_success(), generation) {
                (true, Some(g)) => {
                    seen.answered += 1;
                    *seen.generations.entry(g).or_default() += 1;
                    progress.send_modify(|n| *n += 1);
                }
                _ => seen.errors.push(format!("answer {status}: {body:?}")),
            }
            if close {
                break;
            }
        }
        drop(sender);
        let _ = driver.await;
    }
    seen
}

/// One `GET path` on a connection of its own: the status, and whether the
/// answer said `Connection: close`.
async fn request_once(addr: SocketAddr, path: &str) -> Result<(hyper::StatusCode, bool), Failed> {
    let stream = TcpStream::connect(addr).await.map_err(fail)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(fail)?;
    let driver = tokio::spawn(conn);
    let request = Request::get(path)
        .header(HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(fail)?;
    let response = sender.send_request(request).await.map_err(fail)?;
    let close = response
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let status = response.status();
    response.into_body().collect().await.map_err(fail)?;
    drop(sender);
    let _ = driver.await;
    Ok((status, close))
}

// ANCHOR: reload_under_load
fn reloads_and_crashes_under_keep_alive_load_lose_no_request() -> Result<(), Failed> {
    const CLIENTS: usize = 8;
    const RELOADS: u64 = 10;
    const REQUESTS: u64 = 20_000;
    bounded(async {
        let (listener, addr) = loopback()?;
        let generation_label = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let server = Prefork::builder(template("template 1")?, &HTTP_SERVER)
            .listener(listener)
            .workers(4)
            .err_respawn_interval(Duration::from_millis(20))
            .graceful_timeout(Duration::from_secs(20))
            .on_reload(move || {
                // A template prepared again, as a reload reads its
                // configuration again.
                let n = generation_label.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let template = Template::new()?;
                    template.arg(&format!("template {n}"));
                    Ok::<_, fork_core::Error>(template)
                }
            })
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 4).await;

        let (done_tx, done) = watch::channel(false);
        let (progress, mut answered) = watch::channel(0u64);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(keep_alive_client(addr, "/", done.clone(), progress.clone())))
            .collect();

        let mut crashes = 0;
        for i in 0..RELOADS {
            // Reload once enough requests were answered since the last.
            let target = (i + 1) * REQUESTS / (RELOADS + 2);
            answered.wait_for(|&n| n >= target).await.map_err(fail)?;
            if i % 3 == 2 {
                // A worker crashes (after answering, with `Connection: close`
                // on each of its connections).
                let (status, close) = request_once(addr, "/crash").await?;
                ensure!(
                    status.is_success() && close,
                    "the crash request was answered, with close"
                );
                crashes += 1;
                server.wait_until(|s| s.crashed >= crashes).await;
            }
            server.reload().await.map_err(fail)?;
        }
        answered.wait_for(|&n| n >= REQUESTS).await.map_err(fail)?;
        done_tx.send_replace(true);

        let mut total = Seen::default();
        for client in clients {
            let seen = client.await.map_err(fail)?;
            total.answered += seen.answered;
            total.connections += seen.connections;
            total.errors.extend(seen.errors);
            for (g, n) in seen.generations {
                *total.generations.entry(g).or_default() += n;
            }
        }
        let stats = server.stats();
        server.stop().await.map_err(fail)?;
        println!(
            "    {} requests on {} connections, {} reloads, {} crashes, answers per generation {:?}",
            total.answered, total.connections, RELOADS, stats.crashed, total.generations
        );
        ensure!(
            total.errors.is_empty(),
            "no failed, reset or unanswered request: {:?}",
            total.errors
        );
        ensure!(
            total.answered >= REQUESTS,
            "at least {REQUESTS} answered: {}",
            total.answered
        );
        ensure!(
            total.generations.contains_key(&1) && total.generations.contains_key(&(RELOADS + 1)),
            "the first and the last generation answered: {:?}",
            total.generations
        );
        ensure!(
            stats.generation == RELOADS + 1,
            "{RELOADS} reloads: {stats:?}"
        );
        ensure!(
            stats.crashed == crashes,
            "{crashes} crashes seen: {stats:?}"
        );
        Ok(())
    })
}
// ANCHOR_END: reload_under_load

/// The pid and generation of an answer "<pid> <generation>\n".
fn pid_and_generation(answer: &str) -> Result<(u32, u64), Failed> {
    let mut words = answer.split_whitespace();
    let pid = words.next().and_then(|p| p.parse().ok());
    let generation = words.next().and_then(|g| g.parse().ok());
    pid.zip(generation)
        .ok_or_else(|| format!("an answer: {answer:?}").into())
}

/// The next event, failing after 10 s rather than waiting for the test's
/// bound.
async fn next(events: &mut Events) -> Result<Event, Failed> {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("the event stream ended".into()),
        Err(_) => Err("no event within 10 s".into()),
    }
}

/// Every reap left in a stopped server's stream (and no data).
async fn reaps(mut events: Events) -> Result<Vec<fork_prefork::Reaped>, Failed> {
    let mut reaps = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Reaped(r) => reaps.push(r),
            other => return Err(format!("only reaps, got {other:?}").into()),
        }
    }
    Ok(reaps)
}

// ANCHOR: events
fn workers_yell_typed_data_and_every_reap_is_reported_once() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(2)
            .heartbeat(Duration::from_millis(50))
            .timeout(Duration::from_millis(500))
            .err_respawn_interval(Duration::from_millis(10))
            .start()
            .map_err(fail)?;
        // Taken at once: events before it is taken are dropped.
        let mut events = server.events().ok_or("the event stream")?;
        ensure!(server.events().is_none(), "taken once");
        server.wait_until(|s| s.idle == 2).await;

        // A worker yells a typed value: it arrives with its pid and
        // generation.
        let (pid, generation) = pid_and_generation(&ask(addr, b'y').await?)?;
        match next(&mut events).await? {
            Event::Data(data) => {
                ensure!(
                    (data.pid, data.generation) == (pid, 1) && generation == 1,
                    "from the worker that answered: {data:?}, {pid} {generation}"
                );
                let note: Note = data.decode().map_err(fail)?;
                let expected = Note {
                    pid,
                    generation: 1,
                    text: "hello".into(),
                };
                ensure!(note == expected, "the note it sent: {note:?}");
            }
            other => return Err(format!("data, got {other:?}").into()),
        }
        // ANCHOR_END: events

        // A worker yells as it leaves: its data comes before its reap,
        // which has its exit code (an error after it retired: a crash).
        let (bye, _) = pid_and_generation(&ask(addr, b'x').await?)?;
        match (next(&mut events).await?, next(&mut events).await?) {
            (Event::Data(data), Event::Reaped(reaped)) => {
                let note: Note = data.decode().map_err(fail)?;
                ensure!(
                    data.pid == bye && note.text == "bye",
                    "its last words: {note:?}"
                );
                ensure!(
                    reaped.pid == bye
                        && reaped.generation == 1
                        && reaped.reason == ExitReason::Crashed
                        && reaped.status.and_then(|s| s.code()) == Some(1),
                    "reaped with its exit code: {reaped:?}"
                );
            }
            other => return Err(format!("data, then the reap: {other:?}").into()),
        }

        // A stuck worker is killed at the heartbeat timeout: by a signal.
        server.wait_until(|s| s.idle == 2).await;
        let mut blocking = TcpStream::connect(addr).await.map_err(fail)?;
        blocking.write_all(b"b").await.map_err(fail)?;
        let stuck = match next(&mut events).await? {
            Event::Reaped(reaped) => {
                let signal = reaped.status.and_then(|s| s.signal());
                ensure!(
                    reaped.reason == ExitReason::TimedOut
                        && (signal == Some(libc::SIGABRT) || signal == Some(libc::SIGKILL)),
                    "timed out, killed by a signal: {reaped:?}"
                );
                reaped.pid
            }
            other => return Err(format!("the stuck worker's reap, got {other:?}").into()),
        };

        // A reload, then a stop: each worker of both generations leaves
        // when told to, exiting 0.
        server.wait_until(|s| s.idle == 2).await;
        let first = server.stats().pids_of(1);
        server.reload_with(template("")?).await.map_err(fail)?;
        let second = server.stats().pids_of(2);
        server.stop().await.map_err(fail)?;
        let mut told = Vec::new();
        // The stream ends once the last worker's reap was read.
        while let Some(event) = events.recv().await {
            match event {
                Event::Reaped(r) => {
                    let generation = if first.contains(&r.pid) { 1 } else { 2 };
                    ensure!(
                        r.generation == generation
                            && r.reason == ExitReason::Stopped
                            && r.status.is_some_and(|s| s.success()),
                        "left when told, exit 0: {r:?}"
                    );
                    told.push(r.pid);
                }
                other => return Err(format!("only reaps, got {other:?}").into()),
            }
        }
        let mut expected: Vec<u32> = first.iter().chain(&second).copied().collect();
        expected.sort_unstable();
        told.sort_unstable();
        ensure!(
            told == expected,
            "each worker of both generations reaped once: {told:?}, {first:?} + {second:?}"
        );
        let all = told.len() + 2;
        let stats = server.stats();
        ensure!(
            stats.spawned == all as u64 && !told.contains(&bye) && !told.contains(&stuck),
            "one reap per worker forked ({all}): {stats:?}"
        );
        Ok(())
    })
}

fn a_parent_that_never_reads_events_still_stops_promptly() -> Result<(), Failed> {
    bounded(async {
        let (listener, addr) = loopback()?;
        let server = Prefork::builder(template("")?, &LINE_SERVER)
            .listener(listener)
            .workers(1)
            .data_backlog(8)
            .start()
            .map_err(fail)?;
        // Taken, and not read until the server has stopped.
        let mut events = server.events().ok_or("the event stream")?;
        server.wait_until(|s| s.idle == 1).await;
        let (pid, _) = pid_and_generation(&ask(addr, b'z').await?)?;
        // A thousand notes: eight wait, the rest are dropped and counted.
        let seen = tokio::time::timeout(
            Duration::from_secs(20),
            server.wait_until(|s| s.data_dropped == 1000 - 8),
        )
        .await;
        ensure!(seen.is_ok(), "992 dropped: {:?}", server.stats());
        let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
        ensure!(
            matches!(stopped, Ok(Ok(()))),
            "stopped, though nobody read: {stopped:?}"
        );
        let mut data = 0;
        let mut reaps = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                Event::Data(d) if reaps.is_empty() => {
                    ensure!(d.pid == pid, "from the worker: {d:?}");
                    data += 1;
                }
                Event::Reaped(r) => reaps.push(r.pid),
                other => return Err(format!("data then a reap, got {other:?}").into()),
            }
        }
        ensure!(
            data == 8 && reaps == [pid],
            "the backlog's eight notes, then the one reap: {data} {reaps:?}"
        );
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        (
            "workers_serve_a_shared_listener",
            workers_serve_a_shared_listener,
        ),
        (
            "graceful_stop_finishes_open_requests",
            graceful_stop_finishes_open_requests,
        ),
        (
            "a_request_past_the_graceful_timeout_is_killed",
            a_request_past_the_graceful_timeout_is_killed,
        ),
        ("a_second_stop_kills_at_once", a_second_stop_kills_at_once),
        (
            "a_boot_loop_stops_the_server_with_its_cause",
            a_boot_loop_stops_the_server_with_its_cause,
        ),
        (
            "a_reload_that_cannot_boot_keeps_the_old_generation",
            a_reload_that_cannot_boot_keeps_the_old_generation,
        ),
        (
            "a_stuck_worker_is_killed_at_the_heartbeat_timeout_and_replaced",
            a_stuck_worker_is_killed_at_the_heartbeat_timeout_and_replaced,
        ),
        (
            "max_requests_recycles_workers_with_jitter",
            max_requests_recycles_workers_with_jitter,
        ),
        (
            "killing_the_parent_leaves_no_worker",
            killing_the_parent_leaves_no_worker,
        ),
        (
            "workers_yell_typed_data_and_every_reap_is_reported_once",
            workers_yell_typed_data_and_every_reap_is_reported_once,
        ),
        (
            "a_parent_that_never_reads_events_still_stops_promptly",
            a_parent_that_never_reads_events_still_stops_promptly,
        ),
        (
            "reloads_and_crashes_under_keep_alive_load_lose_no_request",
            reloads_and_crashes_under_keep_alive_load_lose_no_request,
        ),
    ]);
}
