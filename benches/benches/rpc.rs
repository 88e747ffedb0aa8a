//! RPC benchmark: calls per second through fork-rpc, compared with plain
//! tarpc and with the raw limit (a hand-written length-prefixed ping-pong)
//! measured in the same run, on a multi-thread and on a `current_thread`
//! parent runtime; and the memory of an idle RPC worker.
//!
//! Run: `cargo bench -p benches --bench rpc` (under a minute), or
//! `cargo bench -p benches --bench rpc -- --quick` (a few seconds; for CI).
//! `--only TEXT` measures only the rows whose name contains `TEXT` (to
//! profile one of them with `perf` or `strace`; the worker's pid is
//! printed). Other arguments (`--bench`, which cargo passes) are ignored.
//!
//! Every peer is a worker forked from one template, serving a trivial echo
//! call on its socket:
//!
//! - **raw**: the parent writes `u32` length + 8-byte payload frames on a
//!   tokio `UnixStream`, the worker echoes them with blocking std I/O.
//!   "N in flight" writes N frames, then reads N replies, and repeats.
//! - **tarpc**: plain tarpc (`serde_transport`, bincode,
//!   `LengthDelimitedCodec`), the worker running tarpc's own serving recipe
//!   on a `current_thread` runtime.
//! - **fork-rpc**: the same service through [`RpcWorker::builder`], sync mode
//!   and async mode (`Config::default().concurrent(256)`).
//!
//! RPC calls are made by one task keeping N calls in flight (a new call as
//! soon as one returns). The machines this runs on are small, shared and
//! noisy: every measurement is split into rounds, and the rounds of the four
//! peers take turns, so a change in load hits them alike. The table shows
//! the median round, the spread, ratios to raw and to plain tarpc at the
//! same depth on the same runtime, and per call the CPU time and the context
//! switches of the parent (all its threads) and of the worker.
//!
//! The harness (options, rounds taking turns, samples, CPU accounting,
//! calls in flight, tables) is the `benches` library's, shared with the
//! spawn and pool benches.

#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::proc::Mem;
use benches::{
    Args, BoxResult, Caller, Rounds, Sample, Table, calls, ratio, spread, sum, terms, verdict,
};
use fork_core::{Context, Entry, Template, Worker};
use fork_rpc::{Config, RpcEntry, RpcWorker, Setup};
use futures::StreamExt;
use tarpc::client::RpcError;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

// ===== the service =====

// ANCHOR: service
/// The benchmarked call: as trivial as a call can be.
#[tarpc::service]
trait Echo {
    async fn echo(x: u64) -> u64;
}

#[derive(Debug, Clone, Copy)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, x: u64) -> u64 {
        x
    }
}

/// fork-rpc's init hook: builds the service in the worker.
fn echo_service(_: &mut Setup<()>) -> Result<ServeEcho<EchoServer>, String> {
    Ok(EchoServer.serve())
}
static FORK_RPC_ECHO: RpcEntry<EchoRequest, EchoResponse> =
    fork_rpc::entry!(echo_service, name = "benches::rpc::fork_rpc_echo");
// ANCHOR_END: service

// ===== the raw limit =====

/// Bytes of payload in a raw frame (a `u64`, like the RPC argument).
const PAYLOAD: usize = 8;
/// A raw frame: `u32` length (little-endian) + payload.
const FRAME: usize = 4 + PAYLOAD;

// ANCHOR: raw_worker
/// The raw worker: reads what is there, echoes every complete frame in one
/// write, until EOF. Blocking std I/O, no runtime.
fn raw_echo(ctx: Context) -> io::Result<()> {
    let mut socket = ctx.socket();
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    loop {
        let n = socket.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut end = 0;
        while have - end >= 4 {
            let len = u32::from_le_bytes(buf[end..end + 4].try_into().expect("4 bytes"));
            let len = len as usize;
            if len > buf.len() - 4 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
            }
            if have - end < 4 + len {
                break;
            }
            end += 4 + len;
        }
        socket.write_all(&buf[..end])?;
        buf.copy_within(end..have, 0);
        have -= end;
    }
}
static RAW_ECHO: Entry = fork_core::entry!(raw_echo, name = "benches::rpc::raw_echo");
// ANCHOR_END: raw_worker

