//! A guided tour of the workspace, printing what it does as it goes.
//!
//! fork-core: start-up, a template preloaded with state, workers sharing
//! that state copy-on-write, spawn rates, descriptor passing, an external
//! command and exit statuses. fork-rpc: typed calls to a worker forked from
//! the same template, with events. fork-pool: a pool working through a batch
//! of jobs (with a progress bar), growing under load and shrinking when idle,
//! and recovering from a worker killed in the middle of a job. fork-prefork:
//! an HTTP server reloaded three times under keep-alive load, no request
//! lost. Then a summary table.
//!
//! Every step asserts what it shows, so running the tour is also a test.
//!
//! Run: `cargo run --release --example tour` (a few seconds; also works
//! without `--release`, only slower).

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fork_core::{Context, Entry, InitFn, Template};
use fork_pool::{Pool, PoolEvents, Stats};
use fork_rpc::{EventSender, Mode, RpcEntry, RpcWorker, Setup, WorkerLost};
use futures::future::try_join_all;
use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tarpc::context;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ANCHOR: preload
/// Entries in the lookup table: the smallest prime factor of every number
/// below 2^22 (16 MiB of `u32`).
const TABLE_LEN: usize = 1 << 22;

/// Built once, inside the template; every worker forked from it shares it.
static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
/// How long building it took (also inherited by the workers).
static BUILD_TIME: OnceLock<Duration> = OnceLock::new();

/// An init function: runs in the template, not in this process.
fn build_table(len: usize) -> Result<(), String> {
    let start = Instant::now();
    let mut smallest = vec![0u32; len];
    for i in 2..len {
        if smallest[i] == 0 {
            for j in (i..len).step_by(i) {
                if smallest[j] == 0 {
                    smallest[j] = i as u32;
                }
            }
        }
    }
    TABLE
        .set(smallest)
        .map_err(|_| "the table was built twice")?;
    BUILD_TIME
        .set(start.elapsed())
        .map_err(|_| "the table was built twice")?;
    Ok(())
}

static BUILD_TABLE: InitFn<usize> = fork_core::init_fn!(build_table);
// ANCHOR_END: preload

// ANCHOR: factorize
/// Runs in a worker: factorizes its argument with the preloaded table and
/// reports `factors`, then `build time`, then `rss shared` (KiB) on its
/// socket, one per line.
fn factorize(ctx: Context) -> std::io::Result<()> {
    let mut n: u32 = ctx.arg(0).expect("a number");
    let table = TABLE.get().expect("the template preloaded the table");
    let mut factors = Vec::new();
    while n > 1 {
        factors.push(table[n as usize].to_string());
        n /= table[n as usize];
    }
    let built = BUILD_TIME.get().expect("the build time").as_micros();
    let (rss, shared) = memory_kib()?;
    let report = format!("{}\n{built}\n{rss} {shared}\n", factors.join(" "));
    ctx.socket().write_all(report.as_bytes())
}

static FACTORIZE: Entry = fork_core::entry!(factorize);
// ANCHOR_END: factorize

/// This process's resident memory and the part of it shared with other
/// processes, in KiB.
fn memory_kib() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let field = |name: &str| -> u64 {
        let line = text.lines().find_map(|l| l.strip_prefix(name));
        line.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("Rss:"),
        field("Shared_Clean:") + field("Shared_Dirty:"),
    ))
}

/// Does nothing: measures the cost of a fork, a start and an exit.
fn noop(_ctx: Context) {}

static NOOP: Entry = fork_core::entry!(noop);

/// Writes a line into the descriptor it was sent.
fn write_to_fd(mut ctx: Context) -> std::io::Result<()> {
    let fd = ctx.take_fds().pop().expect("a pipe");
    let line = format!(
        "hello from pid {}, through its descriptor {}\n",
        std::process::id(),
        fd.as_raw_fd()
    );
    File::from(fd).write_all(line.as_bytes())
}

static WRITE_TO_FD: Entry = fork_core::entry!(write_to_fd);

/// Exits with the code it is given.
fn exit_with(ctx: Context) -> i32 {
    ctx.arg(0).expect("an exit code")
}

static EXIT_WITH: Entry = fork_core::entry!(exit_with);

