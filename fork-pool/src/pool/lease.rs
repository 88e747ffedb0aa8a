//! A lease: a job's place on a worker. Taken at once or through the queue
//! ([`Shared::acquire`]); dropping it gives the place back
//! ([`Shared::release`]), which may retire the worker and hands the place
//! to the next queued job.

use std::future::Future;
use std::sync::Arc;

use futures::future::Either;
use tokio::time::Instant;

use super::deadline::after;
use super::dispatch::{Room, Seat, Ticket};
use super::member::AfterJob;
use super::shared::Shared;
use super::spawn::{Conn, Process, Spawn};
use crate::error::Error;

/// A job's place on a worker, given back when dropped.
pub(crate) struct Lease<'a, S: Spawn> {
    pool: &'a Arc<Shared<S>>,
    /// The worker's id.
    pub(crate) id: u64,
    pub(crate) pid: u32,
    /// The job was answered (counted in `Stats::completed`).
    pub(crate) answered: bool,
}

// ===== impl Lease =====

impl<'a, S: Spawn> Lease<'a, S> {
    /// Owns a seat counted on a worker: the lease, and the worker's client.
    pub(crate) fn new(pool: &'a Arc<Shared<S>>, seat: Seat<S>) -> (Self, Arc<S::Conn>) {
        let lease = Lease {
            pool,
            id: seat.id,
            pid: seat.pid,
            answered: false,
        };
        (lease, seat.client)
    }

    pub(crate) fn pool(&self) -> &'a Arc<Shared<S>> {
        self.pool
    }
}

impl<S: Spawn> Drop for Lease<'_, S> {
    fn drop(&mut self) {
        self.pool.release(self.id, self.answered);
    }
}

/// A job waiting in the queue: dropped before it left the queue (its caller
/// gave up), it takes the job out, or gives back the place it was handed.
struct Queued<'a, S: Spawn> {
    pool: &'a Arc<Shared<S>>,
    /// The job's id in the queue.
    id: u64,
    ticket: Ticket<S>,
    done: bool,
}

impl<S: Spawn> Drop for Queued<'_, S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let cancelled = self.pool.lock().dispatch.cancel(self.id);
        if cancelled {
            self.pool.changed.notify_waiters();
        } else if let Ok(Ok(seat)) = self.ticket.try_recv() {
            // Handed a place meanwhile (under the lock, so it is here now):
            // give it back.
            drop(Lease::new(self.pool, seat));
        }
    }
}

// ===== impl Shared: taking and giving back places =====

