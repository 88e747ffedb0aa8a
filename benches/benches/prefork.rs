//! Prefork benchmark: hello-world HTTP/1.1 keep-alive over loopback, 2 and
//! 8 workers, 4 and 64 connections, a fork-prefork server beside the raw
//! limits of a prefork server, in one run.
//!
//! Run: `cargo bench -p benches --bench prefork` (about two minutes), or
//! `cargo bench -p benches --bench prefork -- --quick` (a few seconds; for
//! CI). `--only TEXT` measures only the rows whose name contains `TEXT`.
//!
//! The servers, each the children of a small process with no manager
//! (fork-core's template) or a fork-prefork server:
//!
//! - **raw, blocking**: each child a blocking accept loop serving one
//!   connection at a time (Parallel::Prefork's shape).
//! - **raw, tokio**: each child a `current_thread` tokio loop accepting on
//!   the shared listener and serving every connection in a task: the limit
//!   a prefork server whose workers run tokio can reach.
//! - **fork-prefork**: a [`fork_prefork::Prefork`] server whose workers
//!   run [`Context::serve`](fork_prefork::Context::serve) with the same
//!   handler, its manager a task on a thread of its own in this process.
//! - **fork-prefork, FirstIdle**: the same with
//!   [`AcceptOrder::FirstIdle`](fork_prefork::AcceptOrder::FirstIdle)
//!   instead of the default round robin.
//! - **fork-prefork + hyper**: the same server with hyper's HTTP/1.1 in
//!   each connection, as the `prefork_http` example (for information).
//!
//! The load generator is in this process: a tokio runtime of 2 threads
//! keeps `C` connections each sending a request and reading the answer
//! (as `wrk -t2 -cC` does), counting the answers of each connection and
//! their latencies. `wrk`'s figure alone hides starved connections: the
//! table says how many requests the least served connection got.
//!
//! A second table counts wake-ups: 8 idle workers, connections opened one
//! at a time (connect, one request, close), and the context switches of
//! every worker's threads per connection. A worker that is woken and finds
//! nothing to accept (the thundering herd) shows there.

#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::{Args, BoxResult, Rounds, Sample, Table, ratio, spread, verdict};
use fork_core::{Context, Entry, Template, Worker};
use fork_prefork::{AcceptOrder, Prefork, PreforkEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

// ===== the handler, the same in every server =====

// ANCHOR: handler
/// The answer to every request.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!";

/// The request the load generator sends.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// How many requests end in `buf` (each ends with an empty line); the
/// bytes after the last one are kept at the start of `buf`.
fn complete_requests(buf: &mut Vec<u8>) -> usize {
    let mut n = 0;
    let mut end = 0;
    while let Some(at) = buf[end..].windows(4).position(|w| w == b"\r\n\r\n") {
        end += at + 4;
        n += 1;
    }
    buf.drain(..end);
    n
}

/// The trivial handler, blocking: answers every request of the
/// connection until it closes.
fn serve_blocking(mut conn: std::net::TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        for _ in 0..complete_requests(&mut buf) {
            if conn.write_all(RESPONSE).is_err() {
                return;
            }
        }
    }
}

/// The trivial handler, for tokio: the same.
async fn serve_async<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut conn: S) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        for _ in 0..complete_requests(&mut buf) {
            if conn.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
    }
}

// ANCHOR_END: handler

// ===== the servers =====

/// The listener a raw child inherited (its descriptor 0).
fn inherited_listener(mut ctx: Context) -> io::Result<std::net::TcpListener> {
    let fd = ctx
        .take_fds()
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no listener"))?;
    Ok(std::net::TcpListener::from(fd))
}

/// A raw child: a blocking accept loop, one connection at a time.
fn raw_blocking(ctx: Context) -> io::Result<()> {
    let listener = inherited_listener(ctx)?;
    loop {
        let (conn, _) = listener.accept()?;
        serve_blocking(conn);
    }
}
static RAW_BLOCKING: Entry =
    fork_core::entry!(raw_blocking, name = "benches::prefork::raw_blocking");

/// A raw child: a `current_thread` tokio loop, a task per connection.
fn raw_tokio(ctx: Context) -> io::Result<()> {
    let listener = inherited_listener(ctx)?;
    listener.set_nonblocking(true)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (conn, _) = listener.accept().await?;
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve_async(conn));
            }
        })
}
static RAW_TOKIO: Entry = fork_core::entry!(raw_tokio, name = "benches::prefork::raw_tokio");

