//! The large-payload part of the RPC bench: round trips of 64 KiB to
//! 64 MiB, serial, through fork-rpc as `SharedBytes` shared (sealed memory
//! files), as `SharedBytes` inline (the bytes in the frame, as
//! `serde_bytes` writes them) and as `Vec<u8>`, beside a raw socketpair
//! copy of the same bytes both ways (the parent writes the payload, the
//! worker reads it whole and writes it back) measured in the same run.
//!
//! Each peer echoes the payload. The shared payload is made once and
//! sealed; what a call costs is then flat in its size (no byte is copied
//! or touched). A `Vec<u8>` call clones the payload first (tarpc's
//! generated client takes its arguments by value).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use benches::measure::side_by_side;
use benches::{BoxResult, Rounds, Table, ratio, spread};
use fork_core::shm::UnsealedBytes;
use fork_core::{Context, Entry, Template, Worker};
use fork_rpc::{Config, RpcEntry, RpcWorker, Setup, SharedBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

#[tarpc::service]
trait Bulk {
    async fn echo(data: SharedBytes) -> SharedBytes;
    async fn echo_vec(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct BulkServer;

impl Bulk for BulkServer {
    async fn echo(self, _: tarpc::context::Context, data: SharedBytes) -> SharedBytes {
        data
    }

    async fn echo_vec(self, _: tarpc::context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

fn bulk(_: &mut Setup<()>) -> Result<ServeBulk<BulkServer>, String> {
    Ok(BulkServer.serve())
}
static BULK: RpcEntry<BulkRequest, BulkResponse> =
    fork_rpc::entry!(bulk, name = "benches::rpc::bulk");

/// The raw worker: reads a `u64` length and that many bytes, writes them
/// back, until EOF. Blocking std I/O, one buffer reused.
fn raw_bulk(ctx: Context) -> io::Result<()> {
    let mut socket = ctx.socket();
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 8];
        match socket.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        buf.resize(u64::from_le_bytes(len) as usize, 0);
        socket.read_exact(&mut buf)?;
        socket.write_all(&buf)?;
    }
}
static RAW_BULK: Entry = fork_core::entry!(raw_bulk, name = "benches::rpc::raw_bulk");

/// The sizes measured.
const SIZES: [usize; 4] = [64 << 10, 1 << 20, 16 << 20, 64 << 20];

/// Frames big enough for 64 MiB as bytes (JSON-free bincode: a little
/// over the payload).
const MAX_FRAME: usize = 160 << 20;

type Client = BulkClient<fork_rpc::Client<BulkRequest, BulkResponse>>;

enum Peer {
    Raw(tokio::sync::Mutex<(UnixStream, Vec<u8>)>, Worker),
    Shared(Client, RpcWorker),
    Inline(Client, RpcWorker),
    Vec(Client, RpcWorker),
}

impl Peer {
    fn pid(&self) -> u32 {
        match self {
            Peer::Raw(_, w) => w.id(),
            Peer::Shared(_, w) | Peer::Inline(_, w) | Peer::Vec(_, w) => w.id(),
        }
    }

    /// One round trip of `data` (`shared` is the same bytes, sealed).
    async fn call(&self, data: &SharedBytes, shared: &SharedBytes, vec: &[u8]) -> BoxResult<()> {
        let ctx = || {
            let mut ctx = tarpc::context::current();
            ctx.deadline = Instant::now() + Duration::from_secs(600);
            ctx
        };
        let len = match self {
            Peer::Raw(conn, _) => {
                let (stream, buf) = &mut *conn.lock().await;
                stream.write_all(&(vec.len() as u64).to_le_bytes()).await?;
                stream.write_all(vec).await?;
                buf.resize(vec.len(), 0);
                stream.read_exact(buf).await?;
                buf.len()
            }
            Peer::Shared(c, _) => c.echo(ctx(), shared.clone()).await?.len(),
            Peer::Inline(c, _) => c.echo(ctx(), data.clone()).await?.len(),
            Peer::Vec(c, _) => c.echo_vec(ctx(), vec.to_vec()).await?.len(),
        };
        if len != vec.len() {
            return Err(format!("{len} bytes came back, not {}", vec.len()).into());
        }
        Ok(())
    }
}

fn name(peer: &Peer) -> &'static str {
    match peer {
        Peer::Raw(..) => "raw socketpair copy",
        Peer::Shared(..) => "SharedBytes, shared",
        Peer::Inline(..) => "SharedBytes, inline",
        Peer::Vec(..) => "Vec<u8>",
    }
}

async fn rpc(template: &Template, config: Config) -> BoxResult<(Client, RpcWorker)> {
    let (client, worker) = RpcWorker::builder(&mut template.fork(), &BULK)
        .config(config.max_frame(MAX_FRAME))
        .spawn()
        .await?;
    Ok((BulkClient::from(client), worker))
}

/// Measures every size side by side and prints the table.
pub(crate) fn run(rt: &Runtime, quick: bool) -> BoxResult<()> {
    let rounds = if quick {
        Rounds::new(1, Duration::from_millis(100))
    } else {
        Rounds::new(7, Duration::from_millis(300))
    };
    let _rt = rt.enter();
    let template = Template::new()?;
    let peers = rt.block_on(async {
        let raw = template.fork().run(&RAW_BULK).await?;
        let mut raw = raw;
        let stream = raw.take_stream().ok_or("no socket")?;
        let (c1, w1) = rpc(&template, Config::default()).await?;
        let (c2, w2) = rpc(&template, Config::default().shared_threshold(usize::MAX)).await?;
        let (c3, w3) = rpc(&template, Config::default().shared_threshold(usize::MAX)).await?;
        BoxResult::Ok(vec![
            Peer::Raw(tokio::sync::Mutex::new((stream, Vec::new())), raw),
            Peer::Shared(c1, w1),
            Peer::Inline(c2, w2),
            Peer::Vec(c3, w3),
        ])
    })?;
    let peers: Vec<(&str, Peer)> = peers.into_iter().map(|p| (name(&p), p)).collect();
    let table = Table::new(&[
        ("payload", benches::Align::Left),
        ("raw copy, round trips/s", benches::Align::Right),
        ("Vec<u8>", benches::Align::Right),
        ("inline", benches::Align::Right),
        ("shared", benches::Align::Right),
        ("shared: µs/call", benches::Align::Right),
        ("shared ÷ raw", benches::Align::Right),
        ("inline ÷ raw", benches::Align::Right),
    ]);
    let mut lines = Vec::new();
    let mut target = None;
    for size in SIZES {
        let vec: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let data = SharedBytes::from(vec.clone());
        let mut sealed = UnsealedBytes::new(size)?;
        sealed.copy_from_slice(&vec);
        let shared = SharedBytes::from_sealed(sealed.seal()?);
        let samples = side_by_side(
            &format!("{} KiB round trips", size >> 10),
            &peers,
            rounds,
            false,
            |peer| vec![peer.pid()],
            |peer, len| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut n = 0;
                    while n == 0 || start.elapsed() < len {
                        peer.call(&data, &shared, &vec).await?;
                        n += 1;
                    }
                    Ok((n, start.elapsed()))
                })
            },
        )?;
        let [raw, shared_s, inline, vec_s] = [0, 1, 2, 3].map(|i| &samples[i]);
        let cell = |s: &benches::Sample<2>| format!("{:.0} ({})", s.median(), spread(s));
        lines.push(table.row(&[
            &format!("{} KiB", size >> 10),
            &cell(raw),
            &cell(vec_s),
            &cell(inline),
            &cell(shared_s),
            &format!("{:.0}", 1e6 / shared_s.median()),
            &ratio(shared_s.ratio_to(raw)),
            &ratio(inline.ratio_to(raw)),
        ]));
        if size == 64 << 20 {
            target = Some(shared_s.ratio_to(raw));
        }
    }
    println!();
    println!("Large payloads, serial round trips (the payload there and back):");
    println!("{}", table.head());
    for line in lines {
        println!("{line}");
    }
    if let Some(x) = target {
        println!();
        println!(
            "Target: 64 MiB shared ≥ 10× the raw copy: {x:.1}×: {}",
            benches::verdict(x >= 10.0)
        );
    }
    drop(peers);
    Ok(())
}
