//! [`Events`]: what the workers yelled, and every reap, as the parent sees
//! them; and the manager's side of that stream, which never waits.

use std::fmt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::message;

/// Something that happened to a worker, from [`Events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A worker sent data ([`Link::yell`](crate::Link::yell)).
    Data(Data),
    /// A worker was reaped. Every worker that was forked is reported
    /// exactly once, after its data.
    Reaped(Reaped),
}

/// A value a worker sent with [`Link::yell`](crate::Link::yell), in
/// [`Event::Data`]: Parallel::MPM::Prefork's `pf_kid_yell` data, as its
/// parent's `data_hook` gets it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Data {
    /// The worker's pid.
    pub pid: u32,
    /// Its generation (1 for the first, one more per reload).
    pub generation: u64,
    /// The value, encoded (bincode, as [`Link::yell`](crate::Link::yell)
    /// encodes it); at most [`MAX_DATA`](crate::MAX_DATA) bytes.
    pub bytes: Vec<u8>,
}

impl Data {
    /// Decodes the value as a `T`: the type the worker yelled, or one with
    /// the same bincode form.
    ///
    /// ```
    /// # fn doc(data: &fork_prefork::Data) -> fork_prefork::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Done { jobs: u32 }
    /// let done: Done = data.decode()?;
    /// println!("worker {} did {} jobs", data.pid, done.jobs);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Data`] if the bytes are not a `T` (too short, a bad tag or
    /// string, or bytes left after the value). Never panics, whatever the
    /// worker sent.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        message::decode_data(&self.bytes).map_err(|e| Error::Data(Arc::new(e)))
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Data")
            .field("pid", &self.pid)
            .field("generation", &self.generation)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A worker reaped, in [`Event::Reaped`]: Parallel::Prefork's
/// `on_child_reap`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// The worker's pid (free for reuse from now on).
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
    /// How it ended: `success()` for a worker that returned, the code it
    /// exited with, or the signal that killed it. `None` only if its status
    /// could not be learned (its template died first, taking the worker
    /// with it).
    pub status: Option<ExitStatus>,
    /// Why it ended, as the manager saw it.
    pub reason: ExitReason,
    /// The value it left with ([`Link::exit_with`](crate::Link::exit_with),
    /// Parallel::MPM::Prefork's `pf_kid_exit` data), encoded as
    /// [`Data::bytes`]; `None` if it set none (or was killed before its
    /// function returned).
    pub data: Option<Vec<u8>>,
}

impl Reaped {
    /// Decodes the value the worker left with
    /// ([`Link::exit_with`](crate::Link::exit_with)) as a `T`; `None` if
    /// it left with none.
    ///
    /// ```
    /// # fn doc(reaped: &fork_prefork::Reaped) -> fork_prefork::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Summary { served: u64 }
    /// if let Some(summary) = reaped.decode::<Summary>()? {
    ///     println!("worker {} served {}", reaped.pid, summary.served);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Data`] if the bytes are not a `T`, as
    /// [`Data::decode`]. Never panics, whatever the worker sent.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.data
            .as_deref()
            .map(|bytes| message::decode_data(bytes).map_err(|e| Error::Data(Arc::new(e))))
            .transpose()
    }
}

/// Why a worker ended, in [`Reaped`]. The exit status says how.
///
/// A worker that was ready and ended by itself is `Recycled`, `Retired`,
/// `Stopped` or `Exited` if it exited 0, `Crashed` otherwise; the others
/// say what the manager did to it, or that it never got ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It exited 0 on its own after it was ready, without being asked: its
    /// function returned.
    Exited,
    /// It exited 0 after serving [`max_requests`](crate::Config::max_requests)
    /// (plus its jitter): recycled.
    Recycled,
    /// It exited 0 after its function asked to leave
    /// ([`Link::retire`](crate::Link::retire),
    /// [`Link::exit_with`](crate::Link::exit_with)).
    Retired,
    /// It was told to stop and exited by itself (within the graceful
    /// timeout): by the manager (a [stop](crate::Prefork::stop), a
    /// [reload](crate::Prefork::reload), a surplus spare), or by a
    /// `SIGTERM` (a rolling restart's, one forwarded to every worker, or
    /// anyone's).
    Stopped,
    /// It exited with a non-zero code, or a signal the server did not send
    /// ended it, after it was ready, and without being told to stop: a
    /// crash, counted in [`Stats::crashed`](crate::Stats::crashed) and
    /// followed by a pause before the next start
    /// ([`err_respawn_interval`](crate::Config::err_respawn_interval)).
    Crashed,
    /// A signal the server sent ended it: the manager's `SIGKILL` (still
    /// running at the graceful timeout, or a quick stop), or the signal
    /// a [rolling restart](crate::SignalAction::Rolling) or
    /// [`signal_all_children`](crate::Prefork::signal_all_children) sent
    /// it. One that exited before the signal landed is reported by what it
    /// did (`Stopped`, `BootFailed`, ...).
    Killed,
    /// It missed the heartbeat [`timeout`](crate::Config::timeout) (it got
    /// `SIGABRT`, then `SIGKILL`), or was not ready within the
    /// [`start_timeout`](crate::Config::start_timeout) (killed).
    TimedOut,
    /// It sent bytes that are no message: it was killed.
    Broken,
    /// It exited before it was ready, and not because it was told to stop
    /// (a boot failure): with an error even if it was told to stop
    /// meanwhile, or without one, on its own.
    BootFailed,
}

