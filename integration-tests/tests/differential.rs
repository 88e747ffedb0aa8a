//! A differential test (issue #16): fork-rpc's fast client and server
//! checked against tarpc's own `BaseChannel` / `NewClient` path.
//!
//! fork-rpc replaces tarpc's client dispatch task and its server
//! `BaseChannel` with code of its own (callers read and write the socket
//! themselves; the worker serves rounds of requests itself). tarpc's path
//! is the oracle. One service, [`Probe`], with one implementation, runs in a
//! worker forked from the template in two ways:
//!
//! - **the fast path**: [`RpcWorker::builder`](fork_rpc::RpcWorker::builder),
//!   and the generated client over its [`fork_rpc::Client`] stub;
//! - **the oracle**: a plain `fork_core::entry!` that serves the same
//!   implementation with tarpc's `BaseChannel::with_defaults(..).execute(..)`
//!   over `serde_transport` (length-delimited frames, bincode) on a
//!   `current_thread` runtime, and a parent that calls it through
//!   `ProbeClient::new(tarpc::client::Config::default(), ..).spawn()`.
//!
//! Each scenario is one function, generic over the stub, run on a fresh
//! worker of each path. It returns what a user observes: replies, which
//! calls failed and how ([`Reply`]), whether a handler saw its cancellation
//! (the worker's [`Phase`] of it), the order of replies where it is
//! determined, exit statuses. The test checks that tarpc's path saw what
//! the scenario expects (so that the oracle itself is not off, and no
//! scenario passes by both paths failing alike), then that fork-rpc's path
//! saw the same as tarpc's. Nothing waits by sleeping: the parent waits on
//! replies and on a worker's exit; the worker's side effects are read by
//! calls that wait for them (`started`, `ended`).
//!
//! # Intended differences
//!
//! Where the two paths legitimately differ, the scenarios compare around it:
//!
//! - **Serving mode.** fork-rpc serves one request at a time by default
//!   ([`fork_rpc::Mode::Sync`], AnyEvent::Fork::RPC's default), which tarpc
//!   has no counterpart for: `BaseChannel` runs every request it reads at
//!   once. The fast path here is `Config::default().concurrent(1000)`
//!   (1000 being tarpc's client in-flight limit), the mode that matches.
//!   Sync mode is tested in `rpc.rs`.
//! - **A lost worker.** fork-rpc fails pending and later calls with
//!   `RpcError::Channel` carrying a [`fork_rpc::WorkerLost`] (pid, exit
//!   status, a handler's panic); tarpc gives `Shutdown` or `Channel` with an
//!   I/O error. The outcomes record only that the connection is gone
//!   ([`Reply::Gone`]); the exit status is read from the process on both.
//! - **A handler's panic.** fork-rpc reports it to the caller and the
//!   worker exits 101; under tarpc only that request's task dies. Not
//!   compared.
//! - **Oversized messages.** fork-rpc's `max_frame` (16 MiB by default)
//!   fails the one call; tarpc's length-delimited codec (8 MiB by default)
//!   breaks the connection. The messages here (1 MiB) are under both.
//! - **Deadlines.** None: fork-rpc keeps every context's deadline as
//!   tarpc does (`Config::default_timeout` only sets the deadline of the
//!   contexts `Client::context` makes, which the scenarios do not use).
//! - **The wire.** fork-rpc frames its own messages (replies among events,
//!   retire requests, panics; a handshake; a descriptor channel beside the
//!   stream), so the paths are compared through tarpc's API only, never
//!   byte for byte. Events, init and done hooks and descriptor passing have
//!   no tarpc counterpart and are tested in `rpc.rs`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fork_core::{Template, WorkerHandle};
use fork_rpc::{Config, RpcEntry, RpcWorker, Setup};
use futures::StreamExt;
use integration_tests::{Failed, block_on, ensure, fail};
use serde::{Deserialize, Serialize};
use tarpc::client::RpcError;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::sync::watch;

