//! Signals, as the originals map them: [`Prefork::trap_signals`] installs
//! the parent's handlers (gunicorn's and Parallel::Prefork's meanings), and
//! [`Prefork::signal_all_children`] sends one to every worker.

use std::future::Future;

use fork_core::Signal;
use tokio::signal::unix::{SignalKind, signal};

use super::Prefork;
use crate::error::{Error, Result};

mod sent;

pub(crate) use self::sent::Sent;

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

    /// Installs the handlers of the signals a prefork server is driven
    /// with, now, and returns the future that acts on them until the server
    /// has stopped, then says how it ended (as [`stopped`](Prefork::stopped)):
    ///
    /// | signal | action |
    /// |---|---|
    /// | `SIGTERM` | graceful [`stop`](Prefork::stop); a second one: quick |
    /// | `SIGINT`, `SIGQUIT` | quick stop (the workers are killed at once) |
    /// | `SIGHUP` | [`reload`](Prefork::reload) (with the reload callback; without one, logged) |
    /// | `SIGTTIN`, `SIGTTOU` | one worker more, one fewer, never below 1 ([`resize_by`](Prefork::resize_by)) |
    /// | `SIGUSR1`, `SIGUSR2` | forwarded to every worker ([`signal_all_children`](Prefork::signal_all_children)) |
    ///
    /// Signals noticed together are handled stops first, then a reload,
    /// then resizes (each done before the next), then the forwarded ones;
    /// two signals sent back to back may be noticed apart, in either order. The
    /// handlers are tokio's, for the whole process, and in place when this
    /// returns: a signal sent after it is handled even if the future
    /// has not been polled yet. Await the future, or spawn it.
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
    /// [`Error::Signals`] if a handler cannot be installed (outside a tokio
    /// runtime with signals enabled); the future, as
    /// [`stopped`](Prefork::stopped).
    pub fn trap_signals(&self) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        let install = |kind| signal(kind).map_err(|e| Error::Signals(e.into()));
        let mut term = install(SignalKind::terminate())?;
        let mut int = install(SignalKind::interrupt())?;
        let mut quit = install(SignalKind::quit())?;
        let mut hup = install(SignalKind::hangup())?;
        let mut usr1 = install(SignalKind::user_defined1())?;
        let mut usr2 = install(SignalKind::user_defined2())?;
        let mut ttin = install(SignalKind::from_raw(libc::SIGTTIN))?;
        let mut ttou = install(SignalKind::from_raw(libc::SIGTTOU))?;
        let server = self.clone();
        Ok(async move {
            let stopped = server.stopped();
            tokio::pin!(stopped);
            loop {
                // Several signals pending at once are handled in this
                // order: stops first, then a reload, then resizes (one at
                // a time, each done before the next), then forwarding.
                tokio::select! {
                    biased;
                    outcome = &mut stopped => return outcome,
                    _ = term.recv() => server.stop_in_background(),
                    _ = int.recv() => server.stop_quickly(),
                    _ = quit.recv() => server.stop_quickly(),
                    _ = hup.recv() => server.reload_in_background(),
                    _ = ttou.recv() => {
                        let _ = server.resize_by(-1).await;
                    }
                    _ = ttin.recv() => {
                        let _ = server.resize_by(1).await;
                    }
                    _ = usr1.recv() => {
                        server.signal_all_children(Signal::SIGUSR1);
                    }
                    _ = usr2.recv() => {
                        server.signal_all_children(Signal::SIGUSR2);
                    }
                }
            }
        })
    }

    /// Starts a reload without waiting for it; a failure is logged.
    fn reload_in_background(&self) {
        let server = self.clone();
        tokio::spawn(async move {
            if let Err(e) = server.reload().await {
                tracing::warn!("SIGHUP: the reload failed: {e}");
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
