//! A test double for the seams in `spawn`: workers that are no processes.
//! A job ([`Work`]) takes its time on tokio's clock and answers the
//! worker's pid; a worker exits 0 when its connection is dropped, dies on
//! `SIGKILL`, and on `SIGTERM` unless it is stuck. Everything is recorded
//! with tokio's clock, so the tests run on paused time.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fork_core::Signal;
use futures::FutureExt;
use futures::future::BoxFuture;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tokio::sync::watch;
use tokio::time::Instant;

use super::host::Slot;
use super::member::Member;
use super::metrics::Metrics;
use super::shared::Shared;
use super::spawn::{Conn, Events, Kind, Process, Spawn, Started, Watch, Wire};
use crate::config::Config;

/// The double's spawner; clones share the same world.
#[derive(Clone, Default)]
pub(crate) struct Fake {
    pub(crate) world: Arc<Mutex<World>>,
}

/// What the double's workers did, and how they behave.
#[derive(Default)]
pub(crate) struct World {
    /// When each spawn was attempted.
    pub(crate) attempts: Vec<Instant>,
    /// The next spawns to fail.
    pub(crate) failures: u32,
    /// How long a start takes.
    pub(crate) start_time: Duration,
    /// Whether new workers are stuck: they neither die on `SIGTERM` nor
    /// exit when their connection is closed.
    pub(crate) stuck: bool,
    /// The resident memory of new workers.
    pub(crate) rss: u64,
    /// Every worker started.
    pub(crate) workers: Vec<FakeProcess>,
    /// The hosts (one local host if none is given).
    pub(crate) hosts: Vec<FakeHost>,
}

/// A host of the double.
pub(crate) struct FakeHost {
    pub(crate) name: &'static str,
    pub(crate) max: Option<usize>,
    pub(crate) weight: u32,
    /// Remote: it can be lost, and (unless `given`) it connects when
    /// first needed.
    pub(crate) remote: bool,
    /// Given connected (`Host::new`): it cannot be connected again.
    pub(crate) given: bool,
    /// Unreachable: connecting fails, and so do spawns.
    pub(crate) down: bool,
    /// When it was connected, or tried (once the attempt ended).
    pub(crate) connects: Vec<Instant>,
    /// How long connecting takes.
    pub(crate) connect_time: Duration,
    /// Counts its losses.
    pub(crate) losses: Arc<watch::Sender<u64>>,
}

impl FakeHost {
    /// A local host.
    pub(crate) fn local(name: &'static str) -> Self {
        FakeHost {
            name,
            max: None,
            weight: 1,
            remote: false,
            given: false,
            down: false,
            connects: Vec::new(),
            connect_time: Duration::ZERO,
            losses: Arc::new(watch::Sender::new(0)),
        }
    }

    /// A remote host, connected when first needed.
    pub(crate) fn remote(name: &'static str) -> Self {
        FakeHost {
            remote: true,
            ..FakeHost::local(name)
        }
    }

    fn slot(&self) -> Slot {
        Slot::new(
            self.name.to_owned(),
            self.max,
            self.weight,
            !self.remote || self.given,
        )
    }
}

/// A job for the double's workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Work {
    /// How long it takes.
    pub(crate) time: Duration,
    /// The worker's resident memory afterwards, if it changes.
    pub(crate) rss: Option<u64>,
}

/// A job that takes `time`.
pub(crate) fn work(time: Duration) -> Work {
    Work { time, rss: None }
}

/// A job that makes its worker's memory `rss`.
pub(crate) fn grow(rss: u64) -> Work {
    Work {
        time: Duration::from_millis(1),
        rss: Some(rss),
    }
}

/// A worker "process".
#[derive(Clone)]
pub(crate) struct FakeProcess {
    pub(crate) pid: u32,
    /// Its host.
    pub(crate) host: usize,
    exit: Arc<watch::Sender<Option<ExitStatus>>>,
    /// Signals received, and when.
    pub(crate) signals: Arc<Mutex<Vec<(Signal, Instant)>>>,
    stuck: bool,
    pub(crate) rss: Arc<AtomicU64>,
}