/// Waits for the parent to close the socket (or to kill it).
fn wait_for_eof(ctx: Context) -> std::io::Result<()> {
    let mut rest = Vec::new();
    ctx.socket().read_to_end(&mut rest).map(drop)
}

static WAIT_FOR_EOF: Entry = fork_core::entry!(wait_for_eof);

/// A pipe: a tokio read end for us, and a write end to send to a worker or
/// a command, in blocking mode as they expect.
fn output_pipe() -> std::io::Result<(pipe::Receiver, OwnedFd)> {
    let (writer, reader) = pipe::pipe()?;
    Ok((reader, writer.into_blocking_fd()?))
}

/// Reads a pipe to its end without blocking the runtime.
async fn read_pipe(mut reader: pipe::Receiver) -> std::io::Result<String> {
    let mut text = String::new();
    reader.read_to_string(&mut text).await?;
    Ok(text)
}

// ANCHOR: spawn_rate
/// Forks `NOOP` workers from `template` and waits for each, with `in_flight`
/// at a time, for about `budget`; returns spawns per second.
async fn spawn_rate(
    template: &Template,
    in_flight: usize,
    budget: Duration,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let template = template.clone();
        tasks.spawn(async move {
            let mut spawned = 0u32;
            while start.elapsed() < budget {
                let mut worker = template.fork().run(&NOOP).await?;
                assert!(worker.wait().await?.success());
                spawned += 1;
            }
            Ok::<_, fork_core::Error>(spawned)
        });
    }
    let mut total = 0;
    while let Some(spawned) = tasks.join_next().await {
        total += spawned??;
    }
    Ok(f64::from(total) / start.elapsed().as_secs_f64())
}
// ANCHOR_END: spawn_rate

// ANCHOR: rpc_service
/// A typed service: this process calls these methods, a worker runs them.
/// Arguments, results and events are serde types.
#[tarpc::service]
trait Primes {
    /// The prime factors of `n` (below 2^22), smallest first, looked up in
    /// the template's table. Takes at least `ms` milliseconds: a stand-in
    /// for a longer job. Sends `Began(n)`, then a `Factor` event per factor.
    async fn factor(n: u32, ms: u64) -> Vec<u32>;
    /// A job with a side effect (think: it sends an e-mail), so one not to
    /// run twice. Sends `Began(job)`, works `ms` milliseconds and returns the
    /// pid of the worker that ran it.
    async fn deliver(job: u32, ms: u64) -> u32;
}

/// What a worker tells this process while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    /// It began a job: `factor(n)` or `deliver(job)`.
    Began(u32),
    /// `factor` found a prime factor.
    Factor(u32),
}
// ANCHOR_END: rpc_service

// ANCHOR: rpc_server
/// The implementation, in the worker (tarpc clones it for every request).
#[derive(Clone)]
struct PrimesServer {
    events: EventSender<Event>,
}

impl PrimesServer {
    fn tell(&self, event: Event) {
        self.events.send(&event).expect("the parent is there");
    }
}

impl Primes for PrimesServer {
    async fn factor(self, _: context::Context, mut n: u32, ms: u64) -> Vec<u32> {
        self.tell(Event::Began(n));
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let table = TABLE.get().expect("the template preloaded the table");
        let mut factors = Vec::new();
        while n > 1 {
            let p = table[n as usize];
            self.tell(Event::Factor(p));
            factors.push(p);
            n /= p;
        }
        factors
    }

    async fn deliver(self, _: context::Context, job: u32, ms: u64) -> u32 {
        self.tell(Event::Began(job));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }
}

/// The init hook: runs in the worker right after the fork and builds the
/// service it serves.
fn serve_primes(setup: &mut Setup<Event>) -> Result<ServePrimes<PrimesServer>, String> {
    Ok(PrimesServer {
        events: setup.events(),
    }
    .serve())
}

/// The worker entry, typed with the service's requests, responses and
/// events.
static PRIMES: RpcEntry<PrimesRequest, PrimesResponse, Event> = fork_rpc::entry!(serve_primes);
// ANCHOR_END: rpc_server

type PrimesPool = Pool<PrimesRequest, PrimesResponse, Event>;