#[tarpc::service]
trait Probe {
    async fn add(a: i64, b: i64) -> i64;
    async fn echo(s: String) -> String;
    async fn echo_bytes(bytes: Vec<u8>) -> Vec<u8>;
    /// `n` bytes of [`pattern`] `seed`.
    async fn bytes(n: u64, seed: u8) -> Vec<u8>;
    /// Sleeps `ms` (asynchronously), then returns it.
    async fn sleep(ms: u64) -> u64;
    /// `a + b`, after sleeping `ms`.
    async fn add_after(a: i64, b: i64, ms: u64) -> i64;
    /// Returns `tag` once `open(tag)` was called.
    async fn gate(tag: u64) -> u64;
    async fn open(tag: u64);
    /// Runs for `ms`, then returns `tag`; records its [`Phase`] under `tag`.
    async fn hold(tag: u64, ms: u64) -> u64;
    /// Whether `hold(tag)` started, waiting for it up to [`WAIT_LIMIT`].
    async fn started(tag: u64) -> bool;
    /// How `hold(tag)` ended, waiting for it up to [`WAIT_LIMIT`].
    async fn ended(tag: u64) -> Phase;
    /// Exits the worker with `code`.
    async fn exit(code: i32);
}

/// Where a `hold` handler is, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    NotStarted,
    Running,
    Finished,
    /// Dropped before it finished: its call was cancelled.
    Cancelled,
}

/// How long `started` and `ended` wait for the handler they ask about: a
/// limit, not a synchronisation (they return as soon as it happened).
const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// How long one side of a scenario may take before the test calls it hung.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

// ===== the service (one implementation, served by both paths) =====

/// What the worker's handlers record, for others to wait on.
#[derive(Debug, Default)]
struct Board {
    phases: HashMap<u64, Phase>,
    open: HashSet<u64>,
}

#[derive(Clone)]
struct ProbeServer {
    board: Rc<watch::Sender<Board>>,
}

impl ProbeServer {
    fn new() -> ProbeServer {
        ProbeServer {
            board: Rc::new(watch::Sender::new(Board::default())),
        }
    }

    fn phase(&self, tag: u64) -> Phase {
        let board = self.board.borrow();
        board.phases.get(&tag).copied().unwrap_or(Phase::NotStarted)
    }

    fn set_phase(&self, tag: u64, phase: Phase) {
        self.board.send_modify(|b| {
            b.phases.insert(tag, phase);
        });
    }

    /// Waits until `cond` holds of the board.
    async fn until(&self, cond: impl Fn(&Board) -> bool) {
        let mut rx = self.board.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = rx.wait_for(|b| cond(b)).await.map(drop);
    }

    /// Waits until `cond` holds of the board, up to [`WAIT_LIMIT`].
    async fn until_limit(&self, cond: impl Fn(&Board) -> bool) -> bool {
        tokio::time::timeout(WAIT_LIMIT, self.until(cond))
            .await
            .is_ok()
    }
}

/// Marks a `hold` handler cancelled if it is dropped while it runs.
struct CancelMark {
    server: ProbeServer,
    tag: u64,
}

impl Drop for CancelMark {
    fn drop(&mut self) {
        if self.server.phase(self.tag) == Phase::Running {
            self.server.set_phase(self.tag, Phase::Cancelled);
        }
    }
}

impl Probe for ProbeServer {
    async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    async fn echo(self, _: context::Context, s: String) -> String {
        s
    }

    async fn echo_bytes(self, _: context::Context, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }

    async fn bytes(self, _: context::Context, n: u64, seed: u8) -> Vec<u8> {
        pattern(n as usize, seed)
    }

    async fn sleep(self, _: context::Context, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn add_after(self, _: context::Context, a: i64, b: i64, ms: u64) -> i64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        a.wrapping_add(b)
    }

    async fn gate(self, _: context::Context, tag: u64) -> u64 {
        self.until(|b| b.open.contains(&tag)).await;
        tag
    }

