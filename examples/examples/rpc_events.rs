//! A worker that reports its progress while it works, from a template
//! prepared with preloaded state.
//!
//! Shows: a template prepared with an init function (a table of primes,
//! built once and shared copy-on-write by every worker) and an argument; an
//! RPC worker's init hook reading its arguments and descriptors, failing
//! when one is missing (the error of `Builder::spawn`), and registering a
//! done hook; events sent with `Setup::events` in the worker and printed by
//! the parent as they arrive through `RpcWorker::events`, in order with the
//! replies; the done hook writing a summary to a pipe once the parent has
//! closed the client.
//!
//! Run: `cargo run --example rpc_events`

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use fork_core::{InitFn, Template};
use fork_rpc::{EventSender, RpcEntry, RpcWorker, Setup};
use serde::{Deserialize, Serialize};
use tarpc::context;
use tokio::io::AsyncReadExt;

// ANCHOR: preload
/// The primes below 2^16: enough to test any `u32` by trial division.
static PRIMES: OnceLock<Vec<u64>> = OnceLock::new();

/// An init function: runs once, in the template.
fn load_primes(below: u64) -> Result<(), String> {
    let mut primes: Vec<u64> = Vec::new();
    for n in 2..below {
        if primes
            .iter()
            .take_while(|&&p| p * p <= n)
            .all(|&p| !n.is_multiple_of(p))
        {
            primes.push(n);
        }
    }
    PRIMES.set(primes).map_err(|_| "loaded twice".to_owned())
}

static LOAD_PRIMES: InitFn<u64> = fork_core::init_fn!(load_primes);
// ANCHOR_END: preload

fn is_prime(n: u64) -> bool {
    let primes = PRIMES.get().expect("the template loaded the primes");
    n >= 2
        && primes
            .iter()
            .take_while(|&&p| p * p <= n)
            .all(|&p| !n.is_multiple_of(p))
}

// ANCHOR: service
#[tarpc::service]
trait Primes {
    /// Counts the primes in `from..to`, reporting progress as it goes.
    async fn count(from: u64, to: u64) -> u64;
}

/// What the worker reports while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Progress {
    /// Started on `total` numbers.
    Started { total: u64 },
    /// `done` numbers checked so far, `found` of them prime.
    Checked { done: u64, found: u64 },
}
// ANCHOR_END: service

// ANCHOR: server
#[derive(Clone)]
struct PrimesServer {
    /// Report progress every `step` numbers.
    step: u64,
    events: EventSender<Progress>,
    /// For the done hook: calls served and events sent.
    calls: Rc<Cell<u32>>,
    sent: Rc<Cell<u32>>,
}

impl PrimesServer {
    async fn report(&self, progress: Progress) {
        self.events.send(&progress).expect("the parent is there");
        self.sent.set(self.sent.get() + 1);
        // Let the worker's writer send the event now. Events are written
        // when the handler waits, and this one never does otherwise: they
        // would all leave in one burst, with the reply.
        tokio::task::yield_now().await;
    }
}

impl Primes for PrimesServer {
    async fn count(self, _: context::Context, from: u64, to: u64) -> u64 {
        self.calls.set(self.calls.get() + 1);
        self.report(Progress::Started { total: to - from }).await;
        let mut found = 0;
        for n in from..to {
            found += u64::from(is_prime(n));
            let done = n + 1 - from;
            if done.is_multiple_of(self.step) || n + 1 == to {
                self.report(Progress::Checked { done, found }).await;
            }
        }
        found
    }
}
// ANCHOR_END: server

