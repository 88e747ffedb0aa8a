//! One task per worker, in the parent: reads its reports, passes the
//! manager's stop order on, and reports its exit status. The manager never
//! touches a worker's socket itself.

use std::io;
use std::process::ExitStatus;

use fork_core::Worker;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::message::{self, Order, Report};

/// What the monitors (and the spawning tasks) tell the manager.
#[derive(Debug)]
pub(crate) enum Event {
    /// A fork finished: the worker, or why there is none.
    Spawned {
        id: u64,
        result: fork_core::Result<Worker>,
    },
    /// The worker said something.
    Report { id: u64, report: Report },
    /// The worker sent bytes that are no report: it was killed.
    Broken { id: u64, why: io::Error },
    /// The worker exited (the template reaped it).
    Exited {
        id: u64,
        status: fork_core::Result<ExitStatus>,
    },
}

/// Watches worker `id` until it exited: its reports go to `events`; when
/// `stop` turns true, the worker is told to stop. A worker that sends what
/// cannot be read is killed (the parent never trusts a worker's bytes).
pub(crate) async fn monitor(
    id: u64,
    mut worker: Worker,
    stop: watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
) {
    if let Some(stream) = worker.take_stream() {
        let (mut input, output) = stream.into_split();
        // Its own task: a read cut off half-way would lose bytes.
        let orders = tokio::spawn(pass_stop(stop, output));
        let mut buf = Vec::new();
        loop {
            let broken = match message::read_frame(&mut input, &mut buf).await {
                Ok(true) => match message::decode::<Report>(&buf) {
                    Ok(report) => {
                        if events.send(Event::Report { id, report }).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(e) => e,
                },
                Ok(false) => break,
                Err(e) => e,
            };
            let _ = worker.start_kill();
            let _ = events.send(Event::Broken { id, why: broken }).await;
            break;
        }
        orders.abort();
    }
    let status = worker.wait().await;
    let _ = events.send(Event::Exited { id, status }).await;
}

/// Writes the stop order once `stop` turns true.
async fn pass_stop(mut stop: watch::Receiver<bool>, mut output: tokio::net::unix::OwnedWriteHalf) {
    if stop.wait_for(|&s| s).await.is_ok() {
        let _ = output.write_all(&message::frame(&Order::Stop)).await;
    }
    // Keep the write half open: dropping it would shut the socket down for
    // writing, which the worker reads as the manager being gone.
    std::future::pending::<()>().await;
}
