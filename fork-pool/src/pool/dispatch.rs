//! Dispatch: which worker a job goes to, and the FIFO queue of jobs that
//! wait for a place. Plain state (no I/O, no processes, no clock), tested
//! here rule by rule.
//!
//! - A job goes to the least-loaded worker that takes jobs and whose load
//!   is below `load`; ties go to the oldest, so light load concentrates on
//!   few workers and the others can reach `stop` and leave.
//! - A job that finds no place, or finds jobs queued before it, queues.
//! - A place given back goes to the oldest queued job.
//! - A queued job whose caller gave up leaves the queue at once.
//! - Once closed, no new job is taken, until it is opened again.
//! - A bounded queue ([`Room`]) makes callers wait for room, or fail; its
//!   room closes and opens again with the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::member::Member;
use super::spawn::Kind;
use crate::config::Overflow;
use crate::error::Error;

/// A place counted on a worker, on its way to the job that takes it (a
/// [`Lease`](super::lease::Lease) once taken).
pub(crate) struct Seat<K: Kind> {
    /// The worker's id.
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) client: Arc<K::Conn>,
}

/// A job in the queue.
pub(crate) struct Waiter<K: Kind> {
    id: u64,
    tx: oneshot::Sender<Result<Seat<K>, Error>>,
    since: Instant,
    /// Its room in a bounded queue, given back when it leaves the queue.
    _room: Option<OwnedSemaphorePermit>,
}

/// The queued job's side of a [`Waiter`].
pub(crate) type Ticket<K> = oneshot::Receiver<Result<Seat<K>, Error>>;

/// The workers and the queue.
pub(crate) struct Dispatch<K: Kind> {
    /// In the order they joined (the oldest first).
    pub(crate) members: Vec<Member<K>>,
    queue: VecDeque<Waiter<K>>,
    next_waiter: u64,
    closed: bool,
    /// Jobs on one worker at most.
    load: usize,
}

// ===== impl Dispatch =====

impl<K: Kind> Dispatch<K> {
    pub(crate) fn new(load: usize) -> Self {
        Dispatch {
            members: Vec::new(),
            queue: VecDeque::new(),
            next_waiter: 0,
            closed: false,
            load: load.max(1),
        }
    }

