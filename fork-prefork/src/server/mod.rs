//! The parent's side: [`Prefork`], the handle to a running server, its
//! [`Builder`], and the manager task behind them.
//!
//! - `builder`: [`Builder`], the knobs and `start`;
//! - `events`: [`Events`], data from the workers and their reaps;
//! - `listener`: checking the listening sockets;
//! - `manager`: the task that keeps the workers;
//! - `monitor`: one task per worker, reading its reports;
//! - `signals`: trapping the parent's signals ([`Signals`]), and
//!   signalling the workers;
//! - `stats`: [`Stats`];
//! - `systemd`: the service manager's notifications (`sd_notify`).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fork_core::{Signal, Template};
use tokio::sync::{mpsc, oneshot, watch};

mod builder;
mod events;
mod listener;
mod manager;
mod monitor;
mod signals;
mod stats;
mod systemd;

pub use self::builder::Builder;
pub use self::events::{Data, Event, Events, ExitReason, Reaped};
pub use self::signals::{SignalAction, Signals};
pub use self::stats::{Stats, WorkerInfo, WorkerState};

use self::builder::ReloadFn;
use self::events::Untaken;
use self::manager::{Command, Resize};
use self::signals::Sent;
use crate::entry::PreforkEntry;
use crate::error::{Error, Result};

/// A running prefork server: the handle to its manager task.
///
/// Cheap to clone. When the last handle is dropped, the server stops
/// gracefully in the background, as [`stop`](Prefork::stop) would.
#[derive(Clone)]
pub struct Prefork {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
    done: watch::Receiver<Option<Result<()>>>,
    on_reload: Option<ReloadFn>,
    events: Untaken,
    /// The signals sent to workers, shared with the manager.
    sent: Sent,
    /// The last signal the trap acted on.
    received: Mutex<Option<Signal>>,
    /// How long a rolling restart waits for a worker it signalled.
    graceful_timeout: Duration,
}