impl<S: Spawn> Shared<S> {
    /// Gets a place on a worker, waiting in the queue if none is free: the
    /// lease, and the worker's client. Takes a free place when called, not
    /// when first polled.
    pub(crate) fn acquire(
        self: &Arc<Self>,
    ) -> impl Future<Output = Result<(Lease<'_, S>, Arc<S::Conn>), Error>> + '_ {
        match self.try_take() {
            Ok(Some(seat)) => Either::Left(std::future::ready(Ok(Lease::new(self, seat)))),
            Ok(None) => Either::Right(Box::pin(self.queue_up())),
            Err(e) => Either::Left(std::future::ready(Err(e))),
        }
    }

    /// Waits in the queue (after waiting for room in it, if it is bounded
    /// and the caller chose to wait) for a place on a worker.
    async fn queue_up(self: &Arc<Self>) -> Result<(Lease<'_, S>, Arc<S::Conn>), Error> {
        let room = self.room.reserve().await?;
        let (id, ticket) = {
            let mut st = self.lock();
            if room.as_ref().is_some_and(Room::closed) {
                // The pool shut down since the room was given, and a call
                // opened it again (or the queue would say so): possible only
                // with threads, one between `reserve` and this lock while
                // others shut down and call. This call overlapped the
                // shutdown; its room is not the queue's any more.
                return Err(Error::Closed);
            }
            if let Some((seat, went_to_work)) = st.dispatch.try_take()? {
                if went_to_work {
                    self.went_to_work(&st);
                }
                return Ok(Lease::new(self, seat));
            }
            let queued = st.dispatch.enqueue(Instant::now(), room);
            // The supervisor grows the pool for waiting jobs, if it can.
            if st.dispatch.members.len() + st.starting < self.knobs.max {
                self.wake.notify_one();
            }
            queued
        };
        self.changed.notify_waiters();
        // A caller that gives up (its future dropped, as by a timeout or a
        // deadline) takes its job out of the queue, and the room with it.
        let mut queued = Queued {
            pool: self,
            id,
            ticket,
            done: false,
        };
        let result = (&mut queued.ticket).await;
        queued.done = true;
        match result {
            Ok(Ok(seat)) => Ok(Lease::new(self, seat)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// A job on worker `id` ended: free its place, retire the worker if it
    /// is due, feed the queue.
    pub(crate) fn release(self: &Arc<Self>, id: u64, answered: bool) {
        // Read the clock only when something needs it.
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        let mut read_rss = None;
        let mut leaving = None;
        let mut turned_idle = false;
        {
            let mut st = self.lock();
            if answered {
                st.stats.completed += 1;
            }
            if let Some(i) = st.dispatch.give_back(id) {
                let m = &mut st.dispatch.members[i];
                if m.load == 0 {
                    m.idle_since = now();
                    turned_idle = true;
                }
                let retire = m.client.retire_requested();
                if m.after_job(retire, self.config.max_rss.is_some(), &mut now) == AfterJob::ReadRss
                {
                    read_rss = Some((m.process.clone(), m.served));
                }
                if m.gone_idle_leaving() {
                    leaving = Some(self.take_leaving(&mut st, i));
                }
                if turned_idle || leaving.is_some() {
                    self.changed.notify_waiters();
                }
            }
            self.hand_out(&mut st);
            // Wake the supervisor only when it can act: a worker left; jobs
            // wait and the pool may grow; or a worker turned idle that may be
            // stopped (more idle than `idle`) and no timer of the supervisor
            // would look before its `stop` is due.
            let may_grow = st.dispatch.members.len() + st.starting < self.knobs.max;
            let timer_needed = turned_idle
                && st
                    .next_wake
                    .is_none_or(|at| at > after(now(), self.config.stop))
                && st.dispatch.idle() > self.knobs.idle;
            if leaving.is_some() || (st.dispatch.queued() > 0 && may_grow) || timer_needed {
                self.wake.notify_one();
            }
        }
        if let Some(m) = leaving {
            self.leave(m);
        }
        if let Some((process, served)) = read_rss {
            // `/proc` is read off the runtime's threads.
            let pool = self.clone();
            tokio::spawn(async move {
                let rss = tokio::task::spawn_blocking(move || process.rss())
                    .await
                    .ok()
                    .flatten();
                pool.rss_read(id, served, rss);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::config::Config;
    use crate::pool::testing::{self, World, ctx, settle, work};

    const SEC: Duration = Duration::from_secs(1);

    fn one_worker_at_load_one() -> Config {
        Config {
            max: 1,
            load: 1,
            ..Config::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_given_back_goes_to_the_next_queued_call_at_once() {
        let (pool, _fake) = testing::pool(one_worker_at_load_one(), World::default());
        let t0 = Instant::now();
        let (a, b, c) = settle(async {
            tokio::join!(
                pool.call(ctx(), work(SEC)),
                async {
                    let pid = pool.call(ctx(), work(SEC)).await;
                    (pid, Instant::now() - t0)
                },
                async {
                    let pid = pool.call(ctx(), work(SEC)).await;
                    (pid, Instant::now() - t0)
                },
            )
        })
        .await;
        assert!(a.is_ok());
        assert_eq!((b.0.is_ok(), b.1), (true, 2 * SEC));
        assert_eq!((c.0.is_ok(), c.1), (true, 3 * SEC));
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_queued_call_leaves_the_queue_and_its_place_is_not_lost() {
        let (pool, _fake) = testing::pool(one_worker_at_load_one(), World::default());
        let running = pool.call(ctx(), work(SEC));
        tokio::pin!(running);
        assert!(running.as_mut().now_or_never().is_none());
        settle(pool.wait_until(|s| s.busy == 1)).await;
        let mut queued = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(queued.as_mut().now_or_never().is_none());
        assert_eq!(pool.stats().queued, 1);
        drop(queued);
        assert_eq!(pool.stats().queued, 0, "a dropped call stayed queued");
        assert!(settle(running).await.is_ok());

        // Dropped after it was handed a place, before it took it: the place
        // is given back.
        let running = pool.call(ctx(), work(SEC));
        tokio::pin!(running);
        assert!(running.as_mut().now_or_never().is_none());
        let mut queued = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(queued.as_mut().now_or_never().is_none());
        assert!(settle(running).await.is_ok());
        assert_eq!(pool.stats().busy, 1, "the place went to the queued call");
        drop(queued);
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.idle, stats.queued), (0, 1, 0));
        settle(pool.shutdown()).await;
    }
}