// ANCHOR: raw_client
/// The parent's end of the raw ping-pong.
#[derive(Debug)]
struct RawConn {
    stream: UnixStream,
    out: Vec<u8>,
    back: Vec<u8>,
    next: u64,
}

impl RawConn {
    /// Writes `n` frames at once, then reads the `n` replies and checks them.
    async fn batch(&mut self, n: usize) -> io::Result<()> {
        self.out.clear();
        for _ in 0..n {
            self.out.extend_from_slice(&(PAYLOAD as u32).to_le_bytes());
            self.out.extend_from_slice(&self.next.to_le_bytes());
            self.next += 1;
        }
        self.stream.write_all(&self.out).await?;
        self.back.resize(n * FRAME, 0);
        self.stream.read_exact(&mut self.back).await?;
        if self.back != self.out {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad echo"));
        }
        Ok(())
    }
}
// ANCHOR_END: raw_client

/// Runs raw batches of `depth` frames until `len` has passed.
async fn raw_round(
    conn: Arc<tokio::sync::Mutex<RawConn>>,
    depth: usize,
    len: Duration,
) -> BoxResult<(u64, Duration)> {
    let mut conn = conn.lock().await;
    let start = Instant::now();
    let deadline = start + len;
    let mut done = 0;
    while Instant::now() < deadline {
        conn.batch(depth).await?;
        done += depth as u64;
    }
    Ok((done, start.elapsed()))
}

// ===== plain tarpc =====

// ANCHOR: tarpc_worker
/// The plain tarpc worker: tarpc's own serving recipe (one task per
/// request) on a `current_thread` runtime, over the worker's socket.
fn tarpc_echo(ctx: Context) -> BoxResult<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stream = ctx.into_tokio_socket()?;
        let framed = Framed::new(stream, LengthDelimitedCodec::new());
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        BaseChannel::with_defaults(transport)
            .execute(EchoServer.serve())
            .for_each(|response| {
                tokio::spawn(response);
                async {}
            })
            .await;
        Ok(())
    })
}
static TARPC_ECHO: Entry = fork_core::entry!(tarpc_echo, name = "benches::rpc::tarpc_echo");

/// The parent's plain tarpc client over the worker's socket.
fn tarpc_client(stream: UnixStream) -> EchoClient {
    let framed = Framed::new(stream, LengthDelimitedCodec::new());
    let transport = tarpc::serde_transport::new(framed, Bincode::default());
    EchoClient::new(tarpc::client::Config::default(), transport).spawn()
}
// ANCHOR_END: tarpc_worker

// ===== calls =====

// The calls are made by `benches::calls`, through either client.

impl Caller for EchoClient {
    type Work = ();
    type Error = RpcError;

    fn call(&self, (): (), x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        self.echo(tarpc::context::current(), x)
    }
}

type ForkRpcClient = EchoClient<fork_rpc::Client<EchoRequest, EchoResponse>>;

impl Caller for ForkRpcClient {
    type Work = ();
    type Error = RpcError;

    fn call(&self, (): (), x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        self.echo(tarpc::context::current(), x)
    }
}

// ===== the peers =====

/// A worker and the parent's end of its connection.
#[derive(Debug)]
enum Peer {
    Raw(Arc<tokio::sync::Mutex<RawConn>>, Worker),
    Tarpc(Arc<EchoClient>, Worker),
    ForkRpc(Arc<ForkRpcClient>, RpcWorker),
}

impl Peer {
    fn pid(&self) -> u32 {
        match self {
            Peer::Raw(_, w) | Peer::Tarpc(_, w) => w.id(),
            Peer::ForkRpc(_, w) => w.id(),
        }
    }

