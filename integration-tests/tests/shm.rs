//! fork-rpc's `SharedBytes`, end to end: big payloads travel as sealed
//! memory files (requests, replies, events, through a pool), small ones
//! inline; the seals hold on both sides; limits and a peer's lies are
//! clear errors; and no descriptor is left open in the parent or the worker
//! after any case, errors and a worker killed mid-call included.
//!
//! The tests run one at a time: they count the parent's descriptors.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use fork_core::Template;
use fork_core::shm::UnsealedBytes;
use fork_pool::Pool;
use fork_rpc::{Config, EventSender, Format, RpcEntry, RpcWorker, Setup, SharedBytes};
use integration_tests::{Failed, block_on, ensure, fail, fds_of};
use libtest_mimic::{Arguments, Trial};
use serde::{Deserialize, Serialize};
use tarpc::client::RpcError;
use tarpc::context;

// ANCHOR: service
#[tarpc::service]
trait Store {
    /// `n` bytes of `fill`, made in the worker in a sealed memory file.
    /// (First: the hand-written worker below answers as this method.)
    async fn make(n: u64, fill: u8) -> SharedBytes;
    /// The payload back, and whether it arrived shared.
    async fn echo(data: SharedBytes) -> (bool, SharedBytes);
    /// What the worker's attempts to change the payload's memory file
    /// gave (see [`tamper`]).
    async fn tamper(data: SharedBytes) -> Vec<i32>;
    /// Sends the payload back as an event.
    async fn emit(data: SharedBytes);
    /// Sends an event, then never returns.
    async fn hang(data: SharedBytes);
    /// Blocks the worker (it reads nothing meanwhile).
    async fn block(ms: u64);
}
// ANCHOR_END: service

#[derive(Debug, Serialize, Deserialize)]
enum Note {
    Data(SharedBytes),
    Holding(usize),
}

#[derive(Clone)]
struct StoreServer {
    events: EventSender<Note>,
}

impl Store for StoreServer {
    // ANCHOR: make
    async fn make(self, _: context::Context, n: u64, fill: u8) -> SharedBytes {
        // Written where the parent will read it: no copy on either side.
        let mut buf = UnsealedBytes::new(n as usize).expect("a memory file");
        buf.fill(fill);
        SharedBytes::from_sealed(buf.seal().expect("sealed"))
    }

    async fn echo(self, _: context::Context, data: SharedBytes) -> (bool, SharedBytes) {
        // Sending back what arrived shared copies nothing either.
        (data.is_shared(), data)
    }
    // ANCHOR_END: make

    async fn tamper(self, _: context::Context, data: SharedBytes) -> Vec<i32> {
        match data.as_sealed() {
            Some(sealed) => tamper(sealed.as_fd()),
            None => Vec::new(),
        }
    }

    async fn emit(self, _: context::Context, data: SharedBytes) {
        self.events.send(&Note::Data(data)).expect("event");
    }

    async fn hang(self, _: context::Context, data: SharedBytes) {
        self.events.send(&Note::Holding(data.len())).expect("event");
        self.events.flush().await.expect("flush");
        std::future::pending::<()>().await;
    }

    async fn block(self, _: context::Context, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn store(setup: &mut Setup<Note>) -> Result<ServeStore<StoreServer>, String> {
    Ok(StoreServer {
        events: setup.events(),
    }
    .serve())
}
static STORE: RpcEntry<StoreRequest, StoreResponse, Note> = fork_rpc::entry!(store);

/// Tries to change a memory file through every door: a write through a
/// duplicate, a write through the file reopened by its `/proc` path, a
/// writable shared mapping, shrinking, growing, another seal. The errno
/// of each (0 if it worked).
fn tamper(fd: BorrowedFd<'_>) -> Vec<i32> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    let mut dup = std::fs::File::from(fd.try_clone_to_owned().expect("dup"));
    let reopened = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .and_then(|mut f| f.write_all(b"x"));
    let len = std::num::NonZeroUsize::new(4096).expect("non-zero");
    // SAFETY: a new mapping at an address the kernel picks aliases nothing;
    // it is unmapped at once if it is made.
    let mapped = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    };
    let mapped = match mapped {
        // SAFETY: the mapping just made, of `len` bytes, referenced by
        // nothing.
        Ok(ptr) => unsafe { munmap(ptr, len.get()) }.map_or(-1, |()| 0),
        Err(e) => e as i32,
    };
    vec![
        errno(dup.write_all(b"x")),
        errno(reopened),
        mapped,
        errno(dup.set_len(1)),
        errno(dup.set_len(1 << 30)),
        fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).map_or_else(|e| e as i32, |_| 0),
    ]
}