/// A worker's "connection".
pub(crate) struct FakeConn {
    process: FakeProcess,
    pub(crate) retire: AtomicBool,
}

struct FakeWatch;

// ===== impl Fake =====

impl Fake {
    pub(crate) fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Host `host` is lost: unreachable, and its connection reported lost
    /// (its workers' fate unknown: they end only if the pool ends them).
    pub(crate) fn lose(&self, host: usize) {
        let mut w = self.world();
        w.hosts[host].down = true;
        w.hosts[host].losses.send_modify(|n| *n += 1);
    }

    /// Host `host` is reachable again.
    pub(crate) fn heal(&self, host: usize) {
        self.world().hosts[host].down = false;
    }

    /// The hosts of the workers started, in order.
    pub(crate) fn worker_hosts(&self) -> Vec<usize> {
        self.world().workers.iter().map(|p| p.host).collect()
    }
}

impl Kind for Fake {
    type Req = Work;
    type Resp = u32;
    type Ev = ();
    type Conn = FakeConn;
    type Process = FakeProcess;
}

impl Spawn for Fake {
    async fn spawn(
        &self,
        host: usize,
        give_up: BoxFuture<'static, ()>,
    ) -> fork_rpc::Result<Started<Self>> {
        let (fail, start_time) = {
            let mut w = self.world();
            w.attempts.push(Instant::now());
            if w.hosts[host].down {
                return Err(fork_core::Error::TemplateGone { status: None }.into());
            }
            let fail = w.failures > 0;
            w.failures = w.failures.saturating_sub(1);
            (fail, w.start_time)
        };
        tokio::select! {
            () = tokio::time::sleep(start_time) => {}
            () = give_up => return Err(fork_rpc::Error::StartAbandoned { pid: None }),
        }
        if fail {
            return Err(fork_rpc::Error::Init("the double's init failed".into()));
        }
        let mut w = self.world();
        let mut process = FakeProcess::new(1000 + w.workers.len() as u32, w.stuck);
        process.host = host;
        process.rss.store(w.rss, Ordering::Relaxed);
        w.workers.push(process.clone());
        Ok(Started {
            pid: process.pid,
            conn: FakeConn {
                process: process.clone(),
                retire: AtomicBool::new(false),
            },
            process,
            watch: Box::new(FakeWatch),
        })
    }

    async fn connect(&self, host: usize) -> fork_rpc::Result<()> {
        let time = self.world().hosts[host].connect_time;
        tokio::time::sleep(time).await;
        let mut w = self.world();
        let host = &mut w.hosts[host];
        host.connects.push(Instant::now());
        if host.down {
            return Err(
                fork_core::Error::RemoteConnect(std::io::ErrorKind::TimedOut.into()).into(),
            );
        }
        Ok(())
    }

    fn lost(&self, host: usize) -> Option<BoxFuture<'static, fork_rpc::Error>> {
        let w = self.world();
        let host = &w.hosts[host];
        if !host.remote {
            return None;
        }
        let mut losses = host.losses.subscribe();
        losses.mark_unchanged();
        Some(
            async move {
                let _ = losses.changed().await;
                fork_core::Error::TemplateGone { status: None }.into()
            }
            .boxed(),
        )
    }
}

// ===== impl FakeProcess =====

impl FakeProcess {
    fn new(pid: u32, stuck: bool) -> Self {
        FakeProcess {
            pid,
            host: 0,
            exit: Arc::new(watch::Sender::new(None)),
            signals: Arc::default(),
            stuck,
            rss: Arc::default(),
        }
    }

    fn end(&self, status: ExitStatus) {
        self.exit.send_if_modified(|exit| {
            let first = exit.is_none();
            exit.get_or_insert(status);
            first
        });
    }

    /// How it ended, if it did.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// The signals it received.
    pub(crate) fn signals(&self) -> Vec<(Signal, Instant)> {
        self.signals.lock().unwrap().clone()
    }