/// This process's own check, without the table.
fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Workers in a pool, ready (idle or busy); not those still starting.
fn ready_workers(s: &Stats) -> usize {
    s.idle + s.busy
}

/// `future`, or an error naming `what` after 10 s: a step that goes wrong
/// fails the tour instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .map_err(|_| format!("timed out waiting for {what}").into())
}

/// Waits until the pool's stats satisfy `condition` (never by sleeping).
async fn settle(
    pool: &PrimesPool,
    what: &str,
    condition: impl Fn(&Stats) -> bool,
) -> Result<Stats, BoxError> {
    within(what, pool.wait_until(condition)).await
}

/// The pid of the next worker that begins job `job`.
async fn began(events: &mut PoolEvents<Event>, job: u32) -> Result<u32, BoxError> {
    loop {
        let (pid, event) = events.recv().await.ok_or("the pool is gone")?;
        if event? == Event::Began(job) {
            return Ok(pid);
        }
    }
}

// ANCHOR: kill
/// Waits for a worker to begin job `job`, kills it (`SIGKILL`) in the middle
/// of it, and returns its pid.
async fn kill_when_began(events: &mut PoolEvents<Event>, job: u32) -> Result<u32, BoxError> {
    let pid = began(events, job).await?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    Ok(pid)
}
// ANCHOR_END: kill

// ANCHOR: progress
/// A pool's progress through a batch: an `indicatif` bar with the pool's
/// state beside it, drawn on a terminal and hidden when stderr is a pipe or
/// a file (as in CI logs), where only the final line is printed.
struct Progress {
    bar: ProgressBar,
    began: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("   [{bar:16}] {pos:>3}/{len} jobs  {msg}  {elapsed}")
                .expect("a valid template")
                .progress_chars("#>."),
        );
        Progress {
            bar,
            began: Instant::now(),
        }
    }

    /// How often to draw.
    fn period(&self) -> Duration {
        Duration::from_millis(25)
    }

    fn draw(&self, s: &Stats) {
        self.bar.set_position(s.completed);
        self.bar.set_message(format!(
            "workers: {} busy, {} idle  {:>3} queued",
            s.busy, s.idle, s.queued
        ));
    }

    /// Draws the final state and prints it as a line of its own.
    fn finish(&self, s: &Stats) {
        self.draw(s);
        self.bar.finish_and_clear();
        println!(
            "   {}/{} jobs  workers: {} busy, {} idle  {} queued  {} ms",
            s.completed,
            self.bar.length().unwrap_or(0),
            s.busy,
            s.idle,
            s.queued,
            self.began.elapsed().as_millis()
        );
    }
}
// ANCHOR_END: progress