// ===== a worker that lies =====

/// The start of a reply as fork-rpc encodes it: `WorkerMsg::Reply` of a
/// `StoreResponse::Make`, with a `SharedBytes` written by hand.
#[derive(Serialize)]
enum FakeMsg {
    Reply(tarpc::Response<FakeResponse>),
}
#[derive(Serialize)]
enum FakeResponse {
    Make(FakeShared),
}
#[derive(Serialize)]
#[serde(rename = "SharedBytes")]
enum FakeShared {
    #[allow(dead_code, reason = "the variant index must match")]
    Inline(Vec<u8>),
    Fd {
        index: u32,
        len: u64,
    },
}

/// Answers its first request with a shared payload that is a lie: argument
/// 0 says which (`"none"`: no descriptors sent for the frame;
/// `"unsealed"`: a memory file without seals; `"pipe"`: not a memory
/// file), then waits for the parent to close.
fn lying_worker(mut ctx: fork_core::Context) -> i32 {
    use bincode::Options;
    let lie: String = ctx.arg(0).expect("the lie");
    let slot = ctx.take_slot().expect("a slot");
    let shared = slot.fds.into_iter().nth(1).expect("the shared channel");
    let mut socket = ctx.socket();
    let Some(request) =
        integration_tests::first_request::<StoreRequest>(&mut socket).expect("a request")
    else {
        return 2;
    };
    // The first frame the worker writes is number 0.
    let header = 0u64.to_le_bytes();
    match lie.as_str() {
        "unsealed" => {
            let file = nix::sys::memfd::memfd_create(
                c"unsealed",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC
                    | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
            )
            .expect("memfd");
            nix::unistd::ftruncate(&file, 10).expect("size");
            fork_core::fdpass::send_fds(shared.as_fd(), &header, &[file.as_fd()]).expect("send");
        }
        "pipe" => {
            let (r, _w) = std::io::pipe().expect("pipe");
            fork_core::fdpass::send_fds(shared.as_fd(), &header, &[r.as_fd()]).expect("send");
        }
        _ => {}
    }
    let reply = FakeMsg::Reply(tarpc::Response {
        request_id: request.id,
        message: Ok(FakeResponse::Make(FakeShared::Fd { index: 0, len: 10 })),
    });
    let body = bincode::DefaultOptions::new()
        .serialize(&reply)
        .expect("encode");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    socket.write_all(&out).expect("reply");
    let mut buf = [0u8; 1024];
    while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    0
}
static LYING: RpcEntry<StoreRequest, StoreResponse, Note> =
    RpcEntry::from_entry(fork_core::entry!(lying_worker));

// ===== helpers =====

type Client = StoreClient<fork_rpc::Client<StoreRequest, StoreResponse>>;

async fn start(config: Config) -> Result<(Client, RpcWorker<Note>), Failed> {
    start_entry(config, &STORE, None).await
}

async fn start_entry(
    config: Config,
    entry: &RpcEntry<StoreRequest, StoreResponse, Note>,
    arg: Option<&str>,
) -> Result<(Client, RpcWorker<Note>), Failed> {
    let t = Template::shared().map_err(fail)?;
    let mut fork = t.fork();
    if let Some(arg) = arg {
        fork.arg(arg);
    }
    let (client, worker) = RpcWorker::builder(&mut fork, entry)
        .config(config)
        .spawn()
        .await
        .map_err(fail)?;
    Ok((StoreClient::from(client), worker))
}

/// The parent's descriptors and the worker's, to compare after a case.
struct Fds {
    worker: u32,
    parent: std::collections::BTreeMap<i32, String>,
    in_worker: std::collections::BTreeMap<i32, String>,
}

