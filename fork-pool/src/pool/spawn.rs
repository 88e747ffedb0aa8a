//! The seams between the pool and its worker processes, as tokio's process
//! module has `Kill` and `Wait`: starting a worker ([`Spawn`]), calling it
//! ([`Conn`]), signalling, reaping and measuring it ([`Process`]), and
//! watching it ([`Watch`]). The real implementation is over fork-rpc
//! ([`RpcSpawn`]); the unit tests use a double (`testing.rs`).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};

use fork_core::Signal;
use futures::Stream;
use futures::future::BoxFuture;
use futures::future::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::context::Context;

use super::host::{Connect, Source};

/// The types a pool is made of. No bounds, so that every struct of the pool
/// can name them; [`Spawn`] adds the behaviour.
pub(crate) trait Kind {
    /// The requests of the workers' service.
    type Req;
    /// Its responses.
    type Resp;
    /// The events workers send.
    type Ev;
    /// A worker's connection.
    type Conn;
    /// A worker's process.
    type Process;
}

/// A worker's connection, as jobs use it.
pub(crate) trait Conn: Send + Sync + 'static {
    type Req;
    type Resp;
    /// Makes a call (sent when first polled). Its future holds the
    /// connection (it borrows nothing).
    fn call(
        self: Arc<Self>,
        ctx: Context,
        request: Wire<Self::Req>,
    ) -> impl Future<Output = Result<Self::Resp, RpcError>> + Send + Unpin + 'static;
    /// Whether the connection has ended (the worker went away or sent what
    /// cannot be read).
    fn is_closed(&self) -> bool;
    /// Whether the worker asked to be retired.
    fn retire_requested(&self) -> bool;
}

/// A worker's process: signal it, wait for it, measure it. Cheap to clone.
pub(crate) trait Process: Clone + Send + Sync + 'static {
    /// Sends `signal` (nothing if the worker is gone).
    fn signal(&self, signal: Signal);
    /// Waits until it exited and was reaped; `None` if that cannot be known
    /// any more (its template is gone).
    fn wait(&mut self) -> impl Future<Output = Option<ExitStatus>> + Send;
    /// Its resident memory in bytes. Blocking (it may read `/proc`): call it
    /// from `spawn_blocking`.
    fn rss(&self) -> Option<u64>;
}

/// The rest of a started worker, for the task watching it.
pub(crate) trait Watch<Ev>: Send + 'static {
    /// Resolves when the worker asks to be retired (never, if it does not).
    fn retire_request(&self) -> BoxFuture<'_, ()>;
    /// Takes the stream of its events (once).
    fn events(&mut self) -> Option<Events<Ev>>;
}

/// A request as the pool sends it: owned (the usual case), or shared with
/// the retries that may send it again (an idempotent request), so that a
/// retry needs neither a copy of it nor a serialisation round trip. It
/// serialises exactly as the request itself: the workers see no difference.
pub(crate) enum Wire<Req> {
    Owned(Req),
    Shared(Arc<Req>),
}

/// A worker's events.
pub(crate) type Events<Ev> = Pin<Box<dyn Stream<Item = fork_rpc::Result<Ev>> + Send>>;

/// A started worker.
pub(crate) struct Started<K: Kind> {
    pub(crate) pid: u32,
    pub(crate) conn: K::Conn,
    pub(crate) process: K::Process,
    pub(crate) watch: Box<dyn Watch<K::Ev>>,
}

/// Starts workers: the pool's one way to make processes, on its hosts
/// (numbered as the builder listed them).
pub(crate) trait Spawn:
    Kind<
        Req: Send + Sync + 'static,
        Resp: Send + 'static,
        Ev: Send + 'static,
        Conn: Conn<Req = Self::Req, Resp = Self::Resp>,
        Process: Process,
    > + Send
    + Sync
    + Sized
    + 'static
{
    /// Starts one worker on `host`, giving up (and leaving nothing of it)
    /// when `give_up` resolves first: then
    /// [`fork_rpc::Error::StartAbandoned`].
    fn spawn(
        &self,
        host: usize,
        give_up: BoxFuture<'static, ()>,
    ) -> impl Future<Output = fork_rpc::Result<Started<Self>>> + Send;

    /// Makes `host`'s template anew (a remote one: connects it).
    fn connect(&self, host: usize) -> impl Future<Output = fork_rpc::Result<()>> + Send;

    /// Resolves when the connection to `host`'s template (as it is now) is
    /// lost, with why; `None` for a template that cannot be lost (a local
    /// one).
    fn lost(&self, host: usize) -> Option<BoxFuture<'static, fork_rpc::Error>>;
}

// ===== impl RpcSpawn =====

/// Workers forked from templates, each serving an entry over fork-rpc.
pub(crate) struct RpcSpawn<Req, Resp, Ev> {
    pub(crate) hosts: Vec<HostTemplate>,
    pub(crate) entry: fork_rpc::RpcEntry<Req, Resp, Ev>,
    pub(crate) rpc: fork_rpc::Config,
}

/// A host's template as it is now, and how to make it anew.
pub(crate) struct HostTemplate {
    template: Mutex<Option<fork_core::Template>>,
    connect: Option<Connect>,
}

