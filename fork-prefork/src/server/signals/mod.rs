//! Signals, as the originals map them: [`Prefork::trap_signals`] installs
//! the parent's handlers (gunicorn's meanings), [`Prefork::trap_signals_with`]
//! a table of your own ([`Signals`], Parallel::Prefork's `trap_signals`),
//! and [`Prefork::signal_all_children`] sends one to every worker.
//!
//! - `map`: [`Signals`] and [`SignalAction`];
//! - `rolling`: the pacing of a rolling restart;
//! - `sent`: the signals sent to workers, for their reaps.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use fork_core::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::Prefork;
use crate::error::{Error, Result};

mod map;
mod rolling;
mod sent;

pub use self::map::{SignalAction, Signals};
pub(crate) use self::sent::Sent;

use self::rolling::{Rolling, Step};

/// A trapped signal: what it does and its tokio handler.
struct Trap {
    signal: Signal,
    action: SignalAction,
    handler: tokio::signal::unix::Signal,
}

/// The first trapped signal that arrived, looking at them in the order of
/// the table (stops first).
async fn next_signal(traps: &mut [Trap]) -> (Signal, SignalAction) {
    std::future::poll_fn(|cx| {
        for trap in traps.iter_mut() {
            // `None`: the handler can no longer receive; never ready again.
            if let Poll::Ready(Some(())) = trap.handler.poll_recv(cx) {
                return Poll::Ready((trap.signal, trap.action));
            }
        }
        Poll::Pending
    })
    .await
}

impl Prefork {
    /// Sends `signal` to every worker now running (Parallel::Prefork's
    /// `signal_all_children`); returns how many it was sent to. A worker
    /// that does not handle the signal gets its default action, which for
    /// most signals ends it; the server replaces it, and its reap says
    /// [`Killed`](crate::ExitReason::Killed) (not a crash). A worker that
    /// gets `SIGTERM` finishes its connections and exits: its reap says
    /// [`Stopped`](crate::ExitReason::Stopped).
    pub fn signal_all_children(&self, signal: Signal) -> usize {
        let pids = self
            .stats()
            .workers
            .iter()
            .filter_map(|w| w.pid)
            .collect::<Vec<_>>();
        pids.into_iter()
            .filter(|&pid| self.inner.sent.send(pid, signal))
            .count()
    }

