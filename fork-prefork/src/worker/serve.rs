//! [`Context::serve`]: the usual tokio accept loop.

use std::future::Future;
use std::io;

use tokio::task::JoinSet;

use super::accept::Acceptor;
use super::listener::Stream;
use super::{Context, Link};

impl Context {
    /// Runs the usual accept loop on every listener: says the worker is
    /// [ready](Link::ready), accepts connections and runs `handler` on each
    /// in a task of its own, holding a [busy](Link::busy) mark (one request
    /// counted) until it returns; on a graceful stop
    /// ([`Link::draining`]) stops accepting, waits for the open
    /// connections' handlers, and returns.
    ///
    /// The handler gets the connection and a [`Link`]: on a keep-alive
    /// connection it answers with `Connection: close` once
    /// [`Link::is_draining`] (with hyper: set that header on the
    /// response, or call `graceful_shutdown` on the connection once
    /// [`Link::draining`] resolves), so that no client sends a request on a
    /// connection that is being closed. Connections still open past the
    /// server's [`graceful_timeout`](crate::Config::graceful_timeout) are
    /// ended by the worker's `SIGKILL`.
    ///
    /// A worker is busy while it holds a connection: a keep-alive
    /// connection keeps it busy between requests. For request-level busy
    /// marks, run a loop of your own with [`Listener::accept`](crate::Listener::accept) and
    /// [`Link::busy`].
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if the worker has no listener (they
    /// were taken). Errors of `accept` itself are logged and the loop goes
    /// on: after one that says a limit is reached (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`) the accepting thread pauses 10 ms, as connections wait in the
    /// queue meanwhile.
    ///
    /// # Panics
    ///
    /// Outside the worker's runtime (where the worker's function runs).
    pub async fn serve<F, Fut>(mut self, mut handler: F) -> io::Result<()>
    where
        F: FnMut(Stream, Link) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listeners = self.take_listeners();
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the worker has no listener to serve",
            ));
        }
        let link = self.link().clone();
        let mut acceptor = Acceptor::start(&listeners, link.shared.clone())?;
        link.ready();
        let draining = link.draining();
        tokio::pin!(draining);
        let mut conns = JoinSet::new();
        let serve = |stream, conns: &mut JoinSet<()>| {
            let busy = link.busy();
            let conn = handler(stream, link.clone());
            conns.spawn(async move {
                conn.await;
                drop(busy);
            });
        };
        let mut serve = serve;
        loop {
            tokio::select! {
                biased;
                () = &mut draining => break,
                accepted = acceptor.next() => match accepted {
                    Some(Ok(stream)) => serve(stream, &mut conns),
                    Some(Err(e)) => tracing::warn!(pid = std::process::id(), "accept failed: {e}"),
                    None => return Err(acceptor.ended()),
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => log_panic(done),
            }
        }
        // Stop accepting; serve what was accepted meanwhile. The listeners
        // are duplicates: the socket stays open in the parent and the other
        // workers, with its queue.
        acceptor.stop();
        while let Some(accepted) = acceptor.next().await {
            if let Ok(stream) = accepted {
                serve(stream, &mut conns);
            }
        }
        drop(listeners);
        while let Some(done) = conns.join_next().await {
            log_panic(done);
        }
        Ok(())
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(
            pid = std::process::id(),
            "a connection's handler panicked; the worker goes on"
        );
    }
}