/// A fork-prefork worker with the same handler.
async fn prefork_worker(ctx: fork_prefork::Context) -> io::Result<()> {
    ctx.serve(|conn, _link| async move {
        if let fork_prefork::Stream::Tcp(s) = &conn {
            let _ = s.set_nodelay(true);
        }
        serve_async(conn).await;
    })
    .await
}
static PREFORK: PreforkEntry =
    fork_prefork::entry!(prefork_worker, name = "benches::prefork::worker");

/// A fork-prefork worker serving hyper's HTTP/1.1, as `prefork_http`.
async fn prefork_hyper(ctx: fork_prefork::Context) -> io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    ctx.serve(|conn, _link| async move {
        if let fork_prefork::Stream::Tcp(s) = &conn {
            let _ = s.set_nodelay(true);
        }
        let service = hyper::service::service_fn(|_: hyper::Request<hyper::body::Incoming>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(hyper::Response::new(
                Full::new(Bytes::from_static(b"Hello, world!")),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
            .await;
    })
    .await
}
static PREFORK_HYPER: PreforkEntry =
    fork_prefork::entry!(prefork_hyper, name = "benches::prefork::hyper");

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RawBlocking,
    RawTokio,
    Prefork,
    PreforkFirstIdle,
    PreforkHyper,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RawBlocking => "raw limit, blocking children",
            Kind::RawTokio => "raw limit, tokio loop per child",
            Kind::Prefork => "fork-prefork, same handler",
            Kind::PreforkFirstIdle => "fork-prefork, same handler, FirstIdle",
            Kind::PreforkHyper => "fork-prefork + hyper (as prefork_http)",
        }
    }
}

/// A running server.
enum Server {
    /// Children of a template, no manager.
    Raw {
        addr: SocketAddr,
        children: Vec<Worker>,
    },
    /// A fork-prefork server, its manager on a thread of its own.
    Prefork {
        addr: SocketAddr,
        pids: Vec<u32>,
        /// A handle, for its stats.
        handle: Prefork,
        /// The manager's thread, to read its CPU time.
        manager_tid: i32,
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<BoxResult<()>>,
    },
}

impl Server {
    async fn start(kind: Kind, workers: usize) -> BoxResult<Server> {
        Server::start_with(kind, workers, fork_prefork::Config::default().heartbeat).await
    }

    /// As `start`, a prefork server's workers reporting every `heartbeat`
    /// when nothing changes.
    async fn start_with(kind: Kind, workers: usize, heartbeat: Duration) -> BoxResult<Server> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let raw = match kind {
            Kind::RawBlocking => &RAW_BLOCKING,
            Kind::RawTokio => &RAW_TOKIO,
            Kind::Prefork | Kind::PreforkFirstIdle | Kind::PreforkHyper => {
                let entry = if kind == Kind::PreforkHyper {
                    &PREFORK_HYPER
                } else {
                    &PREFORK
                };
                let order = if kind == Kind::PreforkFirstIdle {
                    AcceptOrder::FirstIdle
                } else {
                    AcceptOrder::RoundRobin
                };
                return Server::prefork(listener, entry, workers, heartbeat, order);
            }
        };
        let template = Template::new()?;
        let mut children = Vec::new();
        for _ in 0..workers {
            children.push(template.fork().fd(&listener).run(raw).await?);
        }
        Ok(Server::Raw { addr, children })
    }

    fn prefork(
        listener: std::net::TcpListener,
        entry: &'static PreforkEntry,
        workers: usize,
        heartbeat: Duration,
        order: AcceptOrder,
    ) -> BoxResult<Server> {
        let addr = listener.local_addr()?;
        let (started, on_start) = mpsc::channel();
        let (stop, on_stop) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || -> BoxResult<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let server = Prefork::builder(Template::new()?, entry)
                    .listener(listener)
                    .workers(workers)
                    .heartbeat(heartbeat)
                    .accept_order(order)
                    .start()?;
                let stats = server.wait_until(|s| s.idle == workers).await;
                let tid = nix::unistd::gettid().as_raw();
                let _ = started.send((stats.pids_of(1), tid, server.clone()));
                let _ = on_stop.await;
                server.stop().await?;
                Ok(())
            })
        });
        let (pids, manager_tid, handle) = on_start
            .recv()
            .map_err(|_| "the prefork server did not start")?;
        Ok(Server::Prefork {
            addr,
            pids,
            handle,
            manager_tid,
            stop,
            thread,
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Raw { addr, .. } | Server::Prefork { addr, .. } => *addr,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Server::Raw { children, .. } => children.iter().map(Worker::id).collect(),
            Server::Prefork { pids, .. } => pids.clone(),
        }
    }

    /// How many connections each worker accepted, for a prefork server
    /// ("3+1"); "–" for the raw ones.
    fn accepted_split(&self) -> String {
        match self {
            Server::Raw { .. } => "–".into(),
            Server::Prefork { handle, .. } => {
                let stats = handle.stats();
                let counts: Vec<String> = stats
                    .workers
                    .iter()
                    .map(|w| w.accepted.to_string())
                    .collect();
                counts.join("+")
            }
        }
    }

    /// The CPU time of the manager's thread so far (zero for the raw
    /// servers, which have none).
    fn manager_cpu(&self) -> Duration {
        match self {
            Server::Raw { .. } => Duration::ZERO,
            Server::Prefork { manager_tid, .. } => thread_cpu(*manager_tid).unwrap_or_default(),
        }
    }

    async fn stop(self) -> BoxResult<()> {
        match self {
            Server::Raw { children, .. } => {
                for mut child in children {
                    child.kill().await?;
                }
            }
            Server::Prefork {
                stop,
                thread,
                handle,
                ..
            } => {
                drop(handle);
                let _ = stop.send(());
                tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| "the prefork server's thread panicked")??;
            }
        }
        Ok(())
    }
}