/// The processes that `pid` forked and has not reaped yet: for a template,
/// its workers (Linux: `/proc/PID/task/PID/children`).
fn children(pid: u32) -> std::io::Result<Vec<u32>> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(list
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Prints a step's title and its explanation.
fn step(title: &str, text: &str) {
    println!("\n== {title}\n");
    for line in text.lines() {
        println!("   {}", line.trim());
    }
    println!();
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ===== act 11: a prefork HTTP server =====

/// A prefork worker: hyper's HTTP/1.1 answering its generation, with
/// `Connection: close` while it drains.
async fn hello(ctx: fork_prefork::Context) -> std::io::Result<()> {
    use hyper::header::{CONNECTION, HeaderValue};
    ctx.serve(|conn, link| async move {
        let service =
            hyper::service::service_fn(move |_: hyper::Request<hyper::body::Incoming>| {
                let link = link.clone();
                async move {
                    let body = http_body_util::Full::new(hyper::body::Bytes::from(
                        link.generation().to_string(),
                    ));
                    let mut response = hyper::Response::new(body);
                    if link.is_draining() {
                        response
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
            .await;
    })
    .await
}
static HELLO: fork_prefork::PreforkEntry = fork_prefork::entry!(hello);

/// A keep-alive client: requests until `stop`, on one connection until an
/// answer says `Connection: close`, then on a new one. Returns how many
/// were answered and the generations that answered; fails on any error.
async fn keep_alive_client(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(u64, BTreeSet<u64>), BoxError> {
    use http_body_util::BodyExt;
    let mut served = 0;
    let mut generations = BTreeSet::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        loop {
            let request = hyper::Request::get("/")
                .header(hyper::header::HOST, "localhost")
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let close = response
                .headers()
                .get(hyper::header::CONNECTION)
                .is_some_and(|v| v == "close");
            let body = response.into_body().collect().await?.to_bytes();
            generations.insert(std::str::from_utf8(&body)?.parse()?);
            served += 1;
            if close || stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
    }
    Ok((served, generations))
}

// ANCHOR: main
fn main() -> Result<(), BoxError> {
    // First thing in main, before any thread: in a template this call never
    // returns. It also forks the early template, a copy of this process
    // while it is still small.
    fork_core::Init::new().early_template(true).init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(tour())
}
// ANCHOR_END: main

async fn tour() -> Result<(), BoxError> {
    let tour_start = Instant::now();
    let mut summary: Vec<(String, String)> = Vec::new();
    println!("fork tour: this process is pid {}", std::process::id());

    // ---------------------------------------------------------------------
    step(
        "1. A template, preloaded",
        "Template::new() starts a small, single-threaded process from this
         program's own binary (the threaded parent never forks). An init
         function runs inside it and builds a 16 MiB lookup table.",
    );
    // ANCHOR: template
    let template = Template::new()?;
    let started = Instant::now();
    template.init(&BUILD_TABLE, &TABLE_LEN);
    template.ready().await?; // the init function has run, in the template
    let ready_after = started.elapsed();
    // ANCHOR_END: template
    println!(
        "   template pid {}: table of {TABLE_LEN} entries ready after {ready_after:.0?}",
        template.id()
    );
    assert!(TABLE.get().is_none(), "this process never built the table");
    println!("   (this process has no table: TABLE.get() is None here)");

    // ---------------------------------------------------------------------
    step(
        "2. Workers share it",
        "Each worker is forked from the template with the table already in
         memory, shared copy-on-write: no worker builds or copies it.",
    );
    // ANCHOR: workers
    let numbers: [u32; 4] = [4_194_303, 4_120_819, 1_234_567, 999_983];
    let mut fork_times = Vec::new();
    let mut workers = Vec::new();
    for n in numbers {
        let started = Instant::now();
        workers.push(template.fork().arg(&n).run(&FACTORIZE).await?);
        fork_times.push(started.elapsed());
    }
    let mut reports = Vec::new();
    for worker in &mut workers {
        let mut report = String::new();
        let mut stream = worker.take_stream().expect("a socket");
        stream.read_to_string(&mut report).await?;
        reports.push(report);
    }
    for worker in &mut workers {
        assert!(worker.wait().await?.success());
    }
    // ANCHOR_END: workers
    let table_kib = (TABLE_LEN * 4 / 1024) as u64;
    let mut min_shared = u64::MAX;
    let mut build_us = 0;
    for ((n, worker), report) in numbers.iter().zip(&workers).zip(&reports) {
        let lines: Vec<&str> = report.lines().collect();
        let [factors, built, memory] = lines[..] else {
            panic!("a malformed report: {report:?}");
        };
        let factors: Vec<u32> = factors.split(' ').map(|f| f.parse().unwrap()).collect();
        assert_eq!(factors.iter().product::<u32>(), *n);
        let (rss, shared) = memory.split_once(' ').expect("rss and shared");
        let (rss, shared): (u64, u64) = (rss.parse()?, shared.parse()?);
        build_us = built.parse()?;
        min_shared = min_shared.min(shared);
        let factors: Vec<String> = factors.iter().map(u32::to_string).collect();
        println!(
            "   worker {}: {n} = {:<18} rss {}, {} shared",
            worker.id(),
            factors.join(" x "),
            mib(rss),
            mib(shared)
        );
    }
    // The table's pages are mapped in the template and in the worker.
    assert!(
        min_shared >= table_kib * 9 / 10,
        "the table should be shared: {min_shared} KiB shared, table {table_kib} KiB"
    );
    let average_fork = fork_times.iter().sum::<Duration>() / fork_times.len() as u32;
    let build = Duration::from_micros(build_us);
    println!(
        "   the template built the table once in {build:.0?}; a worker started in {average_fork:.0?} on average"
    );
    summary.push((
        "preloaded state".into(),
        format!("{} table, built once in {build:.0?}", mib(table_kib)),
    ));
    summary.push((
        "workers using it".into(),
        format!(
            "{} forked, {average_fork:.0?} each, >= {} shared",
            workers.len(),
            mib(min_shared)
        ),
    ));
    drop(workers);

    // ---------------------------------------------------------------------
    step(
        "3. Spawn rate",
        "Fork a worker that exits at once and wait for it, again and again:
         one at a time, then 8 at a time. The early template is the copy of
         this process forked by fork_core::Init before the runtime started.",
    );
    // ANCHOR: rates
    let budget = Duration::from_millis(400);
    let plain = Template::new()?;
    plain.ready().await?; // started: do not time its exec
    let early = Template::early()?;
    for (name, template) in [
        ("exec'd template", &plain),
        ("exec'd template + 16 MiB table", &template),
        ("early template", &early),
    ] {
        let sequential = spawn_rate(template, 1, budget).await?;
        let parallel = spawn_rate(template, 8, budget).await?;
        println!(
            "   {name:<31} {sequential:>6.0} spawns/s one at a time, {parallel:>6.0} with 8 in flight"
        );
        assert!(sequential > 0.0 && parallel > 0.0);
        summary.push((
            format!("spawn rate, {name}"),
            format!("{sequential:>5.0}/s one at a time, {parallel:>5.0}/s with 8 in flight"),
        ));
    }
    // ANCHOR_END: rates
    drop(plain);
    println!(
        "\n   Forking copies the template's page tables: the more memory a template\n   \
         maps, the slower it forks. Preload what the workers share, not more."
    );

    // ---------------------------------------------------------------------
    step(
        "4. Passing a descriptor",
        "Fork::fd sends a duplicate of any descriptor to one worker: here the
         write end of a pipe this process reads.",
    );
    // ANCHOR: pass_fd
    let (reader, writer) = output_pipe()?;
    let mut worker = template.fork().fd(&writer).run(&WRITE_TO_FD).await?;
    drop(writer); // the worker holds the only write end now
    let text = read_pipe(reader).await?; // to EOF: when the worker exits
    assert!(worker.wait().await?.success());
    // ANCHOR_END: pass_fd
    print!("   read from the pipe: {text}");
    assert!(text.starts_with(&format!("hello from pid {}", worker.id())));
    summary.push((
        "descriptor passing".into(),
        "a pipe, written by a worker".into(),
    ));

    // ---------------------------------------------------------------------
    step(
        "5. An external command",
        "Template::command forks from a template and execs the program there,
         with its stdout sent to a pipe of ours. Template::shared() is the
         program-wide template: here, the early one.",
    );
    // ANCHOR: command
    let (reader, writer) = output_pipe()?;
    let mut uname = Template::shared()?
        .command("uname")
        .arg("-sr")
        .stdout(&writer)
        .spawn()
        .await?;
    drop(writer);
    let output = read_pipe(reader).await?;
    let status = uname.wait().await?;
    // ANCHOR_END: command
    println!("   `uname -sr` printed {:?}, {status}", output.trim_end());
    assert!(status.success());
    assert!(output.starts_with("Linux"));
    summary.push((
        "external command".into(),
        format!("`uname -sr`: {}", output.trim_end()),
    ));

    // ---------------------------------------------------------------------
    step(
        "6. Exit statuses",
        "The template reaps its children and reports how each ended: an exit
         code, or the signal that killed it.",
    );
    // ANCHOR: statuses
    let mut exits = template.fork().arg(&7).run(&EXIT_WITH).await?;
    let exited = exits.wait().await?;
    let mut waits = template.fork().run(&WAIT_FOR_EOF).await?;
    waits.kill().await?; // SIGKILL, through the template
    let killed = waits.wait().await?;
    // ANCHOR_END: statuses
    println!("   worker returning 7: {exited}");
    println!("   worker killed:      {killed}");
    assert_eq!(exited.code(), Some(7));
    assert_eq!(killed.signal(), Some(9));
    summary.push(("exit statuses".into(), format!("{exited}; {killed}")));

    // ---------------------------------------------------------------------
    step(
        "7. Typed calls to a worker",
        "fork-rpc serves a #[tarpc::service] trait in a worker forked from the
         same template (so it answers from the preloaded table), and this
         process calls it through the client tarpc generated. A sync worker
         runs one call at a time, in order; events it sends while it works
         arrive in order with its replies.",
    );
    // ANCHOR: rpc_spawn
    let config = fork_rpc::Config::default().mode(Mode::Sync); // (the default)
    let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &PRIMES)
        .config(config)
        .spawn()
        .await?;
    let primes = PrimesClient::from(client); // the client tarpc generated
    let mut events = worker.events().expect("taken once");
    let factors = primes.factor(context::current(), 4_194_303, 0).await?;
    // The events sent before a reply are here by the time the reply is.
    let mut told = Vec::new();
    while let Some(event) = events.try_recv() {
        told.push(event?);
    }
    // ANCHOR_END: rpc_spawn
    println!("   worker {}: factor(4194303) = {factors:?}", worker.id());
    println!("   its events, all before the reply: {told:?}");
    assert_eq!(factors, [3, 23, 89, 683]);
    let mut expected = vec![Event::Began(4_194_303)];
    expected.extend(factors.iter().map(|&p| Event::Factor(p)));
    assert_eq!(told, expected);

    // ANCHOR: rpc_sync
    // Two calls of 50 ms sent at once: the sync worker runs one after the
    // other, the second waiting in the socket meanwhile.
    let started = Instant::now();
    let (first, second) = tokio::join!(
        primes.deliver(context::current(), 1, 50),
        primes.deliver(context::current(), 2, 50),
    );
    let both = started.elapsed();
    assert_eq!((first?, second?), (worker.id(), worker.id()));
    assert!(both >= Duration::from_millis(100), "{both:?}");
    // ANCHOR_END: rpc_sync
    println!("   2 calls of 50 ms sent at once, answered one after the other in {both:.0?}");

    // ANCHOR: rpc_round_trip
    let calls = 500;
    let started = Instant::now();
    for _ in 0..calls {
        assert_eq!(
            primes.factor(context::current(), 999_983, 0).await?,
            [999_983]
        );
    }
    let round_trip = started.elapsed() / calls;
    // ANCHOR_END: rpc_round_trip
    let mut more = 0;
    while let Some(event) = events.try_recv() {
        event?;
        more += 1;
    }
    // Began for the two deliveries, Began and Factor for each factor call.
    assert_eq!(more, 2 + 2 * calls);
    println!("   {calls} calls one after the other: {round_trip:.0?} a round trip");

    // ANCHOR: rpc_close
    drop(primes); // the last client: the worker finishes and exits 0
    let status = worker.wait().await?;
    assert!(status.success());
    // ANCHOR_END: rpc_close
    println!("   client dropped: worker {} exited, {status}", worker.id());
    summary.push((
        "typed RPC, sync worker".into(),
        format!("{round_trip:.0?} a round trip; 2 calls of 50 ms in {both:.0?}"),
    ));

    // ---------------------------------------------------------------------
    step(
        "8. A pool works through a batch",
        "fork-pool puts many such workers behind one client, the same one
         tarpc generated. This pool keeps no worker while it has no job
         (idle = 0), runs one job per worker at a time (load = 1): the rest
         wait in its queue; while they wait, it starts one more worker every
         20 ms (start), up to 4 (max). 200 jobs of 10 ms each, sent at once;
         the bar shows the pool's own stats as it works.",
    );
    // ANCHOR: pool
    let (start, stop) = (Duration::from_millis(20), Duration::from_millis(300));
    let pool = Pool::builder(template.clone(), &PRIMES)
        .max(4) // at most 4 workers
        .idle(0) // none kept when there is no work (the default)
        .load(1) // one job per worker at a time: the others wait in the queue
        .start(start) // while jobs wait, one more worker every 20 ms
        .stop(stop) // a worker idle for 300 ms is stopped
        // Factoring has no side effect: if its worker dies, run it again.
        .idempotent(|request| matches!(request, PrimesRequest::Factor { .. }))
        .build();
    let primes = PrimesClient::from(pool.clone()); // tarpc's client, over the pool
    // ANCHOR_END: pool

    // ANCHOR: batch
    const JOBS: u32 = 200;
    let job = Duration::from_millis(10);
    let numbers: Vec<u32> = (0..JOBS).map(|i| 4_194_303 - i).collect();
    let calls = numbers
        .iter()
        .map(|&n| primes.factor(context::current(), n, job.as_millis() as u64));
    let mut batch = std::pin::pin!(try_join_all(calls));
    let progress = Progress::new(JOBS.into());
    let mut redraw = tokio::time::interval(progress.period());
    // (when, how many workers): the pool's growth, seen with wait_until.
    let mut growth = vec![(Duration::ZERO, ready_workers(&pool.stats()))];
    let answers = loop {
        let known = growth.last().map_or(0, |&(_, n)| n);
        tokio::select! {
            answers = &mut batch => break answers?,
            s = pool.wait_until(move |s| ready_workers(s) > known) => {
                growth.push((progress.began.elapsed(), ready_workers(&s)));
            }
            _ = redraw.tick() => progress.draw(&pool.stats()),
        }
    };
    let took = progress.began.elapsed();
    progress.finish(&pool.stats());
    // ANCHOR_END: batch
    for (&n, factors) in numbers.iter().zip(&answers) {
        assert_eq!(factors.iter().product::<u32>(), n);
        assert!(factors.iter().all(|&p| is_prime(p)), "{n}: {factors:?}");
    }
    let s = pool.stats();
    assert_eq!((s.completed, s.spawned), (u64::from(JOBS), 4));
    // At most 4 jobs at once, each at least 10 ms.
    assert!(took >= job * JOBS / 4, "{took:?}");
    let arrivals: Vec<String> = growth[1..]
        .iter()
        .map(|(at, n)| format!("{n} at {} ms", at.as_millis()))
        .collect();
    println!(
        "   all {JOBS} answers checked; workers: {}",
        arrivals.join(", ")
    );
    // ANCHOR: growth
    // From none up to max: the first worker at once, then one more per
    // `start` at most.
    assert_eq!(growth.first().map(|g| g.1), Some(0));
    assert_eq!(growth.last().map(|g| g.1), Some(4));
    for &(at, n) in &growth[1..] {
        assert!(at >= start * (n as u32 - 1), "worker {n} at {at:?}");
    }
    // ANCHOR_END: growth
    summary.push((
        "pool, batch".into(),
        format!("{JOBS} jobs of {job:.0?} in {took:.0?}, on 0 to 4 workers"),
    ));

    // ---------------------------------------------------------------------
    step(
        "9. The pool shrinks when idle",
        "A worker idle for 300 ms (stop) is stopped, down to idle = 0 workers
         here (AnyEvent::Fork::Pool would keep them for ever). The tour waits
         for that with pool.wait_until, not with a sleep.",
    );
    // ANCHOR: shrink
    let idle_from = Instant::now();
    let s = settle(&pool, "no worker", |s| {
        ready_workers(s) + s.starting == 0 && s.recycled == 4
    })
    .await?;
    let shrunk_after = idle_from.elapsed();
    assert_eq!(s.spawned, 4);
    assert!(pool.worker_pids().is_empty());
    // ANCHOR_END: shrink
    // Each worker turned idle when its last job ended: less than a job
    // before the batch did, give or take scheduling.
    assert!(shrunk_after >= stop / 2, "{shrunk_after:?}");
    println!("   {shrunk_after:.0?} after the batch: all 4 workers stopped, none left");
    summary.push((
        "pool, shrinking".into(),
        format!("4 workers to 0, {shrunk_after:.0?} after the batch"),
    ));

    // ---------------------------------------------------------------------
    step(
        "10. A worker killed in the middle of a job",
        "Workers announce each job with an event; the tour SIGKILLs the worker
         that began it. A plain job then fails with fork_rpc::WorkerLost
         (saying which worker, and how it ended); a job marked idempotent runs
         again on another worker, and its caller only sees the answer. The
         pool starts new workers as jobs need them, and serves on.",
    );
    // ANCHOR: crash
    let mut events = pool.events().expect("taken once");
    let started = Instant::now();
    let (result, victim) = tokio::join!(
        primes.deliver(context::current(), 1, 10_000), // not idempotent
        within("job 1 to begin", kill_when_began(&mut events, 1)),
    );
    let victim = victim??;
    let err = result.unwrap_err();
    let lost = WorkerLost::find(&err).expect("its worker died");
    assert_eq!(lost.pid(), victim);
    assert_eq!(lost.status().and_then(|s| s.signal()), Some(9));
    assert!(started.elapsed() < Duration::from_secs(5)); // not the 10 s job
    // ANCHOR_END: crash
    println!("   deliver(1): {lost}");

    // ANCHOR: retry
    let n = 999_983; // a prime, so the answer is [n]
    let watch = async {
        let victim = kill_when_began(&mut events, n).await?;
        let rerun = began(&mut events, n).await?; // the pool runs it again
        Ok::<_, BoxError>((victim, rerun))
    };
    let (answer, watched) = tokio::join!(
        primes.factor(context::current(), n, 300), // idempotent
        within("factor to run again", watch),
    );
    let (second_victim, rerun) = watched??;
    assert_eq!(answer?, [n]);
    assert_ne!(rerun, second_victim);
    // ANCHOR_END: retry
    println!(
        "   factor({n}): worker {second_victim} killed under it, worker {rerun} ran it again: [{n}]"
    );

    // ANCHOR: recovered
    let pids = try_join_all((10..18).map(|job| primes.deliver(context::current(), job, 0))).await?;
    assert!(
        pids.iter()
            .all(|pid| ![victim, second_victim].contains(pid))
    );
    let s = pool.stats();
    assert_eq!(s.crashed, 2);
    assert_eq!(s.completed, u64::from(JOBS) + 1 + 8); // the deliver(1) failed
    // ANCHOR_END: recovered
    let used: BTreeSet<u32> = pids.into_iter().collect();
    println!("   8 more jobs, all answered, by workers {used:?}");
    println!(
        "   stats: {} workers started, {} stopped when idle, {} crashed, {} jobs completed",
        s.spawned, s.recycled, s.crashed, s.completed
    );

    // Let a worker still starting (if a job asked for one) join first: one
    // that is still starting when the shutdown ends is killed but may not
    // be reaped yet, and the check below would see it.
    settle(&pool, "no worker starting", |s| s.starting == 0).await?;
    // ANCHOR: pool_shutdown
    pool.shutdown().await; // finishes the jobs, closes the workers, waits for them
    assert_eq!(children(template.id())?, Vec::<u32>::new());
    // ANCHOR_END: pool_shutdown
    println!("   shut down: the template has no worker left");
    summary.push((
        "pool, worker killed".into(),
        format!("plain job: worker {victim} lost; idempotent job: ran again on {rerun}"),
    ));

    // ---------------------------------------------------------------------
    step(
        "11. A prefork server reloaded under load",
        "fork-prefork: workers forked from the template accept on one shared
         listener and answer HTTP. Four keep-alive clients send requests
         while the server reloads three times (a new generation first, the
         old one drained): no request fails, and answers come from every
         generation.",
    );
    // ANCHOR: prefork
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = fork_prefork::Prefork::builder(template.clone(), &HELLO)
        .listener(listener)
        .workers(2)
        .start()?;
    server.wait_until(|s| s.idle == 2).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_alive_client(addr, stop.clone())))
        .collect();
    for _ in 0..3 {
        server.reload_with(Template::new()?).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut served = 0;
    let mut generations = BTreeSet::new();
    for client in clients {
        let (n, seen) = client.await??; // an error: a request failed
        served += n;
        generations.extend(seen);
    }
    assert_eq!(generations, BTreeSet::from([1, 2, 3, 4]));
    server.stop().await?;
    // ANCHOR_END: prefork
    println!(
        "   {served} requests answered across 3 reloads, none failed; generations {generations:?}"
    );
    summary.push((
        "prefork, 3 reloads".into(),
        format!("{served} requests, 0 failed"),
    ));

    // ---------------------------------------------------------------------
    let total = tour_start.elapsed();
    println!("\n== Summary ({total:.1?} in all)\n");
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (what, result) in &summary {
        println!("   {what:<width$}  {result}");
    }
    println!(
        "\nEvery worker was waited for and the pool shut down; the templates exit\nwhen this process does."
    );
    Ok(())
}
