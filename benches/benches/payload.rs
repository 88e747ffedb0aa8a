//! Payload benchmark: bytes per second through fork-rpc and a fork-pool
//! for payloads of 100 B, 10 KiB, 1 MiB and 64 MiB, serial and 4 in flight,
//! beside a raw socketpair copy of the same bytes in the same run.
//!
//! Run: `cargo bench -p benches --bench payload` (about a minute), or
//! `cargo bench -p benches --bench payload -- --quick` (a few seconds; for
//! CI). `--only TEXT` measures only the rows whose name contains `TEXT`.
//!
//! Every call sends `size` bytes to a worker and gets them back:
//!
//! - **raw**: the parent writes `u32` length + payload frames on a tokio
//!   `UnixStream` (N at once for N in flight) and reads the echoes; the
//!   worker echoes them with blocking std I/O. The limit of this path.
//! - **fork-rpc, `Bytes`**: a service method taking and returning
//!   `bytes::Bytes` (serialised as a byte string, in one copy; `serde_bytes`
//!   does the same for a `Vec<u8>`).
//! - **fork-rpc, `Vec<u8>`**: the same with a plain `Vec<u8>`, which serde
//!   reads and writes one element at a time.
//! - **pool, `Bytes`**: the `Bytes` method through a pool of 2 workers at
//!   load 2.
//!
//! Rates are payload bytes per second in each direction (a call moves its
//! payload there and back). The machines are small and noisy: rounds of
//! the peers take turns, and ratios are medians of per-round ratios.

#![forbid(unsafe_code)]

use std::fmt::Display;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::{Args, BoxResult, Caller, Rounds, Sample, Table, calls, spread, sum, verdict};
use bytes::Bytes;
use fork_core::shm::UnsealedBytes;
use fork_core::{Context, Entry, Template, Worker};
use fork_pool::Pool;
use fork_rpc::{Config, RpcEntry, RpcWorker, Setup, SharedBytes};
use tarpc::client::RpcError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

// ===== the service =====

// ANCHOR: service
/// Echoes its payload.
#[tarpc::service]
trait Payload {
    /// As a byte string: one copy each way.
    async fn echo(data: Bytes) -> Bytes;
    /// As serde's default for a `Vec<u8>`: a sequence, one byte at a time.
    async fn echo_vec(data: Vec<u8>) -> Vec<u8>;
    /// As sealed shared memory from `Config::shared_threshold` bytes, as
    /// bytes in the frame below it.
    async fn echo_shared(data: SharedBytes) -> SharedBytes;
}
// ANCHOR_END: service

#[derive(Debug, Clone, Copy)]
struct PayloadServer;

impl Payload for PayloadServer {
    async fn echo(self, _: tarpc::context::Context, data: Bytes) -> Bytes {
        data
    }

    async fn echo_vec(self, _: tarpc::context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn echo_shared(self, _: tarpc::context::Context, data: SharedBytes) -> SharedBytes {
        data
    }
}

fn payload_service(_: &mut Setup<()>) -> Result<ServePayload<PayloadServer>, String> {
    Ok(PayloadServer.serve())
}
static PAYLOAD: RpcEntry<PayloadRequest, PayloadResponse> =
    fork_rpc::entry!(payload_service, name = "benches::payload::service");

/// The largest payload, and the frame limit that lets it through.
const MAX_SIZE: usize = 64 << 20;
const MAX_FRAME: usize = MAX_SIZE + (1 << 20);

// ===== the raw limit =====

/// The raw worker: echoes every frame (`u32` length + payload) with
/// blocking std I/O, until EOF.
fn raw_echo(ctx: Context) -> io::Result<()> {
    let mut socket = ctx.socket();
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match socket.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
        }
        frame.resize(4 + n, 0);
        frame[..4].copy_from_slice(&len);
        socket.read_exact(&mut frame[4..])?;
        socket.write_all(&frame)?;
    }
}
static RAW_ECHO: Entry = fork_core::entry!(raw_echo, name = "benches::payload::raw_echo");