/// The CPU time (user + system) of thread `tid` of this process.
fn thread_cpu(tid: i32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .unwrap_or(100)
        .max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

// ===== the load generator =====

/// What the connections of one round got.
#[derive(Debug, Default, Clone)]
struct Load {
    /// Answers per connection.
    per_connection: Vec<u64>,
    /// Latency of every answer, in microseconds.
    latencies: Vec<u32>,
}

impl Load {
    fn add(&mut self, more: Load) {
        if self.per_connection.is_empty() {
            self.per_connection = more.per_connection;
        } else {
            for (a, b) in self.per_connection.iter_mut().zip(more.per_connection) {
                *a += b;
            }
        }
        self.latencies.extend(more.latencies);
    }

    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let at = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        Duration::from_micros(u64::from(self.latencies[at]))
    }
}

/// Keeps `connections` connections to `addr` busy for `len`, one request
/// at a time each; returns what each got.
async fn load(addr: SocketAddr, connections: usize, len: Duration) -> BoxResult<Load> {
    let mut conns = Vec::new();
    for _ in 0..connections {
        let conn = TcpStream::connect(addr).await?;
        conn.set_nodelay(true)?;
        conns.push(conn);
    }
    let end = tokio::time::Instant::now() + len;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(requests(conn, end)))
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let (answers, latencies) = task.await??;
        total.per_connection.push(answers);
        total.latencies.extend(latencies);
    }
    Ok(total)
}