    async fn open(self, _: context::Context, tag: u64) {
        self.board.send_modify(|b| {
            b.open.insert(tag);
        });
    }

    async fn hold(self, _: context::Context, tag: u64, ms: u64) -> u64 {
        self.set_phase(tag, Phase::Running);
        let _mark = CancelMark {
            server: self.clone(),
            tag,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.set_phase(tag, Phase::Finished);
        tag
    }

    async fn started(self, _: context::Context, tag: u64) -> bool {
        self.until_limit(|b| b.phases.contains_key(&tag)).await
    }

    async fn ended(self, _: context::Context, tag: u64) -> Phase {
        let ended =
            |b: &Board| matches!(b.phases.get(&tag), Some(Phase::Finished | Phase::Cancelled));
        self.until_limit(ended).await;
        self.phase(tag)
    }

    async fn exit(self, _: context::Context, code: i32) {
        std::process::exit(code);
    }
}

/// `len` bytes that differ with `seed` and along their length.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

// ===== the two paths =====

/// The fast path: fork-rpc's init hook.
fn probe(_: &mut Setup<()>) -> Result<ServeProbe<ProbeServer>, String> {
    Ok(ProbeServer::new().serve())
}
static FAST: RpcEntry<ProbeRequest, ProbeResponse> = fork_rpc::entry!(probe);

/// The oracle: tarpc's `BaseChannel` serving the worker's socket, each
/// request in a task of its own.
fn oracle(ctx: fork_core::Context) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime in the oracle worker");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = ctx.into_tokio_socket().expect("the oracle worker's socket");
        let transport = tarpc::serde_transport::new(
            Framed::new(socket, LengthDelimitedCodec::new()),
            Bincode::default(),
        );
        BaseChannel::with_defaults(transport)
            .execute(ProbeServer::new().serve())
            .for_each(|request| async {
                tokio::task::spawn_local(request);
            })
            .await;
    });
    0
}
static ORACLE: fork_core::Entry = fork_core::entry!(oracle);

type FastStub = fork_rpc::Client<ProbeRequest, ProbeResponse>;
type OracleStub = tarpc::client::Channel<ProbeRequest, ProbeResponse>;

/// One path's worker, as a scenario gets it.
struct Side<S> {
    probe: ProbeClient<S>,
    /// To wait for the worker's exit.
    process: WorkerHandle,
    /// The worker's handle: dropping it kills the worker (`kill_on_drop`).
    _worker: Box<dyn std::any::Any>,
}

/// The fast path's configuration: every request served at once, as
/// tarpc's `BaseChannel` does (see the intended differences).
fn fast_config() -> Config {
    Config::default().concurrent(tarpc::client::Config::default().max_in_flight_requests)
}

async fn fast_side() -> Result<Side<FastStub>, Failed> {
    let t = Template::shared().map_err(fail)?;
    let (client, worker) = RpcWorker::builder(t.fork().kill_on_drop(true), &FAST)
        .config(fast_config())
        .spawn()
        .await
        .map_err(fail)?;
    Ok(Side {
        probe: ProbeClient::from(client),
        process: worker.handle(),
        _worker: Box::new(worker),
    })
}

async fn oracle_side() -> Result<Side<OracleStub>, Failed> {
    let t = Template::shared().map_err(fail)?;
    let mut worker = t
        .fork()
        .kill_on_drop(true)
        .run(&ORACLE)
        .await
        .map_err(fail)?;
    let socket = worker
        .take_stream()
        .ok_or("the oracle worker has no socket")?;
    let transport = tarpc::serde_transport::new(
        Framed::new(socket, LengthDelimitedCodec::new()),
        Bincode::default(),
    );
    let probe = ProbeClient::new(tarpc::client::Config::default(), transport).spawn();
    Ok(Side {
        probe,
        process: worker.handle(),
        _worker: Box::new(worker),
    })
}