/// The parent's end of the raw echo: N frames written, N read back.
#[derive(Debug)]
struct RawConn {
    stream: UnixStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl RawConn {
    async fn batch(&mut self, size: usize, n: usize) -> io::Result<()> {
        let frame = 4 + size;
        if self.out.len() != n * frame {
            self.out.clear();
            for _ in 0..n {
                self.out.extend_from_slice(&(size as u32).to_le_bytes());
                self.out.resize(self.out.len() + size, 7);
            }
            self.back.resize(n * frame, 0);
        }
        // Written and read at once, as a client with N in flight would.
        let (mut read, mut write) = self.stream.split();
        let (w, r) = tokio::join!(write.write_all(&self.out), read.read_exact(&mut self.back));
        w?;
        r?;
        Ok(())
    }
}

/// Raw batches of `depth` frames of `size` bytes until `len` has passed.
async fn raw_round(
    conn: Arc<tokio::sync::Mutex<RawConn>>,
    size: usize,
    depth: usize,
    len: Duration,
) -> BoxResult<(u64, Duration)> {
    let mut conn = conn.lock().await;
    let start = Instant::now();
    let mut done = 0;
    while done == 0 || start.elapsed() < len {
        conn.batch(size, depth).await?;
        done += depth as u64;
    }
    Ok((done, start.elapsed()))
}

// ===== calls =====

type DirectClient = PayloadClient<fork_rpc::Client<PayloadRequest, PayloadResponse>>;
type PoolClient = PayloadClient<Pool<PayloadRequest, PayloadResponse>>;

/// How the payload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Bytes,
    Vec,
    Shared,
}

/// A client and the payload it sends (a slice of it, of the call's size).
#[derive(Debug)]
struct Sender<C> {
    client: C,
    path: Path,
    payload: Bytes,
    /// The payload as sealed shared memory, made once.
    shared: SharedBytes,
}

/// One echo of `size` bytes through `client`, returning `x` if the payload
/// came back whole.
async fn echo<S>(sender: &Sender<PayloadClient<S>>, size: usize, x: u64) -> Result<u64, RpcError>
where
    S: tarpc::client::stub::Stub<Req = PayloadRequest, Resp = PayloadResponse>,
{
    let (client, payload) = (&sender.client, &sender.payload);
    let ctx = tarpc::context::current();
    let back = match sender.path {
        Path::Bytes => client.echo(ctx, payload.slice(..size)).await?.len(),
        Path::Vec => client.echo_vec(ctx, payload[..size].to_vec()).await?.len(),
        Path::Shared => client.echo_shared(ctx, sender.shared.clone()).await?.len(),
    };
    Ok(if back == size { x } else { u64::MAX })
}

impl Caller for Sender<DirectClient> {
    type Work = usize;
    type Error = RpcError;

    fn call(&self, size: usize, x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        echo(self, size, x)
    }
}

impl Caller for Sender<PoolClient> {
    type Work = usize;
    type Error = RpcError;

    fn call(&self, size: usize, x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        echo(self, size, x)
    }
}

// ===== the peers =====

/// How a payload reaches a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Raw,
    Direct(Path),
    Pool(Path),
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Raw => "raw socketpair copy",
            Via::Direct(Path::Bytes) => "fork-rpc, `Bytes`",
            Via::Direct(Path::Vec) => "fork-rpc, `Vec<u8>`",
            Via::Direct(Path::Shared) => "fork-rpc, `SharedBytes`",
            Via::Pool(Path::Bytes) => "pool of 2, `Bytes`",
            Via::Pool(Path::Vec) => "pool of 2, `Vec<u8>`",
            Via::Pool(Path::Shared) => "pool of 2, `SharedBytes`",
        }
    }
}

#[derive(Debug)]
enum Peer {
    Raw(Arc<tokio::sync::Mutex<RawConn>>, Worker),
    Direct(Arc<Sender<DirectClient>>, RpcWorker),
    Pool(
        Arc<Sender<PoolClient>>,
        Pool<PayloadRequest, PayloadResponse>,
    ),
}