    /// One round of calls, `depth` in flight, in a task on `rt`.
    fn round(&self, rt: &Runtime, depth: usize, len: Duration) -> BoxResult<(u64, Duration)> {
        let task = match self {
            Peer::Raw(conn, _) => rt.spawn(raw_round(conn.clone(), depth, len)),
            Peer::Tarpc(client, _) => rt.spawn(calls(client.clone(), (), depth, len)),
            Peer::ForkRpc(client, _) => rt.spawn(calls(client.clone(), (), depth, len)),
        };
        rt.block_on(task)?
    }

    /// Closes the connection and waits for the worker to exit.
    async fn close(self) -> BoxResult<()> {
        let status = match self {
            Peer::Raw(conn, mut worker) => {
                drop(conn);
                worker.wait().await?
            }
            Peer::Tarpc(client, mut worker) => {
                drop(client);
                worker.wait().await?
            }
            Peer::ForkRpc(client, mut worker) => {
                drop(client);
                worker.wait().await?
            }
        };
        if !status.success() {
            return Err(format!("a worker exited with {status}").into());
        }
        Ok(())
    }
}

// ANCHOR: spawn
async fn raw_peer(template: &Template) -> BoxResult<Peer> {
    let mut worker = template.fork().run(&RAW_ECHO).await?;
    let stream = worker.take_stream().expect("a worker socket");
    let conn = RawConn {
        stream,
        out: Vec::new(),
        back: Vec::new(),
        next: 0,
    };
    Ok(Peer::Raw(Arc::new(tokio::sync::Mutex::new(conn)), worker))
}

async fn tarpc_peer(template: &Template) -> BoxResult<Peer> {
    let mut worker = template.fork().run(&TARPC_ECHO).await?;
    let client = tarpc_client(worker.take_stream().expect("a worker socket"));
    Ok(Peer::Tarpc(Arc::new(client), worker))
}

async fn fork_rpc_peer(template: &Template, config: &Config) -> BoxResult<Peer> {
    let (client, worker) = RpcWorker::builder(&mut template.fork(), &FORK_RPC_ECHO)
        .config(config.clone())
        .spawn()
        .await?;
    Ok(Peer::ForkRpc(Arc::new(EchoClient::from(client)), worker))
}
// ANCHOR_END: spawn

// ===== options =====

#[derive(Debug, Clone)]
struct Opts {
    /// `--quick` and `--only TEXT`.
    args: Args,
    /// Rounds per measurement, per peer.
    rounds: Rounds,
}

impl Opts {
    fn from_args() -> Opts {
        let args = Args::from_env();
        let rounds = if args.quick {
            Rounds::new(1, Duration::from_millis(100))
        } else {
            Rounds::new(15, Duration::from_millis(150))
        };
        Opts { args, rounds }
    }
}

// ===== memory =====

// ANCHOR: memory
/// A fresh worker's memory after its first call (and, for the raw worker,
/// its first round trip), then it is closed.
async fn idle_mem(peer: Peer) -> BoxResult<Mem> {
    match &peer {
        Peer::Raw(conn, _) => conn.lock().await.batch(1).await?,
        Peer::Tarpc(client, _) => {
            client.call((), 1).await?;
        }
        Peer::ForkRpc(client, _) => {
            client.call((), 1).await?;
        }
    }
    let mem = Mem::of(peer.pid())?;
    peer.close().await?;
    Ok(mem)
}
// ANCHOR_END: memory

// ===== report =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Tarpc,
    ForkRpcSync,
    ForkRpcAsync,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Raw,
        Kind::Tarpc,
        Kind::ForkRpcSync,
        Kind::ForkRpcAsync,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw ping-pong",
            Kind::Tarpc => "plain tarpc",
            Kind::ForkRpcSync => "fork-rpc sync",
            Kind::ForkRpcAsync => "fork-rpc async",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug)]