impl Fds {
    fn now(worker: &RpcWorker<Note>) -> Result<Fds, Failed> {
        Ok(Fds {
            worker: worker.id(),
            parent: fds_of(std::process::id()).map_err(fail)?,
            in_worker: fds_of(worker.id()).map_err(fail)?,
        })
    }

    /// Fails unless both processes hold what they held then.
    fn same(&self, case: &str) -> Result<(), Failed> {
        let parent = fds_of(std::process::id()).map_err(fail)?;
        ensure!(
            parent == self.parent,
            "{case}: the parent's descriptors were {:?}, now {parent:?}",
            self.parent
        );
        let in_worker = fds_of(self.worker).map_err(fail)?;
        ensure!(
            in_worker == self.in_worker,
            "{case}: the worker's descriptors were {:?}, now {in_worker:?}",
            self.in_worker
        );
        Ok(())
    }
}

/// The memory files this process holds.
fn memfds() -> Result<usize, Failed> {
    Ok(fds_of(std::process::id())
        .map_err(fail)?
        .values()
        .filter(|t| t.starts_with("/memfd:"))
        .count())
}

fn server_error(e: &RpcError) -> String {
    match e {
        RpcError::Server(e) => e.detail.clone(),
        e => format!("not a server error: {e:?}"),
    }
}

fn send_error(e: &RpcError) -> String {
    match e {
        RpcError::Send(e) => e.to_string(),
        e => format!("not a send error: {e:?}"),
    }
}

const MIB: usize = 1 << 20;

// ===== tests =====

/// Big payloads go as memory files both ways, small ones inline, in both
/// formats; one far over the frame limit goes too (its bytes are in no
/// frame). Nothing is left open.
fn big_payloads_are_shared_small_ones_inline() -> Result<(), Failed> {
    block_on(async {
        for format in [Format::Bincode, Format::Json] {
            let (store, worker) = start(Config::default().format(format)).await?;
            let fds = Fds::now(&worker)?;
            for (len, shared) in [(1000, false), (MIB, true), (48 * MIB, true)] {
                let data = SharedBytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
                let (arrived_shared, back) = store
                    .echo(context::current(), data.clone())
                    .await
                    .map_err(fail)?;
                ensure!(back == data, "{format:?}, {len} bytes came back changed");
                ensure!(
                    arrived_shared == shared && back.is_shared() == shared,
                    "{format:?}, {len} bytes: shared there {arrived_shared}, back {}",
                    back.is_shared()
                );
                drop((data, back));
                fds.same(&format!("{format:?}, {len} bytes"))?;
            }
            // Made in the worker, filled in place.
            let made = store
                .make(context::current(), 3 * MIB as u64, 0xab)
                .await
                .map_err(fail)?;
            ensure!(
                made.is_shared() && made.len() == 3 * MIB && made.iter().all(|&b| b == 0xab),
                "made: {made:?}"
            );
            drop(made);
            fds.same("made in the worker")?;
        }
        Ok(())
    })
}

/// The threshold decides; `usize::MAX` shares nothing.
fn the_threshold_decides() -> Result<(), Failed> {
    block_on(async {
        for (threshold, shared) in [(1000, true), (usize::MAX, false)] {
            let (store, _worker) = start(Config::default().shared_threshold(threshold)).await?;
            let data = SharedBytes::from(vec![7; 1000]);
            let (there, back) = store.echo(context::current(), data).await.map_err(fail)?;
            ensure!(
                there == shared && back.is_shared() == shared,
                "threshold {threshold}: shared there {there}, back {}",
                back.is_shared()
            );
        }
        Ok(())
    })
}