impl Peer {
    async fn new(template: &Template, via: Via, payload: &Bytes, size: usize) -> BoxResult<Peer> {
        let config = Config::default().max_frame(MAX_FRAME);
        let shared = || -> BoxResult<SharedBytes> {
            let mut unsealed = UnsealedBytes::new(size)?;
            unsealed.fill(7);
            Ok(SharedBytes::from_sealed(unsealed.seal()?))
        };
        Ok(match via {
            Via::Raw => {
                let mut worker = template.fork().run(&RAW_ECHO).await?;
                let stream = worker.take_stream().ok_or("no worker socket")?;
                let conn = RawConn {
                    stream,
                    out: Vec::new(),
                    back: Vec::new(),
                };
                Peer::Raw(Arc::new(tokio::sync::Mutex::new(conn)), worker)
            }
            Via::Direct(path) => {
                let (client, worker) = RpcWorker::builder(&mut template.fork(), &PAYLOAD)
                    .config(config)
                    .spawn()
                    .await?;
                let sender = Sender {
                    client: PayloadClient::from(client),
                    path,
                    payload: payload.clone(),
                    shared: shared()?,
                };
                Peer::Direct(Arc::new(sender), worker)
            }
            Via::Pool(path) => {
                let pool = Pool::builder(template.clone(), &PAYLOAD)
                    .idle(2)
                    .max(2)
                    .load(2)
                    .rpc(config)
                    .build();
                pool.wait_until(|s| s.idle == 2).await;
                let sender = Sender {
                    client: PayloadClient::from(pool.clone()),
                    path,
                    payload: payload.clone(),
                    shared: shared()?,
                };
                Peer::Pool(Arc::new(sender), pool)
            }
        })
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Peer::Raw(_, worker) => vec![worker.id()],
            Peer::Direct(_, worker) => vec![worker.id()],
            Peer::Pool(_, pool) => pool.worker_pids(),
        }
    }

    fn round(
        &self,
        rt: &Runtime,
        size: usize,
        depth: usize,
        len: Duration,
    ) -> BoxResult<(u64, Duration)> {
        let task = match self {
            Peer::Raw(conn, _) => rt.spawn(raw_round(conn.clone(), size, depth, len)),
            Peer::Direct(sender, _) => rt.spawn(calls(sender.clone(), size, depth, len)),
            Peer::Pool(sender, _) => rt.spawn(calls(sender.clone(), size, depth, len)),
        };
        rt.block_on(task)?
    }

    async fn close(self) -> BoxResult<()> {
        match self {
            Peer::Raw(conn, mut worker) => {
                drop(conn);
                worker.wait().await?;
            }
            Peer::Direct(sender, mut worker) => {
                drop(sender);
                worker.wait().await?;
            }
            Peer::Pool(sender, pool) => {
                drop(sender);
                pool.shutdown().await;
            }
        }
        Ok(())
    }
}

// ===== measuring =====

#[derive(Debug)]
struct Row {
    size: usize,
    depth: usize,
    via: Via,
    sample: Sample<2>,
}

impl Row {
    fn what(&self) -> String {
        row_name(self.via, self.size, self.depth)
    }