struct Row {
    kind: Kind,
    flavour: &'static str,
    depth: usize,
    sample: Sample<2>,
}

impl Row {
    fn what(&self) -> String {
        row_name(self.kind, self.flavour, self.depth)
    }
}

fn row_name(kind: Kind, flavour: &str, depth: usize) -> String {
    format!("{}, {}, {flavour}", kind.name(), depth_name(depth))
}

fn depth_name(depth: usize) -> String {
    if depth == 1 {
        "serial".to_owned()
    } else {
        format!("{depth} in flight")
    }
}

/// Raw serial rate a serial call must reach, as a share.
const SERIAL_TARGET: f64 = 0.8;
/// Pipelined calls/s fork-rpc must reach: 2× AnyEvent::Fork::RPC's 230k.
const PIPELINED_TARGET: f64 = 460_000.0;
/// USS of an idle RPC worker, KiB.
const MEM_TARGET: u64 = 1024;

#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn rate(&self, kind: Kind, flavour: &str, depth: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.kind == kind && r.flavour == flavour && r.depth == depth)
            .map(|r| r.sample.median())
    }

    /// The target of a row, and whether it was met.
    fn target(&self, row: &Row) -> Option<(String, bool)> {
        let rate = row.sample.median();
        match (row.kind, row.depth) {
            (Kind::ForkRpcSync | Kind::ForkRpcAsync, 1) => {
                let raw = self.rate(Kind::Raw, row.flavour, 1)?;
                Some((
                    format!("≥ {SERIAL_TARGET}× raw serial"),
                    rate >= SERIAL_TARGET * raw,
                ))
            }
            (Kind::ForkRpcSync | Kind::ForkRpcAsync, _) => Some((
                format!("≥ {:.0}k/s", PIPELINED_TARGET / 1000.0),
                rate >= PIPELINED_TARGET,
            )),
            _ => None,
        }
    }

    fn print(&self) {
        let table = Table::new(&[
            ("measurement", Left),
            ("calls/s (median)", Right),
            ("µs/call", Right),
            ("× raw", Right),
            ("× tarpc", Right),
            ("spread (min–max calls/s)", Right),
            ("calls", Right),
            ("CPU µs/call: parent + worker", Right),
            ("switches/call: parent + worker", Right),
            ("target", Left),
        ]);
        println!();
        println!("{}", table.head());
        for row in &self.rows {
            let rate = row.sample.median();
            let vs = |kind| {
                self.rate(kind, row.flavour, row.depth)
                    .filter(|_| row.kind != kind)
                    .map_or_else(String::new, |r| ratio(rate / r))
            };
            let target = self
                .target(row)
                .map_or_else(String::new, |(t, ok)| format!("{t}: {}", verdict(ok)));
            let cells: [&dyn fmt::Display; 10] = [
                &row.what(),
                &format!("{rate:.0}"),
                &format!("{:.2}", 1e6 / rate),
                &vs(Kind::Raw),
                &vs(Kind::Tarpc),
                &spread(&row.sample),
                &row.sample.ops,
                &sum(&row.sample.cpu_per_op(), 2),
                &terms(&row.sample.switches_per_op(), 2),
                &target,
            ];
            println!("{}", table.row(&cells));
        }
    }
}

// ===== main =====