/// Sends requests on `conn` one after the other until `end`; returns how
/// many were answered and their latencies (µs). A request not answered by
/// `end` (a connection the server does not serve) is not counted.
async fn requests(mut conn: TcpStream, end: tokio::time::Instant) -> io::Result<(u64, Vec<u32>)> {
    let mut answers = 0;
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    while tokio::time::Instant::now() < end {
        let sent = Instant::now();
        match tokio::time::timeout_at(end, exchange(&mut conn, &mut buf)).await {
            Ok(answer) => answer?,
            Err(_) => break,
        }
        answers += 1;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok((answers, latencies))
}

/// One request and its answer (headers, then `Content-Length` bytes).
async fn exchange(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    conn.write_all(REQUEST).await?;
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = content_length(&buf[..head]);
            if buf.len() >= head + 4 + body {
                buf.drain(..head + 4 + body);
                return Ok(());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The `Content-Length` of a response head (0 if none).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

// ===== throughput =====

/// One row: a server, its size and load, and what it did.
struct Row {
    kind: Kind,
    workers: usize,
    connections: usize,
    sample: Sample<2>,
    load: Load,
    manager_cpu: Duration,
    /// Connections each worker accepted, over the rounds (prefork only).
    split: String,
    /// Median of its rounds' ratios to the tokio raw limit's.
    to_tokio: Option<f64>,
}

fn measure_throughput(rt: &Runtime, args: &Args, rows: &mut Vec<Row>) -> BoxResult<()> {
    let rounds = if args.quick {
        Rounds::new(1, Duration::from_millis(300))
    } else {
        Rounds::new(5, Duration::from_secs(1))
    };
    let kinds = [
        Kind::RawBlocking,
        Kind::RawTokio,
        Kind::Prefork,
        Kind::PreforkFirstIdle,
        Kind::PreforkHyper,
    ];
    for workers in [2, 8] {
        for connections in [4, 64] {
            let what = format!("{workers} workers, {connections} connections");
            let wanted: Vec<Kind> = kinds
                .into_iter()
                .filter(|k| args.wants(&format!("{}, {what}", k.name())))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let mut peers = Vec::new();
            for &kind in &wanted {
                peers.push((kind.name(), rt.block_on(Server::start(kind, workers))?));
            }
            let mut loads = vec![Load::default(); peers.len()];
            let mut manager = vec![Duration::ZERO; peers.len()];
            let samples =
                side_by_side(&what, &peers, rounds, false, Server::pids, |server, len| {
                    let i = peers_index(&peers, server);
                    let before = server.manager_cpu();
                    let started = Instant::now();
                    let got = rt.block_on(load(server.addr(), connections, len))?;
                    let took = started.elapsed();
                    manager[i] += server.manager_cpu().saturating_sub(before);
                    let answers = got.per_connection.iter().sum();
                    loads[i].add(got);
                    Ok((answers, took))
                })?;
            let tokio_at = wanted.iter().position(|&k| k == Kind::RawTokio);
            let base = tokio_at.map(|i| samples[i].clone());
            for ((((kind, sample), load), manager_cpu), (_, server)) in wanted
                .iter()
                .zip(samples)
                .zip(loads)
                .zip(manager)
                .zip(&peers)
            {
                rows.push(Row {
                    split: server.accepted_split(),
                    kind: *kind,
                    workers,
                    connections,
                    to_tokio: base.as_ref().map(|b| sample.ratio_to(b)),
                    sample,
                    load,
                    manager_cpu,
                });
            }
            for (_, server) in peers {
                rt.block_on(server.stop())?;
            }
        }
    }
    Ok(())
}

/// Where `server` is in `peers` (they are compared by address).
fn peers_index(peers: &[(&str, Server)], server: &Server) -> usize {
    peers
        .iter()
        .position(|(_, s)| std::ptr::eq(s, server))
        .unwrap_or(0)
}

// ===== wake-ups =====

/// Workers woken per connection, for connections opened one at a time on
/// idle workers.
struct Wakeups {
    kind: Kind,
    workers: usize,
    connections: u64,
    /// Over the connections, the workers any of whose threads ran (had a
    /// context switch) while the connection was made, answered and closed.
    woken: u64,
}

fn measure_wakeups(rt: &Runtime, args: &Args) -> BoxResult<Vec<Wakeups>> {
    const WORKERS: usize = 8;
    let connections: u64 = if args.quick { 100 } else { 2000 };
    let mut out = Vec::new();
    for kind in [Kind::RawTokio, Kind::Prefork] {
        if !args.wants(&format!("wake-ups, {}", kind.name())) {
            continue;
        }
        eprint!(
            "measuring wake-ups, {}, {WORKERS} idle workers ...",
            kind.name()
        );
        // Heartbeats every minute: a worker's timer is not the herd.
        let server = rt.block_on(Server::start_with(kind, WORKERS, Duration::from_secs(60)))?;
        let pids = server.pids();
        let switches = || -> io::Result<Vec<u64>> {
            pids.iter()
                .map(|&pid| benches::proc::switches(pid))
                .collect()
        };
        let mut woken = 0;
        let mut previous = None;
        for _ in 0..connections {
            let before = switches()?;
            rt.block_on(one_connection(server.addr()))?;
            let after = switches()?;
            let ran: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            // The worker that served it ran most; the one that served the
            // one before may still be finishing it (its report to the
            // manager).
            let served = (0..ran.len()).max_by_key(|&i| ran[i]);
            woken += 1 + ran
                .iter()
                .enumerate()
                .filter(|&(i, &n)| n > 0 && Some(i) != served && Some(i) != previous)
                .count() as u64;
            previous = served;
        }
        eprintln!(
            " {:.3} woken per connection",
            woken as f64 / connections as f64
        );
        rt.block_on(server.stop())?;
        out.push(Wakeups {
            kind,
            workers: WORKERS,
            connections,
            woken,
        });
    }
    Ok(out)
}

/// Connects, sends one request, reads the answer, closes its side and
/// waits for the server to close its own: the worker is done with it.
async fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr).await?;
    exchange(&mut conn, &mut Vec::new()).await?;
    conn.shutdown().await?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await?;
    Ok(())
}

// ===== report =====

fn print(rows: &mut [Row], wakeups: &[Wakeups]) {
    if !rows.is_empty() {
        print_throughput(rows);
    }
    if !wakeups.is_empty() {
        print_wakeups(wakeups);
    }
}

fn print_throughput(rows: &mut [Row]) {
    println!("## Prefork HTTP/1.1 keep-alive, hello world, loopback");
    println!();
    println!(
        "Requests per second (median round, spread), against the raw tokio limit in the same run; \
         answers per connection over the rounds (least and most served connection); latency \
         percentiles; how many connections each fork-prefork worker accepted over the \
         rounds; CPU per request in the workers and in fork-prefork's manager. Load: {}.",
        benches::proc::load_average()
    );
    println!();
    let table = Table::new(&[
        ("server", Left),
        ("workers", Right),
        ("conns", Right),
        ("requests/s", Right),
        ("spread", Right),
        ("× tokio raw", Right),
        ("answers per conn, min–max", Right),
        ("conns per worker", Right),
        ("p50", Right),
        ("p99", Right),
        ("worker CPU/req", Right),
        ("manager CPU/req", Right),
    ]);
    println!("{}", table.head());
    for row in rows.iter_mut() {
        let min = row.load.per_connection.iter().min().copied().unwrap_or(0);
        let max = row.load.per_connection.iter().max().copied().unwrap_or(0);
        let p50 = row.load.percentile(0.50);
        let p99 = row.load.percentile(0.99);
        let ops = row.sample.ops.max(1) as f64;
        let worker_cpu =
            row.sample.costs.cpu[1].map_or("?".into(), |c| format!("{:.1} µs", c * 1e6 / ops));
        let manager_cpu = match row.kind {
            Kind::Prefork | Kind::PreforkFirstIdle | Kind::PreforkHyper => {
                format!("{:.0} ns", row.manager_cpu.as_secs_f64() * 1e9 / ops)
            }
            _ => "–".into(),
        };
        println!(
            "{}",
            table.row(&[
                &row.kind.name(),
                &row.workers,
                &row.connections,
                &format!("{:.1}k", row.sample.median() / 1e3),
                &spread(&row.sample),
                &row.to_tokio.map_or("–".into(), ratio),
                &format!("{min}–{max}"),
                &row.split,
                &latency(p50),
                &latency(p99),
                &worker_cpu,
                &manager_cpu,
            ])
        );
    }
    println!();
    for row in rows.iter() {
        if matches!(row.kind, Kind::Prefork | Kind::PreforkFirstIdle) && row.connections == 64 {
            let served = row.load.per_connection.iter().all(|&n| n > 0);
            let to = row.to_tokio.unwrap_or(f64::NAN);
            println!(
                "- target ≥ 0.90× the tokio raw limit at 64 connections, every connection \
                 served, {} workers, {}: {} ({}, {})",
                row.workers,
                if row.kind == Kind::Prefork {
                    "RoundRobin"
                } else {
                    "FirstIdle"
                },
                verdict(to >= 0.9 && served),
                ratio(to),
                if served {
                    "every connection served"
                } else {
                    "a connection starved"
                }
            );
        }
    }
}

/// A latency: "850 µs", "4.1 ms".
fn latency(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn print_wakeups(wakeups: &[Wakeups]) {
    println!();
    println!("## Workers woken per connection, idle workers");
    println!();
    println!(
        "Connections opened one at a time on idle workers (connect, one request, close, the \
         server's close awaited), and after each, how many workers had run at all (a context \
         switch of any of their threads): the one that served it, and any other one but the \
         one that served the connection before (it may still be finishing that one). Every \
         other worker woken found nothing to do: the herd. fork-prefork's heartbeat is set to \
         a minute here, so its timers do not count."
    );
    println!();
    let table = Table::new(&[
        ("server", Left),
        ("idle workers", Right),
        ("connections", Right),
        ("workers woken per connection", Right),
        ("spurious wake-ups per connection", Right),
    ]);
    println!("{}", table.head());
    for w in wakeups {
        let per = w.woken as f64 / w.connections as f64;
        println!(
            "{}",
            table.row(&[
                &w.kind.name(),
                &w.workers,
                &w.connections,
                &format!("{per:.3}"),
                &format!("{:.1} %", (per - 1.0).max(0.0) * 100.0),
            ])
        );
    }
    if let Some(w) = wakeups.iter().find(|w| w.kind == Kind::Prefork) {
        let spurious = w.woken as f64 / w.connections as f64 - 1.0;
        println!();
        println!(
            "- target ≤ 1 % spurious wake-ups per connection ({} idle workers): {} ({:.1} %)",
            w.workers,
            verdict(spurious <= 0.01),
            spurious.max(0.0) * 100.0
        );
    }
}

fn main() -> BoxResult<()> {
    fork_core::init();
    let args = Args::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    measure_throughput(&rt, &args, &mut rows)?;
    let wakeups = measure_wakeups(&rt, &args)?;
    drop(rt);
    print(&mut rows, &wakeups);
    Ok(())
}