    /// Payload bytes per second, each way.
    fn rate(&self) -> f64 {
        self.sample.median() * self.size as f64
    }
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn row_name(via: Via, size: usize, depth: usize) -> String {
    let depth = if depth == 1 {
        "serial".to_owned()
    } else {
        format!("{depth} in flight")
    };
    format!("{}, {}, {depth}", size_name(size), via.name())
}

/// The payload sizes, and the rounds each is measured for.
fn sizes(args: &Args) -> Vec<(usize, Rounds)> {
    let rounds = |count, ms| {
        if args.quick {
            Rounds::new(1, Duration::from_millis(50))
        } else {
            Rounds::new(count, Duration::from_millis(ms))
        }
    };
    let mut sizes = vec![
        (100, rounds(7, 150)),
        (10 << 10, rounds(7, 150)),
        (1 << 20, rounds(7, 200)),
    ];
    if !args.quick {
        sizes.push((MAX_SIZE, rounds(5, 600)));
    }
    sizes
}

fn measure_all(rt: &Runtime, args: &Args, rows: &mut Vec<Row>) -> BoxResult<()> {
    let _rt = rt.enter();
    let template = Template::new()?;
    rt.block_on(template.ready())?;
    let payload = Bytes::from(vec![7u8; MAX_SIZE]);
    for (size, rounds) in sizes(args) {
        for depth in [1, 4] {
            let mut vias = vec![
                Via::Raw,
                Via::Direct(Path::Bytes),
                Via::Direct(Path::Shared),
                Via::Pool(Path::Bytes),
                Via::Pool(Path::Shared),
            ];
            // The element-by-element path at 64 MiB takes seconds a call.
            if size < MAX_SIZE {
                vias.push(Via::Direct(Path::Vec));
            }
            vias.retain(|&via| args.wants(&row_name(via, size, depth)));
            if vias.is_empty() {
                continue;
            }
            let mut peers = Vec::new();
            for &via in &vias {
                peers.push((
                    via.name(),
                    rt.block_on(Peer::new(&template, via, &payload, size))?,
                ));
            }
            let samples = side_by_side(
                &format!("{}, {depth} in flight", size_name(size)),
                &peers,
                rounds,
                args.only.is_some(),
                Peer::pids,
                |peer, len| peer.round(rt, size, depth, len),
            )?;
            for (_, peer) in peers {
                rt.block_on(peer.close())?;
            }
            for (via, sample) in vias.into_iter().zip(samples) {
                rows.push(Row {
                    size,
                    depth,
                    via,
                    sample,
                });
            }
        }
    }
    rt.block_on(template.shutdown())?;
    Ok(())
}

// ===== report =====

/// Least rate of 1 MiB through the bytes path, as a multiple of the raw
/// copy.
const BYTES_TARGET: f64 = 0.5;
/// Least rate of 64 MiB through shared memory, as a multiple of the raw
/// copy (which copies what shared memory does not).
const SHARED_TARGET: f64 = 10.0;

fn find(rows: &[Row], row: &Row, via: Via) -> Option<usize> {
    rows.iter()
        .position(|r| r.size == row.size && r.depth == row.depth && r.via == via)
}

fn print(rows: &[Row]) {
    let table = Table::new(&[
        ("payload, path, calls in flight", Left),
        ("MB/s each way (median)", Right),
        ("calls/s", Right),
        ("× raw", Right),
        ("spread (min–max calls/s)", Right),
        ("CPU µs/call: parent + workers", Right),
        ("target", Left),
    ]);
    println!();
    println!("{}", table.head());
    let mut targets = Vec::new();
    for row in rows {
        let raw = find(rows, row, Via::Raw).map(|i| &rows[i]);
        let vs = raw
            .filter(|_| row.via != Via::Raw)
            .map(|raw| row.sample.ratio_to(&raw.sample));
        let goal = match (row.via, row.size) {
            (Via::Direct(Path::Bytes), 0x10_0000) => Some(BYTES_TARGET),
            (Via::Direct(Path::Shared), MAX_SIZE) => Some(SHARED_TARGET),
            _ => None,
        };
        let target = match (goal, vs) {
            (Some(goal), Some(vs)) => {
                let ok = vs >= goal;
                targets.push(format!(
                    "{}: {vs:.2}× raw, ≥ {goal}×: {}",
                    row.what(),
                    verdict(ok)
                ));
                format!("≥ {goal}× raw: {}", verdict(ok))
            }
            _ => String::new(),
        };
        let cells: [&dyn Display; 7] = [
            &row.what(),
            &format!("{:.0}", row.rate() / 1e6),
            &format!("{:.0}", row.sample.median()),
            &vs.map_or_else(String::new, |v| format!("{v:.3}")),
            &spread(&row.sample),
            &sum(&row.sample.cpu_per_op(), 1),
            &target,
        ];
        println!("{}", table.row(&cells));
    }
    // 4 in flight against serial, for the bytes paths.
    println!();
    println!("4 in flight against serial (calls/s, the same path and size):");
    for row in rows.iter().filter(|r| r.depth == 4) {
        let serial = rows
            .iter()
            .find(|r| r.size == row.size && r.via == row.via && r.depth == 1);
        if let Some(serial) = serial {
            println!(
                "- {}, {}: {:.2}×",
                size_name(row.size),
                row.via.name(),
                row.sample.median() / serial.sample.median()
            );
        }
    }
    println!();
    println!("Targets:");
    for t in targets {
        println!("- {t}");
    }
    chart(rows);
}

/// The cost of a serial call by payload size, one bar per path, on a log
/// scale: flat for shared memory, growing with the size for copies.
fn chart(rows: &[Row]) {
    let paths = [
        Via::Raw,
        Via::Direct(Path::Bytes),
        Via::Direct(Path::Shared),
    ];
    let cost = |r: &Row| 1e6 / r.sample.median();
    let serial: Vec<&Row> = rows
        .iter()
        .filter(|r| r.depth == 1 && paths.contains(&r.via))
        .collect();
    let Some(most) = serial.iter().map(|r| cost(r)).reduce(f64::max) else {
        return;
    };
    // 1 µs to the most, over 50 columns.
    let width = |us: f64| ((us.max(1.0).ln() / most.max(2.0).ln()) * 50.0).round() as usize;
    println!();
    println!("µs per serial call (log scale):");
    println!();
    println!("| payload | path | µs per call | |");
    println!("|---|---|---:|---|");
    for row in &serial {
        let us = cost(row);
        println!(
            "| {} | {} | {us:.0} | `{}` |",
            size_name(row.size),
            row.via.name(),
            "#".repeat(width(us))
        );
    }
}

fn main() -> BoxResult<()> {
    fork_core::init();
    let args = Args::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    measure_all(&rt, &args, &mut rows)?;
    drop(rt);
    print(&rows);
    Ok(())
}