    /// The least-loaded worker that takes jobs and has room; ties go to the
    /// oldest.
    pub(crate) fn pick(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in self.members.iter().enumerate() {
            if !m.takes_jobs() || m.load >= self.load {
                continue;
            }
            if best.is_none_or(|(_, load)| m.load < load) {
                best = Some((i, m.load));
                if m.load == 0 {
                    break;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Jobs that would start at once: the free places of the workers that
    /// take jobs, or none while jobs queue (they come first).
    pub(crate) fn free(&self) -> usize {
        if self.closed || !self.queue.is_empty() {
            return 0;
        }
        self.members
            .iter()
            .filter(|m| m.takes_jobs())
            .map(|m| self.load.saturating_sub(m.load))
            .sum()
    }

    /// Counts a job on worker `i`: its seat, and whether the worker went
    /// from idle to work.
    pub(crate) fn take(&mut self, i: usize) -> (Seat<K>, bool) {
        let m = &mut self.members[i];
        m.load += 1;
        let seat = Seat {
            id: m.id,
            pid: m.pid,
            client: m.client.clone(),
        };
        (seat, m.load == 1)
    }

    /// A place for a new job if one is free and no job queues before it;
    /// `None` if the job must queue.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closed.
    pub(crate) fn try_take(&mut self) -> Result<Option<(Seat<K>, bool)>, Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        if self.queue.is_empty()
            && let Some(i) = self.pick()
        {
            return Ok(Some(self.take(i)));
        }
        Ok(None)
    }

    /// Queues a job (at the back): its id in the queue, and where its place
    /// will come.
    pub(crate) fn enqueue(
        &mut self,
        since: Instant,
        room: Option<OwnedSemaphorePermit>,
    ) -> (u64, Ticket<K>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.queue.push_back(Waiter {
            id,
            tx,
            since,
            _room: room,
        });
        (id, rx)
    }

    /// Takes queued job `id` out (its caller gave up); false if it is not
    /// queued any more (it was handed a place, or failed).
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        match self.queue.iter().position(|w| w.id == id) {
            Some(i) => {
                self.queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// A job on worker `id` ended: its place is free. The worker's index, if
    /// it is still in.
    pub(crate) fn give_back(&mut self, id: u64) -> Option<usize> {
        let i = self.position(id)?;
        let m = &mut self.members[i];
        m.load -= 1;
        m.served += 1;
        Some(i)
    }

    /// Hands free places to queued jobs, oldest first. Whether a worker went
    /// from idle to work.
    pub(crate) fn hand_out(&mut self) -> bool {
        let mut went_to_work = false;
        while !self.queue.is_empty() {
            let Some(i) = self.pick() else { break };
            let waiter = self.queue.pop_front().expect("not empty");
            let (seat, started) = self.take(i);
            if waiter.tx.send(Ok(seat)).is_err() {
                // The caller gave up meanwhile: the place is free again.
                self.members[i].load -= 1;
            } else {
                went_to_work |= started;
            }
        }
        went_to_work
    }

    /// Fails every queued job with `error()`.
    pub(crate) fn fail_queued(&mut self, error: impl Fn() -> Error) {
        for waiter in self.queue.drain(..) {
            let _ = waiter.tx.send(Err(error()));
        }
    }

    /// Takes no new job from now on.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Takes new jobs again (the pool opened again).
    pub(crate) fn open(&mut self) {
        self.closed = false;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Since when the oldest queued job waits.
    pub(crate) fn oldest_queued(&self) -> Option<Instant> {
        self.queue.front().map(|w| w.since)
    }

    pub(crate) fn position(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// Takes worker `id` out, if it is in.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Member<K>> {
        let i = self.position(id)?;
        Some(self.members.remove(i))
    }

    /// Workers that are in and have no job.
    pub(crate) fn idle(&self) -> usize {
        self.members.iter().filter(|m| m.load == 0).count()
    }
}

/// Room in a bounded queue.
pub(crate) struct Room {
    /// The room of the queue as it is now: a closed semaphore cannot open
    /// again, so opening the room again puts a new one in its place.
    sem: Option<Mutex<Arc<Semaphore>>>,
    limit: usize,
    overflow: Overflow,
}

// ===== impl Room =====

impl Room {
    /// Room for `limit` jobs (at least 1), or unbounded.
    pub(crate) fn new(limit: Option<usize>, overflow: Overflow) -> Self {
        Room {
            sem: limit.map(|n| Mutex::new(Arc::new(Semaphore::new(n.max(1))))),
            limit: limit.map_or(0, |n| n.max(1)),
            overflow,
        }
    }

    /// The semaphore as it is now; `None` when the queue is unbounded.
    fn now(&self) -> Option<Arc<Semaphore>> {
        let sem = self.sem.as_ref()?;
        Some(sem.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Room for one more queued job, waiting for it or failing as the
    /// overflow says; `None` when the queue is unbounded. The room is
    /// stale once [`closed`](Self::closed): the room closed since it was
    /// given, even if it opened again.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] (`Overflow::Error`), [`Error::Closed`] once
    /// closed.
    pub(crate) async fn reserve(&self) -> Result<Option<OwnedSemaphorePermit>, Error> {
        let Some(sem) = self.now() else {
            return Ok(None);
        };
        let permit = match self.overflow {
            Overflow::Error => sem.try_acquire_owned().map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => Error::Closed,
                tokio::sync::TryAcquireError::NoPermits => Error::QueueFull(self.limit),
            })?,
            Overflow::Wait => sem.acquire_owned().await.map_err(|_| Error::Closed)?,
        };
        Ok(Some(permit))
    }

    /// Wakes callers waiting for room: they fail with [`Error::Closed`].
    pub(crate) fn close(&self) {
        if let Some(sem) = self.now() {
            sem.close();
        }
    }

    /// Opens the room again, all of it, if it was closed. Room given before
    /// stays [`closed`](Self::closed).
    pub(crate) fn open(&self) {
        if let Some(sem) = &self.sem {
            let mut sem = sem.lock().unwrap_or_else(PoisonError::into_inner);
            if sem.is_closed() {
                *sem = Arc::new(Semaphore::new(self.limit));
            }
        }
    }

    /// Whether `room` (given by [`reserve`](Self::reserve)) was given
    /// before the room last closed.
    pub(crate) fn closed(room: &OwnedSemaphorePermit) -> bool {
        room.semaphore().is_closed()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::pool::testing::{self, Fake, settle};

    fn pool(workers: u64, load: usize) -> Dispatch<Fake> {
        let mut d = Dispatch::new(load);
        d.members = (0..workers).map(testing::member).collect();
        d
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn free_places_are_those_of_workers_that_take_jobs_with_none_queued() {
        let mut d = pool(3, 2);
        assert_eq!(d.free(), 6);
        d.members[0].load = 2;
        d.members[1].load = 1;
        assert_eq!(d.free(), 3);
        d.members[2].leaving = Some(crate::pool::member::Leave::Idle);
        assert_eq!(d.free(), 1);
        d.members[1].load = 2;
        let (_id, _ticket) = d.enqueue(now(), None);
        assert_eq!(d.free(), 0);
        assert!(d.cancel(_id));
        d.members[1].load = 1;
        assert_eq!(d.free(), 1);
        d.close();
        assert_eq!(d.free(), 0);
    }

    #[test]
    fn picks_the_least_loaded_and_the_oldest_on_ties() {
        let mut d = pool(3, 4);
        d.members[0].load = 2;
        d.members[1].load = 1;
        d.members[2].load = 1;
        assert_eq!(d.pick(), Some(1));
        d.members[1].load = 0;
        d.members[2].load = 0;
        assert_eq!(d.pick(), Some(1));
        // Leaving workers and those being measured take nothing.
        d.members[1].leaving = Some(crate::pool::member::Leave::Idle);
        assert_eq!(d.pick(), Some(2));
        d.members[2].reading_rss = true;
        assert_eq!(d.pick(), Some(0));
    }

    #[test]
    fn load_limits_the_jobs_per_worker() {
        let mut d = pool(2, 2);
        let took: Vec<u64> = (0..4)
            .map(|_| d.try_take().unwrap().expect("room").0.id)
            .collect();
        assert_eq!(took, [0, 1, 0, 1]);
        assert!(d.members.iter().all(|m| m.load == 2));
        assert!(d.try_take().unwrap().is_none(), "a fifth job found a place");
    }

    #[test]
    fn a_worker_going_to_work_is_told() {
        let mut d = pool(1, 2);
        assert!(d.try_take().unwrap().unwrap().1);
        assert!(!d.try_take().unwrap().unwrap().1);
        // Also when a queued job takes it.
        let (_, _first) = d.enqueue(now(), None);
        let (_, _second) = d.enqueue(now(), None);
        d.give_back(0);
        d.give_back(0);
        assert!(d.hand_out(), "an idle worker went to work unnoticed");
        assert_eq!(d.members[0].load, 2);
        d.give_back(0);
        let (_, _third) = d.enqueue(now(), None);
        assert!(!d.hand_out(), "a busy worker counted as going to work");
    }

    #[test]
    fn queued_jobs_get_places_in_order() {
        let mut d = pool(1, 1);
        let _running = d.try_take().unwrap().unwrap();
        let (_, mut first) = d.enqueue(now(), None);
        let (_, mut second) = d.enqueue(now(), None);
        assert_eq!(d.queued(), 2);
        // Nothing is free: nothing is handed out.
        assert!(!d.hand_out());
        assert!(first.try_recv().is_err());
        // A place given back goes to the first queued job, and only to it.
        assert_eq!(d.give_back(0), Some(0));
        d.hand_out();
        assert_eq!(first.try_recv().unwrap().ok().map(|s| s.id), Some(0));
        assert!(second.try_recv().is_err());
        assert_eq!(d.queued(), 1);
        assert_eq!(d.members[0].load, 1);
        assert_eq!(d.give_back(0), Some(0));
        d.hand_out();
        assert!(second.try_recv().unwrap().is_ok());
        assert_eq!(d.queued(), 0);
    }

    #[test]
    fn a_new_job_does_not_pass_queued_ones() {
        let mut d = pool(1, 1);
        let _running = d.try_take().unwrap().unwrap();
        let (_, _queued) = d.enqueue(now(), None);
        d.give_back(0);
        // A place is free, but a job waits for it.
        assert!(d.try_take().unwrap().is_none());
    }

    #[test]
    fn a_dropped_queued_job_leaves_the_queue_at_once() {
        let mut d = pool(1, 1);
        let _running = d.try_take().unwrap().unwrap();
        let (gone, ticket) = d.enqueue(now(), None);
        let (_, mut next) = d.enqueue(now(), None);
        drop(ticket);
        assert!(d.cancel(gone));
        assert_eq!(d.queued(), 1);
        assert!(!d.cancel(gone));
        // A caller gone without cancelling loses its place to the next.
        let (_, dropped) = d.enqueue(now(), None);
        drop(dropped);
        d.give_back(0);
        d.hand_out();
        assert!(next.try_recv().unwrap().is_ok());
        assert_eq!(d.members[0].load, 1);
        d.give_back(0);
        d.hand_out();
        assert_eq!(d.members[0].load, 0, "a place went to a caller gone");
        assert_eq!(d.queued(), 0);
    }

    #[test]
    fn closed_takes_no_new_job_and_fails_the_queue() {
        let mut d = pool(1, 1);
        let _running = d.try_take().unwrap().unwrap();
        let (_, mut queued) = d.enqueue(now(), None);
        d.close();
        assert!(matches!(d.try_take(), Err(Error::Closed)));
        d.fail_queued(|| Error::Closed);
        assert!(matches!(queued.try_recv(), Ok(Err(Error::Closed))));
        assert_eq!(d.queued(), 0);
        // Opened again, it takes jobs as before.
        d.open();
        assert!(d.try_take().unwrap().is_none(), "a place on a busy worker");
        d.give_back(0);
        assert_eq!(d.try_take().unwrap().map(|(seat, _)| seat.id), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_room_opens_again_whole_and_room_given_before_stays_stale() {
        let room = Room::new(Some(2), Overflow::Error);
        let before = settle(room.reserve()).await.unwrap().unwrap();
        assert!(!Room::closed(&before));
        room.close();
        assert!(matches!(settle(room.reserve()).await, Err(Error::Closed)));
        assert!(Room::closed(&before));
        room.open();
        // All of it: the room given before counts for nothing now.
        let a = settle(room.reserve()).await.unwrap().unwrap();
        let b = settle(room.reserve()).await.unwrap().unwrap();
        assert!(!Room::closed(&a) && !Room::closed(&b));
        assert!(matches!(
            settle(room.reserve()).await,
            Err(Error::QueueFull(2))
        ));
        assert!(Room::closed(&before), "stale room looked fresh");
        // Opening an open room changes nothing.
        room.open();
        assert!(matches!(
            settle(room.reserve()).await,
            Err(Error::QueueFull(2))
        ));
        drop(before);
        drop(a);
        assert!(settle(room.reserve()).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_or_waits() {
        let room = Room::new(Some(1), Overflow::Error);
        let held = settle(room.reserve()).await.unwrap();
        assert!(held.is_some());
        assert!(matches!(
            settle(room.reserve()).await,
            Err(Error::QueueFull(1))
        ));
        drop(held);
        assert!(settle(room.reserve()).await.unwrap().is_some());

        // Zero is taken as one.
        let room = Room::new(Some(0), Overflow::Wait);
        let held = settle(room.reserve()).await.unwrap();
        let mut waiting = Box::pin(room.reserve());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "no room, yet it got some"
        );
        drop(held);
        assert!(settle(waiting).await.unwrap().is_some());
        // Closed: waiting callers fail.
        let _held = settle(room.reserve()).await.unwrap();
        let mut waiting = Box::pin(room.reserve());
        assert!((&mut waiting).now_or_never().is_none());
        room.close();
        assert!(matches!(settle(waiting).await, Err(Error::Closed)));
        // Unbounded: always room.
        assert!(
            Room::new(None, Overflow::Error)
                .reserve()
                .await
                .unwrap()
                .is_none()
        );
    }
}