/// Runs one scenario on each path, on a fresh worker each: tarpc's path
/// must see `expected`, fork-rpc's what tarpc's saw.
async fn compare<O, FF, FO>(
    scenario: &str,
    expected: O,
    on_fast: impl FnOnce(Side<FastStub>) -> FF,
    on_oracle: impl FnOnce(Side<OracleStub>) -> FO,
) -> Result<(), Failed>
where
    O: Debug + PartialEq,
    FF: Future<Output = Result<O, Failed>>,
    FO: Future<Output = Result<O, Failed>>,
{
    let limit =
        |path: &'static str| move |_| format!("{scenario}, on {path}: hung for {SCENARIO_LIMIT:?}");
    let in_path = |path: &'static str| move |e: Failed| format!("{scenario}, on {path}: {e:?}");
    let tarpc_path = "tarpc's BaseChannel/NewClient path";
    let fast_path = "fork-rpc's fast path";
    let oracle = tokio::time::timeout(SCENARIO_LIMIT, on_oracle(oracle_side().await?))
        .await
        .map_err(limit(tarpc_path))?
        .map_err(in_path(tarpc_path))?;
    ensure!(
        oracle == expected,
        "{scenario}: {tarpc_path} saw\n    {oracle:?}\nwhere the scenario expects\n    \
         {expected:?}\n(the oracle, or the scenario, is off: this says nothing of fork-rpc)"
    );
    let fast = tokio::time::timeout(SCENARIO_LIMIT, on_fast(fast_side().await?))
        .await
        .map_err(limit(fast_path))?
        .map_err(in_path(fast_path))?;
    ensure!(
        fast == oracle,
        "{scenario}: {fast_path} saw\n    {fast:?}\nwhere {tarpc_path} saw\n    {oracle:?}"
    );
    Ok(())
}

/// A test running scenario module `$name` (its `run`, expecting its
/// `expected()`) on both paths.
macro_rules! on_both_paths {
    ($name:ident) => {
        (stringify!($name), || {
            block_on(compare(
                stringify!($name),
                $name::expected(),
                $name::run::<FastStub>,
                $name::run::<OracleStub>,
            ))
        })
    };
}

// ===== what the scenarios observe =====

/// What a call came back with, told apart as a user would.
#[derive(Debug, Clone, PartialEq)]
enum Reply<T> {
    Value(T),
    DeadlineExceeded,
    /// The server answered with an error of this kind.
    Server(std::io::ErrorKind),
    /// The connection is gone (tarpc's `Shutdown` or `Channel`; fork-rpc's
    /// `WorkerLost` is a `Channel` error): see the intended differences.
    Gone,
    /// Any other error, in its `Debug` form.
    Other(String),
}

impl<T> Reply<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Reply<U> {
        match self {
            Reply::Value(v) => Reply::Value(f(v)),
            Reply::DeadlineExceeded => Reply::DeadlineExceeded,
            Reply::Server(kind) => Reply::Server(kind),
            Reply::Gone => Reply::Gone,
            Reply::Other(e) => Reply::Other(e),
        }
    }
}

fn reply<T>(result: Result<T, RpcError>) -> Reply<T> {
    match result {
        Ok(v) => Reply::Value(v),
        Err(RpcError::DeadlineExceeded) => Reply::DeadlineExceeded,
        Err(RpcError::Server(e)) => Reply::Server(e.kind),
        Err(RpcError::Shutdown | RpcError::Channel(_)) => Reply::Gone,
        Err(e) => Reply::Other(format!("{e:?}")),
    }
}

/// A context whose deadline is `timeout` from now.
fn within(timeout: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    ctx
}

/// The length and an FNV-1a hash of `bytes`: a message, in short.
fn digest(bytes: &[u8]) -> (usize, u64) {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (bytes.len(), hash)
}

// ===== scenarios =====

/// Calls one after another: values of several types, and an async sleep.
mod serial_calls {
    use super::*;

