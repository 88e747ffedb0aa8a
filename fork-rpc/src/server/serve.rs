//! [`serve`]: a worker's life after the fork: its runtime, the init hook,
//! the handshake, serving, the done hook.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tarpc::server::Serve;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::events::{EventSender, Outgoing};
use super::fds::FdReceiver;
use super::panic::record_panic_locations;
use super::round::{End, Server};
use super::setup::Setup;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::message::{self, WorkerMsg};
use crate::shm;

/// Serves the service that `init` builds on the worker's socket, then exits.
/// This is what [`entry!`](crate::entry) calls; use it directly to serve from
/// your own [`fork_core::Entry`].
///
/// In order: decode the configuration the parent sent (in the fork's
/// [slot](fork_core::Context::take_slot)), build a
/// `current_thread` runtime, run `init` (the init hook: a failure is sent to
/// the parent as the error of its spawn call), serve until the parent closes
/// the connection, flush every reply, run the done hook, return.
///
/// # Errors
///
/// Setup failures, the init hook's failure, or a broken connection.
pub fn serve<S, Ev, E>(
    mut ctx: fork_core::Context,
    init: fn(&mut Setup<Ev>) -> std::result::Result<S, E>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
    Ev: Serialize + 'static,
    E: fmt::Display,
{
    // fork-rpc's own configuration and descriptor channel come in the
    // fork's slot, apart from the user's arguments and descriptors.
    let slot = ctx.take_slot().unwrap_or_default();
    let config: Config = bincode::deserialize(&slot.data).map_err(|e| {
        Error::Protocol(format!("no fork-rpc configuration in the fork's slot: {e}"))
    })?;
    let mut slot_fds = slot.fds.into_iter();
    let side = slot_fds
        .next()
        .ok_or_else(|| Error::Protocol("no descriptor channel in the fork's slot".into()))?;
    // Without a channel for shared payloads (a worker started by other
    // means), they travel as bytes.
    let limits = shm::Limits::of(&config);
    let shared = slot_fds
        .next()
        .map(|fd| shm::channel::channel(fd, limits))
        .transpose()?;
    let (socket, args, fds) = ctx.into_parts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    socket.set_nonblocking(true)?;
    // Registered for writability too, though the worker rarely waits to
    // write: the parent reading replies then reports room here, which wakes
    // an idle worker just before the parent's next requests arrive, so it
    // is up when they do. A pool at load 2 does twice the jobs per second
    // with it on these machines (see the book's RPC performance chapter).
    let mut stream = tokio::net::UnixStream::from_std(socket)?;
    let side = std::os::unix::net::UnixDatagram::from(side);
    side.set_nonblocking(true)?;
    let side = tokio::net::UnixDatagram::from_std(side)?;

    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut setup = Setup {
        args,
        fds,
        events: EventSender {
            out: out_tx,
            format: config.format,
            limit: config.max_frame as u64,
            shared: shared.as_ref().map(|_| limits),
            _ev: PhantomData,
        },
        fd_receiver: Some(FdReceiver { sock: side }),
        done: None,
    };
    let service = match init(&mut setup) {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            let hs = message::handshake(message::INIT_FAILED, &message);
            rt.block_on(stream.write_all(&hs))?;
            return Err(Error::Init(message));
        }
    };
    let done = setup.done.take();
    drop(setup);
    // After the init hook: a hook it installed runs after ours.
    record_panic_locations();
    let result = rt.block_on(run(config, stream, shared, service, out_rx));
    if let Some(done) = done {
        // Not after a handler's panic: the worker is failing.
        if !matches!(result, Err(Error::Panicked(_))) {
            done();
        }
    }
    result
}

/// Says the worker is ready, serves until the parent closes the connection
/// (or `SIGTERM` comes), then shuts the connection down. A handler's panic is
/// reported to the parent, and ends serving with [`Error::Panicked`].
async fn run<S>(
    config: Config,
    mut stream: tokio::net::UnixStream,
    shared: Option<(shm::Outbox, shm::Inbox)>,
    service: S,
    events: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<()>
where
    S: Serve + Clone + 'static,
    S::Req: DeserializeOwned + RequestName + 'static,
    S::Resp: Serialize + 'static,
{
    // Installed before the parent hears the worker is ready. Without a
    // handler (it cannot be installed), SIGTERM keeps its default action
    // and ends the worker at once.
    let terminate = signal(SignalKind::terminate()).ok();
    stream
        .write_all(&message::handshake(message::READY, ""))
        .await?;
    let mut server = Server::new(&config, stream, shared, service, S::serve, events);
    server.terminate = terminate;
    match std::future::poll_fn(|cx| server.poll_serve(cx)).await? {
        End::Closed => {
            server.shutdown_write();
            Ok(())
        }
        End::Panicked(panic) => {
            // The parent gets everything queued before the panic, then its
            // message (unless it exceeds the frame limit), as long as it
            // reads.
            server.drain_events();
            let _ = server.push(&WorkerMsg::<()>::Panic(panic.clone()));
            let _ = std::future::poll_fn(|cx| server.poll_write(cx)).await;
            server.shutdown_write();
            // The worker then ends as every worker does (fork-core's entry
            // path: stdout flushed, `_exit`, no exit handlers of the
            // template), with code 101.
            Err(Error::Panicked(panic))
        }
    }
}
