//! [`Link`]: a worker's line to its manager, and [`Busy`], a busy mark.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::message::{self, Leave};

/// A worker's line to its manager (what Parallel::MPM::Prefork's
/// `pf_kid_busy`/`pf_kid_idle` and Parallel::Prefork's scoreboard do): it
/// says when the worker is [ready](Link::ready), marks it [busy](Link::busy)
/// or idle for spare regulation, counts its requests, sends a heartbeat,
/// and tells the worker when to stop accepting ([`draining`](Link::draining)).
///
/// Cheap to clone; every connection task can hold one. The state it reports
/// goes to the manager from a task of the worker's runtime, whenever it
/// changes and at least every [`Config::heartbeat`](crate::Config::heartbeat):
/// a worker whose runtime is blocked stops reporting.
#[derive(Clone)]
pub struct Link {
    pub(crate) shared: Arc<Shared>,
}

/// What a worker's [`Link`]s and its reporting task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) busy: AtomicU32,
    pub(crate) served: AtomicU64,
    /// Connections [`Context::serve`](crate::Context::serve) accepted.
    pub(crate) accepted: AtomicU64,
    pub(crate) ready: AtomicBool,
    /// The worker's function returned: send the last state (or why it
    /// failed), then stop.
    pub(crate) finished: AtomicBool,
    pub(crate) failure: std::sync::Mutex<Option<String>>,
    /// Data for the parent not written yet.
    pub(crate) yells: std::sync::Mutex<Yells>,
    /// Wakes the reporting task.
    pub(crate) changed: Notify,
    /// Wakes the yells waiting for room: the reporting task took the
    /// queue, or ended.
    pub(crate) room: Notify,
    /// The reporting task ended: nothing more is written.
    pub(crate) closed: AtomicBool,
    /// Why the worker stopped accepting ([`Leave::code`]; 0 while it
    /// accepts): the first cause wins.
    pub(crate) leaving: AtomicU8,
    /// The value it leaves with ([`Link::exit_with`]), encoded.
    pub(crate) exit_data: std::sync::Mutex<Option<Vec<u8>>>,
    pub(crate) draining: watch::Sender<bool>,
    pub(crate) generation: u64,
    /// Retire once this many requests were served.
    pub(crate) max_requests: Option<u64>,
}

impl Shared {
    pub(crate) fn new(generation: u64, max_requests: Option<u64>) -> Shared {
        Shared {
            busy: AtomicU32::new(0),
            served: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            yells: std::sync::Mutex::new(Yells::default()),
            changed: Notify::new(),
            room: Notify::new(),
            closed: AtomicBool::new(false),
            leaving: AtomicU8::new(0),
            exit_data: std::sync::Mutex::new(None),
            draining: watch::Sender::new(false),
            generation,
            max_requests,
        }
    }

    /// Stops accepting, for `why` unless an earlier cause was noted.
    pub(crate) fn leave(&self, why: Leave) {
        let _ = self
            .leaving
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        self.draining.send_replace(true);
    }

    /// Why the worker stopped accepting, if it did.
    pub(crate) fn leaving(&self) -> Option<Leave> {
        Leave::from_code(self.leaving.load(Ordering::Acquire))
    }

    /// Queues encoded data for the reporting task, or gives it back if
    /// [`MAX_QUEUED`] bytes would be waiting.
    fn queue(&self, bytes: Vec<u8>) -> std::result::Result<(), (Vec<u8>, usize)> {
        let mut yells = self.yells.lock().unwrap_or_else(|p| p.into_inner());
        if yells.bytes + bytes.len() > MAX_QUEUED {
            let queued = yells.bytes;
            return Err((bytes, queued));
        }
        yells.bytes += bytes.len();
        yells.values.push(bytes);
        drop(yells);
        self.changed.notify_one();
        Ok(())
    }
}

/// Encodes a value for the parent ([`Link::yell`] and its kin).
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let data_error = |e| Error::Data(Arc::new(e));
    let size = message::data_size(value).map_err(data_error)?;
    if size > message::MAX_DATA as u64 {
        return Err(Error::DataTooLarge {
            size,
            limit: message::MAX_DATA,
        });
    }
    message::encode_data(value).map_err(data_error)
}

/// The most data, in bytes, that may wait in a worker unwritten: 4 MiB
/// (64 of the largest values).
pub(crate) const MAX_QUEUED: usize = 64 * message::MAX_FRAME;