    /// Dies at once, as if killed from outside.
    pub(crate) fn crash(&self) {
        self.end(ExitStatus::from_raw(Signal::SIGKILL as i32));
    }
}

impl Process for FakeProcess {
    fn signal(&self, signal: Signal) {
        if self.exited().is_some() {
            return;
        }
        self.signals.lock().unwrap().push((signal, Instant::now()));
        if signal == Signal::SIGKILL || (signal == Signal::SIGTERM && !self.stuck) {
            self.end(ExitStatus::from_raw(signal as i32));
        }
    }

    async fn wait(&mut self) -> Option<ExitStatus> {
        let mut exit = self.exit.subscribe();
        exit.wait_for(Option::is_some).await.ok().and_then(|s| *s)
    }

    fn rss(&self) -> Option<u64> {
        Some(self.rss.load(Ordering::Relaxed))
    }
}

// ===== impl FakeConn =====

impl Conn for FakeConn {
    type Req = Work;
    type Resp = u32;

    fn call(
        self: Arc<Self>,
        _ctx: Context,
        work: Wire<Work>,
    ) -> impl Future<Output = Result<u32, RpcError>> + Send + Unpin + 'static {
        let work = *work.get();
        async move {
            let mut exit = self.process.exit.subscribe();
            tokio::select! {
                () = tokio::time::sleep(work.time) => {
                    if let Some(rss) = work.rss {
                        self.process.rss.store(rss, Ordering::Relaxed);
                    }
                    Ok(self.process.pid)
                }
                _ = exit.wait_for(Option::is_some) => Err(RpcError::Shutdown),
            }
        }
        .boxed()
    }

    fn is_closed(&self) -> bool {
        self.process.exited().is_some()
    }

    fn retire_requested(&self) -> bool {
        self.retire.load(Ordering::Relaxed)
    }
}

impl Drop for FakeConn {
    /// The connection closed: the worker finishes and exits 0, unless it
    /// is stuck.
    fn drop(&mut self) {
        if !self.process.stuck {
            self.process.end(ExitStatus::from_raw(0));
        }
    }
}

// ===== impl Watch for FakeWatch =====

impl Watch<()> for FakeWatch {
    fn retire_request(&self) -> BoxFuture<'_, ()> {
        std::future::pending().boxed()
    }

    fn events(&mut self) -> Option<Events<()>> {
        None
    }
}

/// A worker of the double, as a member, for tests of plain state.
pub(crate) fn member(id: u64) -> Member<Fake> {
    let process = FakeProcess::new(1000 + id as u32, false);
    let conn = FakeConn {
        process: process.clone(),
        retire: AtomicBool::new(false),
    };
    Member::new(id, process.pid, 0, conn, process, None, Instant::now())
}

/// A pool of the double's workers, and the double.
pub(crate) fn pool(config: Config, world: World) -> (Arc<Shared<Fake>>, Fake) {
    pool_with(config, world, Metrics::none())
}

/// The same, with its metrics.
pub(crate) fn pool_with(
    config: Config,
    world: World,
    metrics: Metrics,
) -> (Arc<Shared<Fake>>, Fake) {
    let mut world = world;
    if world.hosts.is_empty() {
        world.hosts.push(FakeHost::local("local"));
    }
    let slots = world.hosts.iter().map(FakeHost::slot).collect();
    let fake = Fake {
        world: Arc::new(Mutex::new(world)),
    };
    (
        Shared::start(config, slots, fake.clone(), None, metrics),
        fake,
    )
}

/// A context whose deadline is far (an hour).
pub(crate) fn ctx() -> Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(3600);
    ctx
}

/// `fut`, or a panic if the pool gets stuck (instead of a test that hangs).
pub(crate) async fn settle<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(24 * 3600), fut)
        .await
        .expect("the pool got stuck")
}

/// How a worker that was closed ends.
pub(crate) fn exit_0() -> Option<ExitStatus> {
    Some(ExitStatus::from_raw(0))
}