impl HostTemplate {
    pub(crate) fn new(source: Source) -> Self {
        match source {
            Source::Template(template) => HostTemplate {
                template: Mutex::new(Some(template)),
                connect: None,
            },
            Source::Connect(connect) => HostTemplate {
                template: Mutex::new(None),
                connect: Some(connect),
            },
        }
    }

    fn current(&self) -> Option<fork_core::Template> {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<Req, Resp, Ev> Kind for RpcSpawn<Req, Resp, Ev> {
    type Req = Req;
    type Resp = Resp;
    type Ev = Ev;
    type Conn = fork_rpc::Client<Wire<Req>, Resp>;
    type Process = fork_core::WorkerHandle;
}

impl<Req, Resp, Ev> Spawn for RpcSpawn<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    async fn spawn(
        &self,
        host: usize,
        give_up: BoxFuture<'static, ()>,
    ) -> fork_rpc::Result<Started<Self>> {
        let template = self.hosts[host]
            .current()
            .ok_or(fork_core::Error::TemplateGone { status: None })?;
        let mut fork = template.fork();
        // The same entry, its clients sending requests as `Wire`s (which
        // serialise as the requests themselves).
        let entry = fork_rpc::RpcEntry::<Wire<Req>, Resp, Ev>::from_entry(*self.entry.entry());
        let (conn, worker) = fork_rpc::RpcWorker::builder(&mut fork, &entry)
            .config(self.rpc.clone())
            .spawn_until(give_up)
            .await?;
        Ok(Started {
            pid: worker.id(),
            conn,
            process: worker.handle(),
            watch: Box::new(worker),
        })
    }

    async fn connect(&self, host: usize) -> fork_rpc::Result<()> {
        let host = &self.hosts[host];
        let Some(connect) = &host.connect else {
            // Given as a template, which was lost: nothing makes it again.
            return Err(fork_core::Error::TemplateGone { status: None }.into());
        };
        let template = connect().await?;
        *host.template.lock().unwrap_or_else(PoisonError::into_inner) = Some(template);
        Ok(())
    }

    fn lost(&self, host: usize) -> Option<BoxFuture<'static, fork_rpc::Error>> {
        let template = self.hosts[host].current()?;
        template.host()?;
        Some(template.lost().map(fork_rpc::Error::from).boxed())
    }
}

// ===== impl Wire =====

impl<Req> Wire<Req> {
    pub(crate) fn get(&self) -> &Req {
        match self {
            Wire::Owned(request) => request,
            Wire::Shared(request) => request,
        }
    }
}

impl<Req: Serialize> Serialize for Wire<Req> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.get().serialize(serializer)
    }
}

impl<Req: RequestName> RequestName for Wire<Req> {
    fn name(&self) -> &str {
        self.get().name()
    }
}

// ===== impl Conn for fork_rpc::Client =====

impl<Req, Resp> Conn for fork_rpc::Client<Wire<Req>, Resp>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Req = Req;
    type Resp = Resp;

    fn call(
        self: Arc<Self>,
        ctx: Context,
        request: Wire<Req>,
    ) -> impl Future<Output = Result<Resp, RpcError>> + Send + Unpin + 'static {
        self.call_owned(ctx, request)
    }

    fn is_closed(&self) -> bool {
        fork_rpc::Client::is_closed(self)
    }

    fn retire_requested(&self) -> bool {
        fork_rpc::Client::retire_requested(self)
    }
}

// ===== impl Process for fork_core::WorkerHandle =====

impl Process for fork_core::WorkerHandle {
    fn signal(&self, signal: Signal) {
        let _ = fork_core::WorkerHandle::signal(self, signal);
    }

    async fn wait(&mut self) -> Option<ExitStatus> {
        fork_core::WorkerHandle::wait(self).await.ok()
    }

    fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

// ===== impl Watch for fork_rpc::RpcWorker =====

impl<Ev: DeserializeOwned + Send + 'static> Watch<Ev> for fork_rpc::RpcWorker<Ev> {
    fn retire_request(&self) -> BoxFuture<'_, ()> {
        Box::pin(fork_rpc::RpcWorker::retire_request(self))
    }

    fn events(&mut self) -> Option<Events<Ev>> {
        Some(Box::pin(fork_rpc::RpcWorker::events(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_spawn<S: Spawn>() {}

    #[test]
    fn the_real_spawner_fits_the_seam() {
        assert_spawn::<RpcSpawn<String, String, ()>>();
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Request {
        Add { a: u64, b: u64 },
        Ping,
    }

    #[test]
    fn a_wire_serialises_as_its_request() {
        let plain = bincode::serialize(&Request::Add { a: 1, b: 2 }).unwrap();
        let owned = bincode::serialize(&Wire::Owned(Request::Add { a: 1, b: 2 })).unwrap();
        let shared =
            bincode::serialize(&Wire::Shared(Arc::new(Request::Add { a: 1, b: 2 }))).unwrap();
        assert_eq!(owned, plain);
        assert_eq!(shared, plain);
        let back: Request = bincode::deserialize(&shared).unwrap();
        assert_eq!(back, Request::Add { a: 1, b: 2 });
        assert_ne!(
            bincode::serialize(&Wire::Owned(Request::Ping)).unwrap(),
            plain
        );
    }
}