    /// The last signal the future of [`trap_signals`](Prefork::trap_signals)
    /// (or [`trap_signals_with`](Prefork::trap_signals_with)) acted on, as
    /// Parallel::Prefork's `signal_received`; `None` before the first.
    ///
    /// ```no_run
    /// # async fn doc(server: fork_prefork::Prefork) -> Result<(), fork_prefork::Error> {
    /// use fork_core::Signal;
    ///
    /// server.trap_signals()?.await?;
    /// if server.signal_received() == Some(Signal::SIGINT) {
    ///     println!("interrupted");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn signal_received(&self) -> Option<Signal> {
        *self
            .inner
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no worker runs any more, the server having stopped
    /// (after [`stop`](Prefork::stop), a stop signal, or on its own), or
    /// until `timeout`; returns whether they all ended (Parallel::Prefork's
    /// `wait_all_children($timeout)`, which returns how many are left:
    /// [`stats`](Prefork::stats) says which). It asks nothing of the
    /// server: while it is not stopping, it replaces its workers, and this
    /// waits for the whole `timeout`.
    ///
    /// ```no_run
    /// # async fn doc(server: fork_prefork::Prefork) {
    /// use std::time::Duration;
    ///
    /// server.signal_all_children(fork_core::Signal::SIGTERM);
    /// let stop = tokio::spawn({
    ///     let server = server.clone();
    ///     async move { server.stop().await }
    /// });
    /// if !server.wait_all_children(Duration::from_secs(5)).await {
    ///     eprintln!("still running: {:?}", server.stats().workers);
    /// }
    /// # drop(stop);
    /// # }
    /// ```
    pub async fn wait_all_children(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait_until(|s| s.stopped))
            .await
            .is_ok_and(|s| s.stopped && s.total() == 0)
    }

    /// Installs the handlers of the signals a prefork server is driven
    /// with, now, and returns the future that acts on them until the server
    /// has stopped, then says how it ended (as [`stopped`](Prefork::stopped)):
    /// [`trap_signals_with`](Prefork::trap_signals_with) with
    /// [`Signals::default()`], gunicorn's table:
    ///
    /// | signal | action |
    /// |---|---|
    /// | `SIGTERM` | graceful [`stop`](Prefork::stop); a second one: quick |
    /// | `SIGINT`, `SIGQUIT` | quick stop (the workers are killed at once) |
    /// | `SIGHUP` | [`reload`](Prefork::reload) (with the reload callback; without one, logged) |
    /// | `SIGTTIN`, `SIGTTOU` | one worker more, one fewer, never below 1 ([`resize_by`](Prefork::resize_by)) |
    /// | `SIGUSR1`, `SIGUSR2` | forwarded to every worker ([`signal_all_children`](Prefork::signal_all_children)) |
    ///
    /// ```no_run
    /// # async fn doc(server: fork_prefork::Prefork) -> Result<(), fork_prefork::Error> {
    /// let signals = server.trap_signals()?;
    /// println!("ready"); // a SIGTERM from now on stops the server gracefully
    /// signals.await?; // until it has stopped
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`trap_signals_with`](Prefork::trap_signals_with).
    pub fn trap_signals(&self) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        self.trap_signals_with(Signals::default())
    }

    /// Installs handlers for the signals of `signals`, now, and returns
    /// the future that acts on them ([`SignalAction`]) until the server has
    /// stopped, then says how it ended (as [`stopped`](Prefork::stopped)):
    /// Parallel::Prefork's `trap_signals` table. Each signal acted on is
    /// noted first, for [`signal_received`](Prefork::signal_received).
    ///
    /// Signals noticed together are handled stops first, then a reload, a
    /// rolling restart, resizes (each done before the next), then the
    /// forwarded ones; two signals sent back to back may be noticed apart,
    /// in either order. The handlers are tokio's, for the whole process,
    /// and in place when this returns: a signal sent after it is handled
    /// even if the future has not been polled yet. Await the future, or
    /// spawn it: a [rolling restart](SignalAction::Rolling) goes on only
    /// while it is polled.
    ///
    /// ```no_run
    /// # async fn doc(server: fork_prefork::Prefork) -> Result<(), fork_prefork::Error> {
    /// use std::time::Duration;
    /// use fork_core::Signal;
    /// use fork_prefork::{SignalAction, Signals};
    ///
    /// // HUP restarts the workers one at a time, 2 s apart; USR2 sends
    /// // every worker TERM at once; the rest as by default.
    /// let signals = Signals::default()
    ///     .on(Signal::SIGHUP, SignalAction::Rolling {
    ///         signal: Signal::SIGTERM,
    ///         interval: Duration::from_secs(2),
    ///     })
    ///     .on(Signal::SIGUSR2, SignalAction::Forward(Signal::SIGTERM));
    /// server.trap_signals_with(signals)?.await?;
    /// println!("stopped by {:?}", server.signal_received());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Signals`] if a handler cannot be installed: outside a tokio
    /// runtime with signals enabled, or for a signal that cannot be
    /// caught (`SIGKILL`, `SIGSTOP`) or that tokio refuses (`SIGILL`,
    /// `SIGFPE`, `SIGSEGV`). The future, as [`stopped`](Prefork::stopped).
    pub fn trap_signals_with(
        &self,
        signals: Signals,
    ) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        let mut traps = Vec::new();
        for (sig, action) in signals.iter() {
            let handler =
                signal(SignalKind::from_raw(sig as i32)).map_err(|e| Error::Signals(e.into()))?;
            traps.push(Trap {
                signal: sig,
                action,
                handler,
            });
        }
        let server = self.clone();
        Ok(async move {
            let stopped = server.stopped();
            tokio::pin!(stopped);
            let mut stats = server.inner.stats.clone();
            let mut rolling: Option<Rolling> = None;
            loop {
                let mut wake = None;
                if let Some(r) = &mut rolling {
                    let now = stats.borrow_and_update().clone();
                    loop {
                        match r.step(&now, Instant::now()) {
                            Step::Signal(pid) => {
                                server.inner.sent.send(pid, r.signal());
                            }
                            Step::Wait(at) => {
                                wake = at;
                                break;
                            }
                            Step::Done => {
                                rolling = None;
                                break;
                            }
                        }
                    }
                }
                let sleep = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now));
                tokio::select! {
                    biased;
                    outcome = &mut stopped => return outcome,
                    (sig, action) = next_signal(&mut traps) => {
                        *server.inner.received.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(sig);
                        server.act(action, &mut rolling).await;
                    }
                    changed = stats.changed(), if rolling.is_some() => {
                        if changed.is_err() {
                            rolling = None;
                        }
                    }
                    () = sleep, if wake.is_some() => {}
                }
            }
        })
    }

    /// Does what a trapped signal says.
    async fn act(&self, action: SignalAction, rolling: &mut Option<Rolling>) {
        match action {
            SignalAction::Stop => self.stop_in_background(),
            SignalAction::QuickStop => self.stop_quickly(),
            SignalAction::Reload => self.reload_in_background(),
            SignalAction::Grow => {
                let _ = self.resize_by(1).await;
            }
            SignalAction::Shrink => {
                let _ = self.resize_by(-1).await;
            }
            SignalAction::Ignore => {}
            SignalAction::Forward(signal) => {
                self.signal_all_children(signal);
            }
            SignalAction::Rolling { signal, interval } => {
                let stats = self.stats();
                match rolling {
                    Some(r) => r.restart(signal, interval, &stats),
                    None => {
                        let patience = self.inner.graceful_timeout;
                        *rolling = Some(Rolling::new(signal, interval, patience, &stats));
                    }
                }
            }
        }
    }

    /// Starts a reload without waiting for it; a failure is logged.
    fn reload_in_background(&self) {
        let server = self.clone();
        tokio::spawn(async move {
            if let Err(e) = server.reload().await {
                tracing::warn!("the reload a signal asked for failed: {e}");
            }
        });
    }

    /// Starts a stop (graceful the first time, quick the next) without
    /// waiting for it.
    fn stop_in_background(&self) {
        let server = self.clone();
        tokio::spawn(async move {
            let _ = server.stop().await;
        });
    }

    /// A stop that kills the workers at once: a stop, then a second one.
    fn stop_quickly(&self) {
        let server = self.clone();
        tokio::spawn(async move {
            let first = server.clone();
            let graceful = tokio::spawn(async move { first.stop().await });
            let _ = server.stop().await;
            let _ = graceful.await;
        });
    }
}