/// Data yelled and not written yet.
#[derive(Debug, Default)]
pub(crate) struct Yells {
    /// Encoded, oldest first.
    pub(crate) values: Vec<Vec<u8>>,
    /// Their total size.
    pub(crate) bytes: usize,
}

impl Yells {
    /// Takes every value out, oldest first.
    pub(crate) fn take(&mut self) -> Vec<Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.values)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.shared.generation)
            .field("busy", &self.shared.busy.load(Ordering::Relaxed))
            .field("served", &self.shared.served.load(Ordering::Relaxed))
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Link {
    /// Says the worker accepts connections now. Until then the manager
    /// counts it as starting, and if it exits first, as a boot failure.
    /// [`Context::serve`](crate::Context::serve) calls it; a worker with a
    /// loop of its own calls it once its listeners are ready. Calling it
    /// again does nothing.
    pub fn ready(&self) {
        if !self.shared.ready.swap(true, Ordering::AcqRel) {
            self.shared.changed.notify_one();
        }
    }

    /// Marks the worker busy until the returned [`Busy`] is dropped, and
    /// counts one request (`pf_kid_busy` ... `pf_kid_idle`). The worker is
    /// busy while any mark lives: spare regulation never retires it. The
    /// mark that reaches [`max_requests`](crate::Config::max_requests)
    /// [retires](Link::retire) the worker.
    ///
    /// [`Context::serve`](crate::Context::serve) holds one per connection.
    ///
    /// ```
    /// # fn doc(link: &fork_prefork::Link) {
    /// let busy = link.busy();
    /// // ... answer the request ...
    /// drop(busy); // idle again
    /// # }
    /// ```
    #[must_use = "the worker is idle again as soon as the mark is dropped"]
    pub fn busy(&self) -> Busy {
        let served = self.shared.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.shared.max_requests.is_some_and(|max| served >= max) {
            self.shared.leave(Leave::Recycled);
        }
        if self.shared.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            self.shared.changed.notify_one();
        }
        Busy { link: self.clone() }
    }

    /// Requests served so far (busy marks taken).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// The generation this worker belongs to: 1 for the first, one more
    /// per reload.
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// Whether the worker was told to stop accepting (the server stops,
    /// reloads, or retires this worker; or the worker got `SIGTERM`): finish
    /// the requests in progress, and answer on a keep-alive connection with
    /// `Connection: close` rather than closing it under a client that may
    /// be sending.
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }

    /// Stops accepting from inside the worker, as a graceful stop does:
    /// [`Context::serve`](crate::Context::serve) finishes its open
    /// connections and returns, and the worker function returns. The
    /// manager then starts a replacement (after
    /// [`err_respawn_interval`](crate::Config::err_respawn_interval) if the
    /// worker exits with an error). For a worker that knows it should go:
    /// it leaks, it served enough, its state is bad.
    ///
    /// Its reap says [`ExitReason::Retired`](crate::ExitReason::Retired)
    /// if it exits 0 (and it was not told to stop first).
    pub fn retire(&self) {
        self.shared.leave(Leave::Retired);
    }

    /// Retires the worker (as [`retire`](Link::retire)) with a value for
    /// the parent that comes with its reap, in
    /// [`Reaped::data`](crate::Reaped::data), to decode with
    /// [`Reaped::decode`](crate::Reaped::decode): Parallel::MPM::Prefork's
    /// `pf_kid_exit($code, $data)`, whose data reaches `child_data_hook`
    /// with the exit code. The worker finishes its open connections and its
    /// function returns as on any graceful stop; the value is sent as it
    /// ends. Called again, the last value wins; called while the worker is
    /// already stopping (told to, recycled), it only sets the value.
    ///
    /// Unlike [`yell`](Link::yell)'s data, this value is never dropped for
    /// a parent slow to read (there is one per worker, as there is one
    /// reap), and it arrives with the reap rather than before it.
    ///
    /// ```
    /// # fn doc(link: &fork_prefork::Link) -> fork_prefork::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Summary { served: u64 }
    /// link.exit_with(&Summary { served: link.served() })?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DataTooLarge`] if `value` encodes to more than
    /// [`MAX_DATA`](crate::MAX_DATA) bytes, [`Error::Data`] if it cannot be
    /// encoded: the worker is not retired then.
    ///
    /// # Caveats
    ///
    /// A worker killed before its function returns (at the graceful
    /// timeout, the heartbeat timeout, or by a signal) sends nothing.
    pub fn exit_with<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        *self
            .shared
            .exit_data
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        self.retire();
        Ok(())
    }

    /// Sends `value` to the parent, where it arrives as an
    /// [`Event::Data`](crate::Event::Data) with this worker's pid and
    /// generation, to decode with [`Data::decode`](crate::Data::decode)
    /// (Parallel::MPM::Prefork's `pf_kid_yell`). Call it at any time: what
    /// was yelled before the worker function returned is written before the
    /// worker exits, and reaches the parent's
    /// [event stream](crate::Prefork::events) before its
    /// [`Event::Reaped`](crate::Event::Reaped). For a result that comes
    /// with the reap itself (`pf_kid_exit`), see
    /// [`exit_with`](Link::exit_with).
    ///
    /// It does not wait: the value is encoded (bincode) and queued for the
    /// worker's reporting task, which writes values in order, when the
    /// worker's runtime lets it run. Up to 4 MiB may wait in the worker;
    /// past that, `yell` fails rather than grow without bound
    /// ([`yell_wait`](Link::yell_wait) waits for room instead).
    ///
    /// ```
    /// # fn doc(link: &fork_prefork::Link) -> fork_prefork::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Done { jobs: u32 }
    /// link.yell(&Done { jobs: 12 })?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DataTooLarge`] if `value` encodes to more than
    /// [`MAX_DATA`](crate::MAX_DATA) bytes; [`Error::Data`] if it cannot be
    /// encoded (a `Serialize` implementation that fails);
    /// [`Error::DataBacklog`] if 4 MiB of data already waits unwritten (the
    /// worker yells in a loop that never awaits, or faster than its parent
    /// reads): let the worker's tasks run, then yell again. Nothing is sent.
    ///
    /// # Caveats
    ///
    /// A worker killed (at the graceful timeout, the heartbeat timeout, or
    /// by a signal) loses what it had not written yet. A value the parent
    /// receives while more than [`Config::data_backlog`](crate::Config::data_backlog)
    /// values wait unread is dropped there, and counted.
    pub fn yell<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = encode(value)?;
        self.shared
            .queue(bytes)
            .map_err(|(_, queued)| Error::DataBacklog { queued })
    }

    /// [`yell`](Link::yell), waiting for room instead of failing with
    /// [`Error::DataBacklog`]: while 4 MiB of data waits unwritten in the
    /// worker, it waits until the worker's reporting task has taken it
    /// (which it does as fast as the worker's socket takes it; the parent
    /// reads that socket whether or not anyone reads the events, so the
    /// wait is bounded by the worker's own runtime, never by the parent's
    /// reader). For a worker that yells in a loop: each value is queued in
    /// order, and the loop never fails for lack of room.
    ///
    /// `value` is encoded when called; the future holds the bytes, not
    /// `value`.
    ///
    /// ```
    /// # async fn doc(link: fork_prefork::Link) -> fork_prefork::Result<()> {
    /// for chunk in 0..10_000u32 {
    ///     link.yell_wait(&chunk).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DataTooLarge`] and [`Error::Data`] as [`yell`](Link::yell);
    /// [`Error::Stopped`] if nothing more can be written (the manager is
    /// gone). Nothing is sent then.
    ///
    /// # Caveats
    ///
    /// As [`yell`](Link::yell)'s: a value the parent receives while
    /// [`Config::data_backlog`](crate::Config::data_backlog) values wait
    /// unread there is dropped and counted; waiting here does not prevent
    /// that.
    pub async fn yell_wait<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut bytes = encode(value)?;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before looking: a wake-up in between is not lost.
            room.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Error::Stopped);
            }
            match self.shared.queue(bytes) {
                Ok(()) => return Ok(()),
                Err((back, _)) => bytes = back,
            }
            room.await;
        }
    }

    /// Resolves when the worker is told to stop accepting (at once if it
    /// was): see [`is_draining`](Link::is_draining).
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.draining.subscribe();
        async move {
            // An error means the sender is gone: the worker is ending.
            let _ = rx.wait_for(|&d| d).await;
        }
    }
}

