//! The worker's two background tasks: one reports its state to the manager,
//! the other reads the manager's orders (and `SIGTERM`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::signal::unix::{SignalKind, signal};

use super::link::Shared;
use crate::message::{self, Leave, Order, Report};

/// Says the reporting task ended, however it ends: yells waiting for room
/// give up.
struct Closed<'a>(&'a Shared);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.0.room.notify_waiters();
    }
}

/// Reports `Ready` once the worker is, then its state whenever it changes
/// and at least every `heartbeat`, and the data yelled, in order; when the
/// worker's function returned, the last state (or, if it never was ready,
/// why it failed), the value it leaves with and why it left, then ends.
/// Ends early if the manager is gone.
pub(crate) async fn report(shared: Arc<Shared>, mut out: OwnedWriteHalf, heartbeat: Duration) {
    let _closed = Closed(&shared);
    let mut said_ready = false;
    let mut buf = Vec::new();
    loop {
        let finished = shared.finished.load(Ordering::Acquire);
        buf.clear();
        // Data first, taken after `finished`: what was yelled before the
        // function returned goes out before the worker ends.
        let yells = shared
            .yells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        shared.room.notify_waiters();
        for data in yells {
            buf.extend(message::frame(&Report::Data(data)));
        }
        if !said_ready && shared.ready.load(Ordering::Acquire) {
            buf.extend(message::frame(&Report::Ready));
            said_ready = true;
        }
        if said_ready {
            buf.extend(message::frame(&Report::State {
                busy: shared.busy.load(Ordering::Acquire),
                served: shared.served.load(Ordering::Relaxed),
                accepted: shared.accepted.load(Ordering::Relaxed),
            }));
        } else if finished {
            let failure = shared
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(why) = failure {
                buf.extend(message::frame(&Report::Failed(message::cut(why))));
            }
        }
        if finished {
            let data = shared
                .exit_data
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(data) = data {
                buf.extend(message::frame(&Report::ExitData(data)));
            }
            if let Some(why) = shared.leaving() {
                buf.extend(message::frame(&Report::Leaving(why)));
            }
        }
        if !buf.is_empty() && out.write_all(&buf).await.is_err() {
            return;
        }
        if finished {
            return;
        }
        tokio::select! {
            () = shared.changed.notified() => {}
            () = tokio::time::sleep(heartbeat) => {}
        }
    }
}

/// Reads the manager's orders: `Stop` (or the end of the connection: the
/// manager is gone, or a frame that makes no sense), or `SIGTERM` sent to
/// the worker, make it leave.
pub(crate) async fn orders(mut input: OwnedReadHalf, shared: Arc<Shared>) {
    let mut term = signal(SignalKind::terminate()).ok();
    let mut buf = Vec::new();
    loop {
        let terminated = async {
            match &mut term {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = message::read_frame(&mut input, &mut buf) => {
                let order = match read {
                    Ok(true) => message::decode::<Order>(&buf).ok(),
                    _ => None,
                };
                shared.leave(Leave::Told);
                if order.is_none() {
                    return;
                }
            }
            _ = terminated => shared.leave(Leave::Terminated),
        }
    }
}
