//! [`Builder`]: a prefork server's listeners, knobs and reload callback.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fork_core::Template;
use tokio::sync::{mpsc, watch};

use super::events;
use super::listener::kind_of;
use super::manager::{Manager, Parts};
use super::signals::Sent;
use super::{Inner, Prefork};
use crate::config::{AcceptOrder, Config, Sizing, Spare};
use crate::entry::PreforkEntry;
use crate::error::{Error, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The reload callback, boxed.
pub(crate) type ReloadFn = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::result::Result<Template, BoxError>> + Send>>
        + Send
        + Sync,
>;

/// Builds a [`Prefork`] server: made by [`Prefork::builder`], ends in
/// [`start`](Builder::start).
#[must_use = "a Builder does nothing until start() is called"]
pub struct Builder {
    template: Template,
    entry: PreforkEntry,
    listeners: Vec<OwnedFd>,
    config: Config,
    on_reload: Option<ReloadFn>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("entry", &self.entry)
            .field("listeners", &self.listeners)
            .field("config", &self.config)
            .field("on_reload", &self.on_reload.is_some())
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(template: Template, entry: &PreforkEntry) -> Builder {
        Builder {
            template,
            entry: *entry,
            listeners: Vec::new(),
            config: Config::default(),
            on_reload: None,
        }
    }

    /// Adds a listening socket: a `std::net::TcpListener`, a
    /// `std::os::unix::net::UnixListener`, or any listening stream socket
    /// as an `OwnedFd` (a `tokio::net::TcpListener` through its
    /// `into_std()`). Every worker gets a duplicate; the server keeps it
    /// open until it stops, across reloads. Each worker's
    /// [`Context::listeners`](crate::Context::listeners) has them in this
    /// order.
    pub fn listener(mut self, listener: impl Into<OwnedFd>) -> Self {
        self.listeners.push(listener.into());
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Always `n` workers ([`Sizing::Fixed`], Parallel::Prefork's
    /// `max_workers`).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.sizing = Sizing::Fixed(n);
        self
    }

    /// Self-regulating sizing ([`Sizing::Spare`]).
    pub fn spare(mut self, spare: Spare) -> Self {
        self.config.sizing = Sizing::Spare(spare);
        self
    }

    /// Sets [`Config::maintenance_interval`].
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.config.maintenance_interval = interval;
        self
    }

    /// Sets [`Config::spawn_interval`].
    pub fn spawn_interval(mut self, interval: Duration) -> Self {
        self.config.spawn_interval = interval;
        self
    }

    /// Sets [`Config::err_respawn_interval`].
    pub fn err_respawn_interval(mut self, interval: Duration) -> Self {
        self.config.err_respawn_interval = interval;
        self
    }

    /// Sets [`Config::max_boot_failures`].
    pub fn max_boot_failures(mut self, failures: u32) -> Self {
        self.config.max_boot_failures = failures;
        self
    }

    /// Sets [`Config::graceful_timeout`].
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.config.graceful_timeout = timeout;
        self
    }

    /// Sets [`Config::start_timeout`].
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.config.start_timeout = limit;
        self
    }

    /// Sets [`Config::accept_order`].
    pub fn accept_order(mut self, order: AcceptOrder) -> Self {
        self.config.accept_order = order;
        self
    }

    /// Sets [`Config::heartbeat`].
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.config.heartbeat = period;
        self
    }

    /// Sets [`Config::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Sets [`Config::max_requests`] and [`Config::max_requests_jitter`].
    pub fn max_requests(mut self, requests: u64, jitter: u64) -> Self {
        self.config.max_requests = Some(requests);
        self.config.max_requests_jitter = jitter;
        self
    }

    /// Sets [`Config::data_backlog`].
    pub fn data_backlog(mut self, values: usize) -> Self {
        self.config.data_backlog = values;
        self
    }

    /// The callback [`Prefork::reload`] runs to prepare the next
    /// generation's template (Parallel::Prefork's `load_config()` between
    /// two `start` calls): typically a fresh [`Template::new`] with init
    /// functions that read the configuration again.
    pub fn on_reload<F, Fut, E>(mut self, reload: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Template, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.on_reload = Some(Arc::new(move || {
            let prepared = reload();
            Box::pin(async move { prepared.await.map_err(Into::into) })
        }));
        self
    }

    /// Starts the server: its manager task, which forks the first workers
    /// at once.
    ///
    /// # Errors
    ///
    /// [`Error::Listener`] if a listener is not a listening stream socket
    /// (TCP or unix); [`Error::NoRuntime`] outside a tokio runtime.
    ///
    /// # Panics
    ///
    /// Never; a server with no listener starts, and its workers'
    /// [`serve`](crate::Context::serve) fails (a worker may also accept
    /// nothing and serve by other means).
    pub fn start(self) -> Result<Prefork> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (index, fd) in self.listeners.into_iter().enumerate() {
            let kind = kind_of(index, &fd)?;
            listeners.push((fd, kind));
        }
        let (stats_tx, stats) = watch::channel(Default::default());
        let (done_tx, done) = watch::channel(None);
        let (commands_tx, commands) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(256);
        let (sink, untaken) = events::channel(self.config.data_backlog);
        let sent = Sent::default();
        let graceful_timeout = self.config.graceful_timeout;
        let manager = Manager::new(
            Parts {
                config: self.config,
                entry: self.entry,
                listeners,
                template: self.template,
                stats: stats_tx,
                done: done_tx,
                sink,
                sent: sent.clone(),
            },
            events_tx,
        );
        runtime.spawn(manager.run(commands, events));
        runtime.spawn(super::systemd::ready_when_started(stats.clone()));
        Ok(Prefork {
            inner: Arc::new(Inner {
                commands: commands_tx,
                stats,
                done,
                on_reload: self.on_reload,
                events: untaken,
                sent,
                received: Mutex::new(None),
                graceful_timeout,
            }),
        })
    }
}