/// Forks a peer of every wanted kind from one template, measures them
/// at every depth, then closes them.
fn run_all(
    rt: &Runtime,
    opts: &Opts,
    flavour: &'static str,
    depths: &[usize],
    report: &mut Report,
) -> BoxResult<()> {
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|&kind| {
            depths
                .iter()
                .any(|&d| opts.args.wants(&row_name(kind, flavour, d)))
        })
        .collect();
    if kinds.is_empty() {
        return Ok(());
    }
    let _rt = rt.enter();
    let template = Template::new()?;
    rt.block_on(template.ready())?;
    let mut peers = Vec::new();
    for kind in kinds {
        let peer = rt.block_on(async {
            match kind {
                Kind::Raw => raw_peer(&template).await,
                Kind::Tarpc => tarpc_peer(&template).await,
                Kind::ForkRpcSync => fork_rpc_peer(&template, &Config::default()).await,
                Kind::ForkRpcAsync => {
                    fork_rpc_peer(&template, &Config::default().concurrent(256)).await
                }
            }
        })?;
        eprintln!("{} worker, {flavour}: pid {}", kind.name(), peer.pid());
        peers.push((kind, peer));
    }
    for &depth in depths {
        let wanted: Vec<(Kind, &Peer)> = peers
            .iter()
            .filter(|(kind, _)| opts.args.wants(&row_name(*kind, flavour, depth)))
            .map(|(kind, peer)| (*kind, peer))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let samples = side_by_side(
            &format!("{}, {flavour}", depth_name(depth)),
            &wanted,
            opts.rounds,
            opts.args.only.is_some(),
            |peer| vec![peer.pid()],
            |peer, len| peer.round(rt, depth, len),
        )?;
        for ((kind, _), sample) in wanted.into_iter().zip(samples) {
            report.rows.push(Row {
                kind,
                flavour,
                depth,
                sample,
            });
        }
    }
    for (_, peer) in peers {
        rt.block_on(peer.close())?;
    }
    Ok(())
}

/// A fresh worker of each kind, its memory after its first call.
async fn idle_mems() -> BoxResult<Vec<(&'static str, Mem)>> {
    let template = Template::new()?;
    template.ready().await?;
    let sync = Config::default();
    let concurrent = Config::default().concurrent(256);
    Ok(vec![
        ("raw ping-pong", idle_mem(raw_peer(&template).await?).await?),
        ("plain tarpc", idle_mem(tarpc_peer(&template).await?).await?),
        (
            "fork-rpc sync",
            idle_mem(fork_rpc_peer(&template, &sync).await?).await?,
        ),
        (
            "fork-rpc async",
            idle_mem(fork_rpc_peer(&template, &concurrent).await?).await?,
        ),
    ])
}

// ANCHOR: main
fn main() -> BoxResult<()> {
    // First thing, before any thread: turns template processes started from
    // this binary into templates.
    fork_core::init();
    let opts = Opts::from_args();
    let mut report = Report::default();

    // The parent on a multi-thread runtime (as `#[tokio::main]` makes) ...
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    run_all(&rt, &opts, "multi-thread", &[1, 64, 256], &mut report)?;
    let mems = rt.block_on(idle_mems())?;
    drop(rt);

    // ... and on a `current_thread` runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    run_all(&rt, &opts, "current_thread", &[1, 256], &mut report)?;
    drop(rt);
    // ANCHOR_END: main

    // The report.
    report.print();
    println!();
    let table = Table::memory("worker, after its first call");
    println!("{}", table.head());
    for (name, mem) in &mems {
        let target = if name.starts_with("fork-rpc") {
            format!("USS ≤ {MEM_TARGET} KiB: {}", verdict(mem.uss <= MEM_TARGET))
        } else {
            String::new()
        };
        println!(
            "{}",
            table.row(&[name, &mem.uss, &mem.pss, &mem.rss, &target])
        );
    }
    println!();
    println!("Targets:");
    for row in &report.rows {
        if let Some((target, ok)) = report.target(row) {
            let raw = report.rate(Kind::Raw, row.flavour, row.depth);
            let vs = raw.map_or_else(String::new, |r| {
                format!(" ({:.2}× raw)", row.sample.median() / r)
            });
            println!(
                "- {}: {:.0} calls/s{vs}, {target}: {}",
                row.what(),
                row.sample.median(),
                verdict(ok)
            );
        }
    }
    println!();
    println!(
        "For reference (not measured here), on these machines: Perl's AnyEvent::Fork::RPC ~21k calls/s serial, ~230k/s pipelined; plain tarpc ~36k/s serial, ~300k/s at 64 in flight."
    );

    Ok(())
}
