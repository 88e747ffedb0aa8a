//! Spawning a worker: the fork, the handshake, and the pieces of a
//! connection put together (the [`Client`], the [`RpcWorker`]).

use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::connection::Channel;
use super::demux::{Demux, EofWatch, decode_frames};
use super::events::{Events, UntakenEvents};
use super::lost::{Lost, STATUS_GRACE};
use super::stub::Client;
use super::worker::RpcWorker;
use crate::config::Config;
use crate::entry::RpcEntry;
use crate::error::{Error, Result};
use crate::frame::FrameRead;
use crate::message;
use crate::shm;

/// [`RpcWorker::builder`]'s work: forks and starts the worker, giving up
/// when `give_up` resolves first or after `config.start_timeout`.
pub(crate) async fn spawn_until<Req, Resp, Ev>(
    fork: &mut fork_core::Fork,
    entry: &RpcEntry<Req, Resp, Ev>,
    config: &Config,
    give_up: impl Future<Output = ()>,
) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let forked = Mutex::new(None);
    let limit = config.start_timeout;
    let deadline = crate::context::after(std::time::Instant::now(), limit);
    let outcome = {
        let start = crate::context::within(deadline, start(fork, entry, config, &forked));
        tokio::select! {
            started = start => started,
            () = give_up => {
                let pid = forked.lock().ok().and_then(|f| f.as_ref().map(fork_core::WorkerHandle::id));
                Some(Err(Error::StartAbandoned { pid }))
            }
        }
        // The start is dropped here, which kills a worker that does not
        // serve yet.
    };
    let error = match outcome {
        Some(Ok(started)) => return Ok(started),
        Some(Err(e @ Error::StartAbandoned { .. })) => e,
        Some(Err(e)) => return Err(e),
        None => Error::StartTimeout {
            limit,
            pid: forked
                .lock()
                .ok()
                .and_then(|f| f.as_ref().map(fork_core::WorkerHandle::id)),
        },
    };
    // Wait until the killed worker is gone, so that the error means it.
    let handle = forked.lock().ok().and_then(|mut f| f.take());
    if let Some(mut worker) = handle {
        let _ = worker.start_kill();
        let _ = tokio::time::timeout(STATUS_GRACE, worker.wait()).await;
    }
    Err(error)
}

/// [`spawn_until`] without its time limit; puts the worker's handle in `forked`
/// as soon as it is forked.
async fn start<Req, Resp, Ev>(
    fork: &mut fork_core::Fork,
    entry: &RpcEntry<Req, Resp, Ev>,
    config: &Config,
    forked: &Mutex<Option<fork_core::WorkerHandle>>,
) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let (side_ours, side_theirs) = fork_core::fdpass::seqpacket_pair()?;
    let (shared_ours, shared_theirs) = fork_core::fdpass::seqpacket_pair()?;
    let config_bytes = bincode::serialize(config).map_err(|e| Error::Protocol(e.to_string()))?;
    // Descriptors cannot reach a worker of a remote template: it gets no
    // channel for shared payloads (so it sends them as bytes), and this
    // side sends none either.
    let remote = fork.is_remote();
    let slot_fds: &[_] = if remote {
        &[side_theirs.as_fd()]
    } else {
        &[side_theirs.as_fd(), shared_theirs.as_fd()]
    };
    let mut worker = fork.slot(config_bytes, slot_fds).run(entry.entry()).await?;
    if let Ok(mut f) = forked.lock() {
        *f = Some(worker.handle());
    }
    // Until it serves, a worker this call gives up on (an error, or the call
    // dropped while the init hook runs) is killed, not left behind.
    let mut unready = KillUnlessReady(Some(worker.handle()));
    drop((side_theirs, shared_theirs));
    let mut stream = worker
        .take_stream()
        .ok_or_else(|| Error::Protocol("the worker has no socket".into()))?;
    let pid = worker.id();
    let lost = Arc::new(Lost {
        pid,
        panic: Mutex::new(None),
        retire: tokio::sync::watch::channel(false).0,
        ended: Mutex::new(None),
        exit: worker.handle(),
    });
    if let Err(e) = handshake(&mut stream).await {
        return Err(match e {
            Error::Io(_) => Error::Lost(lost.lost().await),
            e => {
                // The worker exits after reporting; wait for it, so that a
                // failed spawn leaves no process behind.
                let mut exit = lost.exit.clone();
                let _ = tokio::time::timeout(STATUS_GRACE, exit.wait()).await;
                e
            }
        });
    }
    let (read, write) = stream.into_split();
    let (format, limit) = (config.format, config.max_frame as u64);
    let mut limits = shm::Limits::of(config);
    if remote {
        limits.threshold = usize::MAX;
    }
    let (shared_out, shared_in) = shm::channel::channel(shared_ours, limits)?;
    let frames = FrameRead::new(
        EofWatch::new(read, lost.clone()),
        config.max_frame,
        decode_frames(format, limit, shared_in),
    );
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let untaken = Arc::new(UntakenEvents::default());
    let demux = Demux {
        inner: frames,
        events: events_tx,
        untaken: untaken.clone(),
        lost: lost.clone(),
    };
    let channel = Channel::new(
        write,
        demux,
        config.format,
        config.max_frame as u64,
        config.max_in_flight_requests,
        (shared_out, limits),
    );
    let side = std::os::unix::net::UnixDatagram::from(side_ours);
    side.set_nonblocking(true)?;
    let client = Client {
        inner: channel,
        lost: lost.clone(),
        default_timeout: config.default_timeout,
    };
    let worker = RpcWorker {
        untaken,
        lost,
        process: worker,
        events: Some(Events {
            rx: events_rx,
            format: config.format,
            limit: config.max_frame as u64,
            max_shared_len: limits.max_len,
            _ev: PhantomData,
        }),
        fds: tokio::net::UnixDatagram::from_std(side)?,
    };
    unready.0 = None;
    Ok((client, worker))
}

/// Kills a worker, unless disarmed, when dropped.
struct KillUnlessReady(Option<fork_core::WorkerHandle>);

impl Drop for KillUnlessReady {
    fn drop(&mut self) {
        if let Some(worker) = self.0.take() {
            let _ = worker.start_kill();
        }
    }
}

async fn handshake(stream: &mut tokio::net::UnixStream) -> Result<()> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > message::MAX_HANDSHAKE {
        return Err(Error::Protocol(format!("handshake of {len} bytes")));
    }
    let mut text = vec![0u8; len];
    stream.read_exact(&mut text).await?;
    let text = String::from_utf8_lossy(&text).into_owned();
    match head[0] {
        message::READY => Ok(()),
        message::INIT_FAILED => Err(Error::Init(text)),
        s => Err(Error::Protocol(format!("unknown handshake status {s}"))),
    }
}