/// The stream of [`Event`]s of a server, from [`Prefork::events`](crate::Prefork::events).
///
/// The manager never waits for it: events queue here until read, except
/// [`Event::Data`] past [`Config::data_backlog`](crate::Config::data_backlog)
/// values unread, which is dropped and counted in
/// [`Stats::data_dropped`](crate::Stats::data_dropped). It ends (`None`)
/// once the server has stopped and its last worker's reap was read.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    backlog: Arc<Backlog>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The next event; `None` once the server has stopped and every event
    /// was read.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event, as [`recv`](Events::recv) (for a `Stream`
    /// adapter: `futures::stream::poll_fn(move |cx| events.poll_recv(cx))`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Event::Data(_))) = &polled {
            self.backlog.unread.fetch_sub(1, Ordering::AcqRel);
        }
        polled
    }
}

/// What the manager and the handle share about the stream.
#[derive(Debug, Default)]
struct Backlog {
    /// The stream was taken: events are worth sending.
    taken: AtomicBool,
    /// Data events sent and not read yet.
    unread: AtomicUsize,
}

/// The manager's side of [`Events`]: it never waits.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Event>,
    backlog: Arc<Backlog>,
    /// At most this many data events unread.
    limit: usize,
}

/// The stream, until it is taken.
#[derive(Debug)]
pub(crate) struct Untaken {
    events: std::sync::Mutex<Option<Events>>,
}

/// A sink for the manager and the stream it feeds, not taken yet.
pub(crate) fn channel(limit: usize) -> (Sink, Untaken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let events = Events {
        rx,
        backlog: backlog.clone(),
    };
    let untaken = Untaken {
        events: std::sync::Mutex::new(Some(events)),
    };
    (Sink { tx, backlog, limit }, untaken)
}

impl Untaken {
    /// The stream, the first time; `None` afterwards.
    pub(crate) fn take(&self) -> Option<Events> {
        let events = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        events.backlog.taken.store(true, Ordering::Release);
        Some(events)
    }
}

impl Sink {
    /// Queues `data` unless the stream was not taken (dropped, not
    /// counted) or holds its limit unread (dropped: returns `false`).
    pub(crate) fn data(&self, data: Data) -> bool {
        if !self.backlog.taken.load(Ordering::Acquire) {
            return true;
        }
        // The manager is the only sender: the count only falls meanwhile.
        if self.backlog.unread.load(Ordering::Acquire) >= self.limit {
            return false;
        }
        self.backlog.unread.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Event::Data(data)).is_err() {
            // The stream was dropped: nobody counts any more.
            self.backlog.unread.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// Queues a reap (never dropped, if the stream was taken).
    pub(crate) fn reaped(&self, reaped: Reaped) {
        if self.backlog.taken.load(Ordering::Acquire) {
            let _ = self.tx.send(Event::Reaped(reaped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u8) -> Data {
        Data {
            pid: 10,
            generation: 1,
            bytes: vec![n],
        }
    }

    fn reaped(pid: u32) -> Reaped {
        Reaped {
            pid,
            generation: 1,
            status: None,
            reason: ExitReason::Stopped,
            data: None,
        }
    }

    #[tokio::test]
    async fn events_before_the_stream_is_taken_are_dropped() {
        let (sink, untaken) = channel(4);
        assert!(sink.data(data(1)));
        sink.reaped(reaped(1));
        let mut events = untaken.take().unwrap();
        assert!(untaken.take().is_none(), "taken once");
        sink.reaped(reaped(2));
        drop(sink);
        match events.recv().await {
            Some(Event::Reaped(r)) => assert_eq!(r.pid, 2),
            other => panic!("the reap after taking, got {other:?}"),
        }
        assert!(events.recv().await.is_none(), "ends with the manager");
    }

    #[tokio::test]
    async fn data_past_the_backlog_is_dropped_and_reaps_never_are() {
        let (sink, untaken) = channel(2);
        let mut events = untaken.take().unwrap();
        assert!(sink.data(data(1)));
        assert!(sink.data(data(2)));
        assert!(!sink.data(data(3)), "the third waits past the backlog");
        sink.reaped(reaped(7));
        let first = events.recv().await;
        assert!(
            matches!(first, Some(Event::Data(ref d)) if d.bytes == [1]),
            "{first:?}"
        );
        // One read: room for one more.
        assert!(sink.data(data(4)));
        assert!(!sink.data(data(5)));
        drop(sink);
        let mut rest = Vec::new();
        while let Some(e) = events.recv().await {
            rest.push(match e {
                Event::Data(d) => format!("data {}", d.bytes[0]),
                Event::Reaped(r) => format!("reaped {}", r.pid),
            });
        }
        assert_eq!(rest, ["data 2", "reaped 7", "data 4"]);
    }

    #[test]
    fn a_reap_decodes_the_value_it_left_with() {
        let mut r = reaped(1);
        assert_eq!(r.decode::<u8>().unwrap(), None);
        r.data = Some(message::encode_data(&(7u8, "bye")).unwrap());
        assert_eq!(
            r.decode::<(u8, String)>().unwrap(),
            Some((7, "bye".to_string()))
        );
        assert!(matches!(r.decode::<u64>(), Err(Error::Data(_))));
    }

    #[test]
    fn decode_is_typed_and_bounded() {
        let d = Data {
            pid: 1,
            generation: 1,
            bytes: message::encode_data(&(3u8, "x")).unwrap(),
        };
        assert_eq!(d.decode::<(u8, String)>().unwrap(), (3, "x".to_string()));
        assert!(matches!(d.decode::<u64>(), Err(Error::Data(_))));
        assert!(matches!(
            d.decode::<(u8, String, u8)>(),
            Err(Error::Data(_))
        ));
    }
}