    type Outcome = (
        Reply<i64>,
        Reply<i64>,
        Reply<String>,
        Reply<String>,
        Reply<u64>,
    );

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Outcome, Failed> {
        let p = &side.probe;
        Ok((
            reply(p.add(context::current(), 40, 2).await),
            reply(p.add(context::current(), i64::MIN, -1).await),
            reply(p.echo(context::current(), "héllo, wörld".into()).await),
            reply(p.echo(context::current(), String::new()).await),
            reply(p.sleep(context::current(), 20).await),
        ))
    }

    pub(super) fn expected() -> Outcome {
        (
            Reply::Value(42),
            Reply::Value(i64::MAX),
            Reply::Value("héllo, wörld".into()),
            Reply::Value(String::new()),
            Reply::Value(20),
        )
    }
}

/// 100 calls at once, each answered after its own delay: every reply
/// reaches the call it answers.
mod hundred_concurrent_calls {
    use super::*;

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Vec<Reply<i64>>, Failed> {
        let p = &side.probe;
        let calls =
            (0..100i64).map(|i| p.add_after(context::current(), i, 1000, (i * 37 % 23) as u64));
        Ok(futures::future::join_all(calls)
            .await
            .into_iter()
            .map(reply)
            .collect())
    }

    pub(super) fn expected() -> Vec<Reply<i64>> {
        (0..100).map(|i| Reply::Value(i + 1000)).collect()
    }
}

/// A call answered before one sent ahead of it: the second's reply comes
/// first, and the first still gets its own.
mod replies_out_of_order {
    use super::*;

    type Outcome = (Vec<&'static str>, Reply<u64>, Reply<i64>, Reply<()>);

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Outcome, Failed> {
        let p = &side.probe;
        let order = RefCell::new(Vec::new());
        // Sent first; answered only once `open(7)` is called, after the
        // reply to the second.
        let gated = async {
            let r = reply(p.gate(context::current(), 7).await);
            order.borrow_mut().push("gate(7)");
            r
        };
        let quick = async {
            let r = reply(p.add(context::current(), 1, 2).await);
            order.borrow_mut().push("add(1, 2)");
            (r, reply(p.open(context::current(), 7).await))
        };
        let (gated, (quick, opened)) = tokio::join!(gated, quick);
        Ok((order.into_inner(), gated, quick, opened))
    }

    pub(super) fn expected() -> Outcome {
        (
            vec!["add(1, 2)", "gate(7)"],
            Reply::Value(7),
            Reply::Value(3),
            Reply::Value(()),
        )
    }
}

/// Messages of 1 MiB both ways at once: requests and replies interleave
/// on the socket, and each arrives whole.
mod large_messages_both_ways {
    use super::*;

    const MIB: usize = 1 << 20;

    pub(super) async fn run<S: ProbeStub>(
        side: Side<S>,
    ) -> Result<Vec<Reply<(usize, u64)>>, Failed> {
        let p = &side.probe;
        let text = "é".repeat(MIB / 2);
        let (a, b, c, d, e) = tokio::join!(
            p.echo_bytes(context::current(), pattern(MIB, 1)),
            p.bytes(context::current(), MIB as u64, 2),
            p.echo_bytes(context::current(), pattern(MIB + 3, 3)),
            p.bytes(context::current(), MIB as u64 - 5, 4),
            p.echo(context::current(), text),
        );
        Ok(vec![
            reply(a).map(|v| digest(&v)),
            reply(b).map(|v| digest(&v)),
            reply(c).map(|v| digest(&v)),
            reply(d).map(|v| digest(&v)),
            reply(e).map(|s| digest(s.as_bytes())),
        ])
    }