/// Neither the worker that received a payload nor the parent that sent it
/// can change it, by any means.
fn the_seals_hold_on_both_sides() -> Result<(), Failed> {
    block_on(async {
        let (store, worker) = start(Config::default()).await?;
        let fds = Fds::now(&worker)?;
        let mut buf = UnsealedBytes::new(MIB).map_err(fail)?;
        buf.fill(1);
        let data = SharedBytes::from_sealed(buf.seal().map_err(fail)?);
        let eperm = vec![libc::EPERM; 6];
        let there = store
            .tamper(context::current(), data.clone())
            .await
            .map_err(fail)?;
        ensure!(there == eperm, "the worker's attempts gave {there:?}");
        let here = tamper(data.as_sealed().ok_or("not shared")?.as_fd());
        ensure!(here == eperm, "the parent's attempts gave {here:?}");
        ensure!(data.iter().all(|&b| b == 1), "the payload changed");
        // And a payload the parent received from the worker.
        let made = store
            .make(context::current(), MIB as u64, 2)
            .await
            .map_err(fail)?;
        let here = tamper(made.as_sealed().ok_or("not shared")?.as_fd());
        ensure!(here == eperm, "on a received payload: {here:?}");
        drop((data, made));
        fds.same("after tampering")
    })
}

/// Over `max_shared_len`: the sender refuses before sending, in either
/// direction, with an error naming the knob; nothing is left open.
fn over_the_size_limit_is_a_clear_error() -> Result<(), Failed> {
    block_on(async {
        let config = Config::default().max_shared_len(MIB);
        let (store, worker) = start(config).await?;
        let fds = Fds::now(&worker)?;
        let e = store
            .echo(context::current(), SharedBytes::from(vec![0; 2 * MIB]))
            .await
            .expect_err("over the limit");
        let message = send_error(&e);
        ensure!(message.contains("max_shared_len"), "request: {message}");
        fds.same("a request over the limit")?;
        let e = store
            .make(context::current(), 2 * MIB as u64, 0)
            .await
            .expect_err("over the limit");
        let message = server_error(&e);
        ensure!(message.contains("max_shared_len"), "reply: {message}");
        fds.same("a reply over the limit")?;
        // The connection goes on.
        let (_, back) = store
            .echo(context::current(), SharedBytes::from(vec![0; MIB]))
            .await
            .map_err(fail)?;
        ensure!(back.len() == MIB, "then {back:?}");
        drop(back);
        fds.same("after the errors")
    })
}

/// A reply that claims a shared payload, from a worker that sent no
/// descriptor for it, an unsealed memory file, or a pipe, fails its call
/// with an error that says so; the parent keeps nothing.
fn a_peers_lies_fail_the_call() -> Result<(), Failed> {
    block_on(async {
        for (lie, says) in [
            ("none", "no descriptors were sent"),
            ("unsealed", "not sealed"),
            ("pipe", "not a sealable memory file"),
        ] {
            let before = memfds()?;
            let (store, worker) = start_entry(Config::default(), &LYING, Some(lie)).await?;
            let parent = fds_of(std::process::id()).map_err(fail)?;
            let e = store
                .make(context::current(), 10, 0)
                .await
                .expect_err("a lie");
            let message = server_error(&e);
            ensure!(message.contains(says), "{lie}: {message}");
            let now = fds_of(std::process::id()).map_err(fail)?;
            ensure!(
                now == parent,
                "{lie}: the parent held {parent:?}, now {now:?}"
            );
            drop((store, worker));
            ensure!(memfds()? == before, "{lie}: a memory file left open");
        }
        Ok(())
    })
}

/// A worker killed while it holds a payload: the call fails, the parent
/// holds no memory file once it drops its own.
fn a_worker_killed_mid_call_leaves_nothing_open() -> Result<(), Failed> {
    block_on(async {
        let before = memfds()?;
        let (store, mut worker) = start(Config::default()).await?;
        let mut events = worker.events().ok_or("no events")?;
        let data = SharedBytes::from(vec![5; 4 * MIB]);
        let call = store.hang(context::current(), data.clone());
        let holding = async {
            match events.recv().await {
                Some(Ok(Note::Holding(n))) => Ok(n),
                other => Err(format!("got {other:?}")),
            }
        };
        let (call, held) = tokio::join!(
            async { tokio::time::timeout(Duration::from_secs(10), call).await },
            async {
                let held = holding.await;
                worker.kill().await.map_err(fail)?;
                Ok::<_, Failed>(held)
            }
        );
        ensure!(held? == Ok(4 * MIB), "the worker held the payload");
        let e = call.map_err(|_| "the call hung")?.expect_err("killed");
        ensure!(fork_rpc::WorkerLost::find(&e).is_some(), "{e:?}");
        drop((data, store, events, worker));
        ensure!(memfds()? == before, "a memory file left open");
        Ok(())
    })
}