impl fmt::Debug for Prefork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefork")
            .field("stats", &*self.inner.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl Prefork {
    /// Starts building a server whose workers are forked from `template`
    /// (prepared as you like: preloaded state, arguments, descriptors) and
    /// run `entry`.
    pub fn builder(template: Template, entry: &PreforkEntry) -> Builder {
        Builder::new(template, entry)
    }

    /// The server's state now.
    pub fn stats(&self) -> Stats {
        self.inner.stats.borrow().clone()
    }

    /// Takes the stream of [`Event`]s: the data workers send
    /// ([`Link::yell`](crate::Link::yell), Parallel::MPM::Prefork's
    /// `pf_kid_yell`) and a [reap](Event::Reaped) for every worker, with its
    /// pid, generation and exit status (Parallel::Prefork's
    /// `on_child_reap`). Once: `None` afterwards.
    ///
    /// Events that happen before it is taken are dropped, so that a server
    /// whose events nobody reads hoards nothing: take it right after
    /// [`start`](Builder::start), before awaiting anything (no worker can
    /// have sent anything by then: forking goes through the template). The
    /// manager never waits for the reader: see [`Events`].
    ///
    /// ```no_run
    /// # async fn doc(server: fork_prefork::Prefork) {
    /// use fork_prefork::Event;
    ///
    /// let mut events = server.events().expect("taken once");
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.recv().await {
    ///         match event {
    ///             Event::Data(data) => match data.decode::<String>() {
    ///                 Ok(text) => println!("worker {} says {text}", data.pid),
    ///                 Err(e) => eprintln!("worker {}: {e}", data.pid),
    ///             },
    ///             Event::Reaped(r) => println!("worker {} ended: {:?}", r.pid, r.status),
    ///             _ => {}
    ///         }
    ///     }
    /// });
    /// # }
    /// ```
    pub fn events(&self) -> Option<Events> {
        self.inner.events.take()
    }

    /// Waits until the server's state satisfies `condition` (checked now
    /// and at each change), and returns that state. Returns the last state
    /// if the server stopped first.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Stats) -> bool) -> Stats {
        let mut stats = self.inner.stats.clone();
        if let Ok(s) = stats.wait_for(|s| condition(s) || s.stopped).await {
            return s.clone();
        }
        #[allow(clippy::let_and_return)] // the borrow must end before `stats`
        let last = stats.borrow().clone();
        last
    }

    /// Starts a new generation from a template prepared by the
    /// [reload callback](Builder::on_reload), then retires the old one:
    /// Parallel::Prefork's `HUP` + `load_config()`, gunicorn's `HUP`. See
    /// [`reload_with`](Prefork::reload_with).
    ///
    /// # Errors
    ///
    /// [`Error::NoReloadCallback`] without a callback,
    /// [`Error::Reload`] if it fails, and those of
    /// [`reload_with`](Prefork::reload_with).
    pub async fn reload(&self) -> Result<()> {
        let reload = self
            .inner
            .on_reload
            .as_ref()
            .ok_or(Error::NoReloadCallback)?;
        let template = reload().await.map_err(|e| Error::Reload(e.into()))?;
        self.reload_with(template).await
    }

    /// Starts a new generation of workers from `template`, then retires the
    /// old one: the new workers start **first**; each time one is ready, the
    /// oldest old worker is told to stop accepting and finish its
    /// connections (within the graceful timeout). The listeners stay open
    /// throughout, so no connection is refused or dropped. Resolves once
    /// every old worker is reaped.
    ///
    /// # Errors
    ///
    /// [`Error::Boot`] if the new generation's workers fail before they are
    /// ready [`max_boot_failures`](crate::Config::max_boot_failures) times in
    /// a row: the reload is abandoned and the old generation keeps serving.
    /// [`Error::Stopped`] if the server stops first.
    pub async fn reload_with(&self, template: Template) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Reload { template, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        systemd::reloading();
        let outcome = answer.await.unwrap_or(Err(Error::Stopped));
        if !matches!(outcome, Err(Error::Stopped)) {
            systemd::reloaded();
        }
        outcome
    }

    /// Stops the server: every worker stops accepting and finishes its open
    /// connections within the [graceful timeout](crate::Config::graceful_timeout),
    /// then is killed; resolves once every worker is reaped. Called again
    /// while a stop is under way (from another task), it kills the workers
    /// at once (`SIGKILL`): a quick stop.
    ///
    /// # Errors
    ///
    /// The error that stopped the server on its own, if it did
    /// ([`Error::Boot`]).
    pub async fn stop(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Stop { reply })
            .await
            .is_err()
        {
            return self.stopped().await;
        }
        systemd::stopping();
        match answer.await {
            Ok(outcome) => outcome,
            Err(_) => self.stopped().await,
        }
    }

    /// Sets the number of workers to `workers` (at least 1): with
    /// [`Sizing::Fixed`](crate::Sizing::Fixed) the count, with
    /// [`Sizing::Spare`](crate::Sizing::Spare) the most (`max_servers`).
    /// Workers are forked at once; surplus ones leave as they turn idle,
    /// never while busy. The number holds across reloads. Returns it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the server has stopped.
    pub async fn resize(&self, workers: usize) -> Result<usize> {
        self.resize_as(Resize::To(workers)).await
    }

    /// [`resize`](Prefork::resize) by `delta` workers, never below 1
    /// (gunicorn's `TTIN` and `TTOU`); returns the new number.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the server has stopped.
    pub async fn resize_by(&self, delta: isize) -> Result<usize> {
        self.resize_as(Resize::By(delta)).await
    }

    async fn resize_as(&self, size: Resize) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Resize { size, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Waits until the server has stopped (after [`stop`](Prefork::stop),
    /// or on its own), every worker reaped, without asking it to.
    ///
    /// # Errors
    ///
    /// The error that stopped the server on its own ([`Error::Boot`]).
    pub async fn stopped(&self) -> Result<()> {
        let mut done = self.inner.done.clone();
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
            Err(_) => Err(Error::Stopped),
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Prefork>();
    is::<PreforkEntry>();
    is::<Events>();
    is::<Event>();
}