/// A busy mark, from [`Link::busy`]: the worker is idle again when the last
/// one is dropped.
#[derive(Debug)]
pub struct Busy {
    link: Link,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.link.shared.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.link.shared.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            shared: Arc::new(Shared::new(1, None)),
        }
    }

    #[test]
    fn yells_are_queued_in_order_and_encoded_as_data() {
        let link = link();
        link.yell(&1u32).unwrap();
        link.yell("two").unwrap();
        let yells = link.shared.yells.lock().unwrap().values.clone();
        assert_eq!(
            yells,
            [vec![0, 0, 0, 1], message::encode_data("two").unwrap()]
        );
        assert_eq!(message::decode_data::<String>(&yells[1]).unwrap(), "two");
    }

    #[test]
    fn a_yell_over_the_limit_is_an_error_and_sends_nothing() {
        let link = link();
        // A byte slice encodes as its length (8 bytes), then its bytes.
        let fits = vec![0u8; message::MAX_DATA - 8];
        link.yell(&fits[..]).unwrap();
        let over = vec![0u8; message::MAX_DATA - 7];
        match link.yell(&over[..]) {
            Err(Error::DataTooLarge { size, limit }) => {
                assert_eq!(
                    (size, limit),
                    (message::MAX_DATA as u64 + 1, message::MAX_DATA)
                );
            }
            other => panic!("too large, got {other:?}"),
        }
        assert_eq!(link.shared.yells.lock().unwrap().values.len(), 1);
    }

    #[test]
    fn the_first_cause_to_leave_wins() {
        let link = Link {
            shared: Arc::new(Shared::new(1, Some(2))),
        };
        assert_eq!(link.shared.leaving(), None);
        drop(link.busy());
        assert!(!link.is_draining());
        drop(link.busy());
        assert!(
            link.is_draining(),
            "the second request reaches max_requests"
        );
        link.retire();
        assert_eq!(link.shared.leaving(), Some(Leave::Recycled));

        let link = self::link();
        link.retire();
        link.shared.leave(Leave::Terminated);
        assert_eq!(link.shared.leaving(), Some(Leave::Retired));
    }

    #[test]
    fn exit_with_retires_and_keeps_the_last_value() {
        let link = link();
        link.exit_with(&1u8).unwrap();
        assert!(link.is_draining());
        link.exit_with(&2u8).unwrap();
        let data = link.shared.exit_data.lock().unwrap().clone();
        assert_eq!(data, Some(vec![2]));
        assert_eq!(link.shared.leaving(), Some(Leave::Retired));
        // Too large: an error, and nothing changes.
        let link = self::link();
        assert!(matches!(
            link.exit_with(&vec![0u8; message::MAX_DATA]),
            Err(Error::DataTooLarge { .. })
        ));
        assert!(!link.is_draining());
        assert!(link.shared.exit_data.lock().unwrap().is_none());
    }

    /// A link whose worker queue is full of the largest values, and one of
    /// them.
    fn full_queue() -> (Link, Vec<u8>) {
        let link = link();
        let value = vec![0u8; message::MAX_DATA - 8];
        for _ in 0..MAX_QUEUED / message::MAX_DATA {
            link.yell(&value[..]).unwrap();
        }
        (link, value)
    }

    #[tokio::test]
    async fn yell_wait_waits_for_room_instead_of_failing() {
        let (link, value) = full_queue();
        let waiting = tokio::spawn({
            let link = link.clone();
            let value = value.clone();
            async move { link.yell_wait(&value[..]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: it waits");
        // The reporting task takes the queue and says so.
        let taken = link.shared.yells.lock().unwrap().take();
        assert_eq!(taken.len(), MAX_QUEUED / message::MAX_DATA);
        link.shared.room.notify_waiters();
        waiting.await.unwrap().unwrap();
        assert_eq!(link.shared.yells.lock().unwrap().values.len(), 1);
    }

    #[tokio::test]
    async fn yell_wait_fails_once_nothing_more_is_written() {
        let (link, value) = full_queue();
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { link.yell_wait(&value[..]).await }
        });
        tokio::task::yield_now().await;
        link.shared.closed.store(true, Ordering::Release);
        link.shared.room.notify_waiters();
        assert!(matches!(waiting.await.unwrap(), Err(Error::Stopped)));
    }

    #[test]
    fn yells_past_the_queue_bound_fail_until_written() {
        let (link, value) = full_queue();
        let queued = link.shared.yells.lock().unwrap().bytes;
        match link.yell(&value[..]) {
            Err(Error::DataBacklog { queued: q }) => assert_eq!(q, queued),
            other => panic!("a full queue, got {other:?}"),
        }
        // The reporting task writes them out: room again.
        let written = link.shared.yells.lock().unwrap().take();
        assert_eq!(written.len(), MAX_QUEUED / message::MAX_DATA);
        link.yell(&value[..]).unwrap();
        assert_eq!(link.shared.yells.lock().unwrap().bytes, message::MAX_DATA);
    }
}