/// Shared payloads in events arrive shared; nothing is left open.
fn events_carry_shared_payloads() -> Result<(), Failed> {
    block_on(async {
        let (store, mut worker) = start(Config::default()).await?;
        let mut events = worker.events().ok_or("no events")?;
        let fds = Fds::now(&worker)?;
        for len in [100, 2 * MIB] {
            let data = SharedBytes::from(vec![3; len]);
            store
                .emit(context::current(), data.clone())
                .await
                .map_err(fail)?;
            let Some(Ok(Note::Data(got))) = events.recv().await else {
                return Err("no event".into());
            };
            ensure!(got == data, "{len} bytes changed");
            ensure!(got.is_shared() == (len > 1000), "{len} bytes: {got:?}");
        }
        fds.same("after the events")
    })
}

/// Through a pool: shared both ways, several at once.
fn through_a_pool() -> Result<(), Failed> {
    block_on(async {
        let before = memfds()?;
        let t = Template::new().map_err(fail)?;
        let pool = Pool::builder(t.clone(), &STORE).max(2).build();
        let store = StoreClient::from(pool.clone());
        let calls = (0..4u8).map(|i| {
            let store = &store;
            async move {
                let data = SharedBytes::from(vec![i; 2 * MIB]);
                let (there, back) = store.echo(context::current(), data.clone()).await?;
                Ok::<_, RpcError>(there && back.is_shared() && back == data)
            }
        });
        let ok = futures::future::try_join_all(calls).await.map_err(fail)?;
        ensure!(ok.iter().all(|&ok| ok), "through the pool: {ok:?}");
        pool.shutdown().await;
        ensure!(memfds()? == before, "a memory file left open");
        Ok(())
    })
}

/// Many shared payloads sent while the worker reads nothing: the
/// descriptor channel fills, and the payloads after that go as bytes in
/// the frame; none fails, nothing is left open.
fn a_full_descriptor_channel_sends_bytes_instead() -> Result<(), Failed> {
    block_on(async {
        let config = Config::default().shared_threshold(4096);
        let (store, worker) = start(config).await?;
        let fds = Fds::now(&worker)?;
        let data = SharedBytes::from(vec![5u8; 8192]);
        let blocked = store.block(context::current(), 500);
        let calls = futures::future::join_all(
            (0..2000).map(|_| store.echo(context::current(), data.clone())),
        );
        let (blocked, results) = tokio::join!(blocked, calls);
        blocked.map_err(fail)?;
        let mut inline = 0;
        for r in &results {
            let (shared, back) = r.as_ref().map_err(send_error)?;
            ensure!(back == &data, "a payload came back changed");
            inline += usize::from(!shared);
        }
        ensure!(
            inline > 0 && inline < results.len(),
            "{inline} of {} went as bytes: the channel never filled, or nothing was shared",
            results.len()
        );
        eprintln!("{inline} of {} went as bytes", results.len());
        drop((results, data));
        fds.same("a full descriptor channel")
    })
}

fn main() {
    fork_core::init();
    let tests: &[(&str, integration_tests::TestFn)] = &[
        (
            "big_payloads_are_shared_small_ones_inline",
            big_payloads_are_shared_small_ones_inline,
        ),
        ("the_threshold_decides", the_threshold_decides),
        ("the_seals_hold_on_both_sides", the_seals_hold_on_both_sides),
        (
            "over_the_size_limit_is_a_clear_error",
            over_the_size_limit_is_a_clear_error,
        ),
        ("a_peers_lies_fail_the_call", a_peers_lies_fail_the_call),
        (
            "a_worker_killed_mid_call_leaves_nothing_open",
            a_worker_killed_mid_call_leaves_nothing_open,
        ),
        ("events_carry_shared_payloads", events_carry_shared_payloads),
        ("through_a_pool", through_a_pool),
        (
            "a_full_descriptor_channel_sends_bytes_instead",
            a_full_descriptor_channel_sends_bytes_instead,
        ),
    ];
    let mut args = Arguments::from_args();
    // They count the parent's descriptors: one at a time.
    args.test_threads = Some(1);
    let trials = tests
        .iter()
        .map(|&(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