    pub(super) fn expected() -> Vec<Reply<(usize, u64)>> {
        [
            pattern(MIB, 1),
            pattern(MIB, 2),
            pattern(MIB + 3, 3),
            pattern(MIB - 5, 4),
            "é".repeat(MIB / 2).into_bytes(),
        ]
        .iter()
        .map(|bytes| Reply::Value(digest(bytes)))
        .collect()
    }
}

/// A call whose deadline passes while its handler runs: the call fails
/// with `DeadlineExceeded`, the handler is cancelled, the connection goes
/// on.
mod deadline_expires {
    use super::*;

    type Outcome = (Reply<u64>, Reply<bool>, Reply<Phase>, Reply<i64>);

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Outcome, Failed> {
        let p = &side.probe;
        let (held, started) = tokio::join!(
            p.hold(within(Duration::from_millis(500)), 1, 60_000),
            p.started(context::current(), 1),
        );
        Ok((
            reply(held),
            reply(started),
            reply(p.ended(context::current(), 1).await),
            reply(p.add(context::current(), 2, 2).await),
        ))
    }

    pub(super) fn expected() -> Outcome {
        (
            Reply::DeadlineExceeded,
            Reply::Value(true),
            Reply::Value(Phase::Cancelled),
            Reply::Value(4),
        )
    }
}

/// A call future dropped while its handler runs (its deadline a minute
/// away): the cancellation reaches the handler; the connection goes on.
mod dropped_call {
    use super::*;

    type Outcome = (Reply<bool>, Reply<Phase>, Reply<i64>);

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Outcome, Failed> {
        let p = &side.probe;
        let mut call = Box::pin(p.hold(within(Duration::from_secs(60)), 2, 60_000));
        let started = tokio::select! {
            biased;
            r = &mut call => {
                return Err(format!("hold(60 s) returned {:?}", reply(r)).into());
            }
            started = p.started(context::current(), 2) => reply(started),
        };
        drop(call);
        Ok((
            started,
            reply(p.ended(context::current(), 2).await),
            reply(p.add(context::current(), 3, 3).await),
        ))
    }

    pub(super) fn expected() -> Outcome {
        (
            Reply::Value(true),
            Reply::Value(Phase::Cancelled),
            Reply::Value(6),
        )
    }
}

/// A worker that exits in a handler: that call and a call made after the
/// exit both fail (only that the connection is gone is compared: see the
/// intended differences).
mod call_after_the_worker_exited {
    use super::*;

    type Outcome = (Reply<()>, Option<i32>, Reply<i64>);

    pub(super) async fn run<S: ProbeStub>(mut side: Side<S>) -> Result<Outcome, Failed> {
        let exiting = reply(side.probe.exit(context::current(), 3).await);
        let status = side.process.wait().await.map_err(fail)?;
        let after = reply(side.probe.add(context::current(), 1, 2).await);
        Ok((exiting, status.code(), after))
    }

    pub(super) fn expected() -> Outcome {
        (Reply::Gone, Some(3), Reply::Gone)
    }
}

/// Dropping the last client after its calls were answered: the worker
/// sees the end of the stream and exits 0.
mod close_after_the_last_client {
    use super::*;

    type Outcome = (Reply<i64>, Option<i32>);

    pub(super) async fn run<S: ProbeStub>(side: Side<S>) -> Result<Outcome, Failed> {
        let Side {
            probe,
            mut process,
            _worker,
        } = side;
        let sum = reply(probe.add(context::current(), 5, 6).await);
        drop(probe);
        let status = process.wait().await.map_err(fail)?;
        Ok((sum, status.code()))
    }

    pub(super) fn expected() -> Outcome {
        (Reply::Value(11), Some(0))
    }
}

fn main() {
    fork_core::init();
    integration_tests::run_quietly(&[
        on_both_paths!(serial_calls),
        on_both_paths!(hundred_concurrent_calls),
        on_both_paths!(replies_out_of_order),
        on_both_paths!(large_messages_both_ways),
        on_both_paths!(deadline_expires),
        on_both_paths!(dropped_call),
        on_both_paths!(call_after_the_worker_exited),
        on_both_paths!(close_after_the_last_client),
    ]);
}