// ANCHOR: init
/// The init hook: argument 0 came with the template, argument 1 with this
/// fork; the one descriptor is the pipe the done hook writes to.
fn primes(setup: &mut Setup<Progress>) -> Result<ServePrimes<PrimesServer>, String> {
    let name: String = setup.arg(0).map_err(|e| e.to_string())?;
    let step: u64 = setup.arg(1).map_err(|e| format!("no step: {e}"))?;
    let mut summary = File::from(setup.take_fds().pop().ok_or("no pipe for the summary")?);
    let server = PrimesServer {
        step,
        events: setup.events(),
        calls: Rc::default(),
        sent: Rc::default(),
    };
    let (calls, sent) = (server.calls.clone(), server.sent.clone());
    // The done hook: runs once the parent closed the connection and every
    // reply was flushed, just before the worker exits 0.
    setup.on_done(move || {
        let line = format!("{name}: {} calls, {} events", calls.get(), sent.get());
        summary
            .write_all(line.as_bytes())
            .expect("the parent reads it");
    });
    Ok(server.serve())
}

static PRIMES_WORKER: RpcEntry<PrimesRequest, PrimesResponse, Progress> = fork_rpc::entry!(primes);
// ANCHOR_END: init

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: template
    // Our own template, prepared once: the primes are loaded in it, and the
    // argument is inherited by every worker forked from it.
    let template = Template::new()?;
    template.init(&LOAD_PRIMES, &(1 << 16)).arg("prime counter");
    template.ready().await?;
    // ANCHOR_END: template

    // ANCHOR: init_failed
    // Without its step argument, the init hook fails: that is spawn's error.
    let err = RpcWorker::builder(&mut template.fork(), &PRIMES_WORKER)
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(&err, fork_rpc::Error::Init(m) if m.starts_with("no step")));
    // ANCHOR_END: init_failed
    println!("without a step: {err}");

    // ANCHOR: spawn
    // Argument 1: report every 25 000 numbers. The descriptor: a pipe for
    // the done hook's summary, blocking as the worker writes it.
    let (summary_w, mut summary_r) = tokio::net::unix::pipe::pipe()?;
    let summary_w = summary_w.into_blocking_fd()?;
    let mut fork = template.fork();
    fork.arg(&25_000u64).fd(&summary_w);
    let (client, mut worker) = RpcWorker::builder(&mut fork, &PRIMES_WORKER)
        .spawn()
        .await?;
    drop(summary_w); // the worker holds its own copy
    let primes = PrimesClient::from(client);
    let mut events = worker.events().expect("taken once");
    // ANCHOR_END: spawn

    // ANCHOR: events
    let mut received = 0;
    for (from, to) in [(0, 100_000), (1_000_000_000, 1_000_100_000)] {
        println!("count({from}, {to}) on worker {}:", worker.id());
        let call = primes.count(context::current(), from, to);
        let mut call = std::pin::pin!(call);
        let start = Instant::now();
        let mut last = None;
        let mut show = |event: Progress| {
            println!("  {:>4} ms  event {event:?}", start.elapsed().as_millis());
            received += 1;
            last = Some(event);
        };
        let found = loop {
            tokio::select! {
                Some(event) = events.recv() => show(event?),
                reply = &mut call => break reply?,
            }
        };
        // Every event sent before the reply is in the stream by the time
        // the reply is.
        while let Some(event) = events.try_recv() {
            show(event?);
        }
        println!("  {:>4} ms  reply {found}", start.elapsed().as_millis());
        // The last event came before the reply, and said the same.
        let done = to - from;
        assert_eq!(last, Some(Progress::Checked { done, found }));
        assert!(events.try_recv().is_none());
        if from == 0 {
            assert_eq!(found, 9592);
        }
    }
    // ANCHOR_END: events

    // ANCHOR: done
    drop(primes); // close: the worker runs its done hook and exits 0
    let status = worker.wait().await?;
    assert!(status.success());
    let mut summary = String::new();
    summary_r.read_to_string(&mut summary).await?;
    assert_eq!(
        summary,
        format!("prime counter: 2 calls, {received} events")
    );
    // ANCHOR_END: done
    println!(
        "worker {} exited with {status}; its done hook wrote {summary:?}",
        worker.id()
    );
    Ok(())
}
