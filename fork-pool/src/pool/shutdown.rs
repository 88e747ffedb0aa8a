//! Shutdown: stop taking calls, drain the queue and the running jobs,
//! close the workers and wait until every process the pool started was
//! reaped; past `shutdown_timeout`, kill what is left. And after it, the
//! pool opened again by the next call. The phases are [`Life`]'s.

use std::future::Future;
use std::sync::Arc;

use fork_core::Signal;
use tokio::time::Instant;

use super::deadline::after;
use super::host::Link;
use super::life::Shutdown;
use super::shared::{Placed, Shared, State};
use super::spawn::{Process, Spawn};
use crate::error::Error;

// ===== impl Shared: shutdown =====

impl<S: Spawn> Shared<S> {
    /// Shuts the pool down (see [`Pool::shutdown`](super::Pool::shutdown)).
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        if let Some(count) = self.begin_shutdown() {
            self.shut_down(count).await;
        }
    }

    /// Closes the pool and shuts it down in a task of its own, which ends
    /// even if nobody waits for it, unless a shutdown is under way. The
    /// count of shutdowns at whose end the pool is shut down, or `None` if
    /// it is already.
    fn begin_shutdown(self: &Arc<Self>) -> Option<u64> {
        let deadline = after(Instant::now(), self.config.shutdown_timeout);
        let mut st = self.lock();
        match st.life.shutdown() {
            Shutdown::Run => {
                st.dispatch.close();
                self.room.close();
                let count = st.life.finished_at();
                drop(st);
                tokio::spawn(self.clone().drain_and_reap(deadline));
                Some(count)
            }
            Shutdown::Wait(count) => Some(count),
            Shutdown::Done => None,
        }
    }

    /// Shuts down a pool closed by [`begin_shutdown`](Self::begin_shutdown):
    /// lets the jobs finish, closes the workers and waits for them, until
    /// `deadline`, then kills what is left.
    async fn drain_and_reap(self: Arc<Self>, deadline: Instant) {
        tracing::debug!("pool shutting down");
        // Drain the queue and the running jobs.
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.lock();
                let busy = st.dispatch.members.iter().any(|m| m.load > 0);
                if st.dispatch.queued() == 0 && !busy {
                    break;
                }
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        // Close every worker and wait for it; kill what is left at the deadline.
        let members = {
            let mut st = self.lock();
            st.life.drained();
            st.dispatch.fail_queued(|| Error::Closed);
            std::mem::take(&mut st.dispatch.members)
        };
        // Dropping the members closes their connections: they finish and
        // exit 0. The supervisor stops.
        drop(members);
        self.wake.notify_one();
        // Wait until every worker process the pool started was reaped: those
        // just closed, those that left before (recycled, stopped, killed,
        // lost) and are still exiting, and those still starting (killed as
        // they arrive, see `Life::reaping`); and until the supervisor has
        // stopped. Past the deadline, kill what is left and give up on
        // starts (they are killed too).
        let mut killed = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let alive: Vec<S::Process> = {
                let st = self.lock();
                if st.alive.is_empty() && st.starting == 0 && !st.supervising {
                    break;
                }
                st.alive.values().cloned().collect()
            };
            if killed {
                changed.await;
            } else if tokio::time::timeout_at(deadline, changed).await.is_err() {
                killed = true;
                for process in alive {
                    process.signal(Signal::SIGKILL);
                }
                self.abandon.send_replace(true);
            }
        }
        let mut st = self.lock();
        self.done.send_replace(st.life.reaped());
        drop(st);
        tracing::debug!("pool shut down");
    }

    /// Resolves once the count of shutdowns reaches `count`, or the pool is
    /// gone (which it is only once shut down). Holds no handle.
    fn shut_down(&self, count: u64) -> impl Future<Output = ()> + Send + 'static {
        let mut done = self.done.subscribe();
        async move {
            let _ = done.wait_for(|&done| done >= count).await;
        }
    }

    /// Resolves at the end of the shutdown under way or the next one, or at
    /// once if the pool is shut down (see
    /// [`Pool::finished`](super::Pool::finished)).
    pub(crate) fn finished(&self) -> impl Future<Output = ()> + Send + 'static {
        let count = self.lock().life.finished_at();
        self.shut_down(count)
    }

    /// A call found the pool closed: if it is shut down (not shutting
    /// down), opens it again as it was built (its room whole, no back-off,
    /// nothing given up on), with its stats, its events stream and its
    /// count of shutdowns as they were. The number of spare workers to
    /// [`launch`](Self::launch) then, if it opened it.
    pub(crate) fn reopen(&self, st: &mut State<S>) -> Option<Vec<Placed>> {
        if !st.life.reopen() {
            return None;
        }
        st.dispatch.open();
        self.room.open();
        self.abandon.send_replace(false);
        st.last_spawn = None;
        for slot in &mut st.hosts {
            // Spawns back off no more; a host down stays so.
            slot.spawn_failures = 0;
            if slot.link() == Link::Up {
                slot.not_before = None;
            }
        }
        st.next_wake = None;
        tracing::debug!("pool opened again");
        Some(self.count_launch(st))
    }

    /// The last handle of the pool was dropped: shut down in the background,
    /// or, without a runtime, close what can be closed at once. For good:
    /// calls hold a handle, so none is left to open the pool again.
    pub(crate) fn drop_all_handles(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.begin_shutdown();
        } else {
            let mut st = self.lock();
            st.dispatch.close();
            if let Some(count) = st.life.end_now() {
                st.dispatch.members.clear();
                st.dispatch.fail_queued(|| Error::Closed);
                // Nothing here can wait for the workers (no runtime): their
                // connections are closed, they exit, and the template reaps
                // them.
                self.done.send_replace(count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::time::Instant;

    use super::*;
    use crate::config::{Config, Overflow};
    use crate::pool::testing::{self, Fake, World, ctx, exit_0, settle, work};

    const SEC: Duration = Duration::from_secs(1);

    /// The pids of the double's workers so far.
    fn pids(fake: &Fake) -> BTreeSet<u32> {
        fake.world().workers.iter().map(|w| w.pid).collect()
    }

    /// Whether every worker of the double has exited.
    fn all_exited(fake: &Fake) -> bool {
        fake.world().workers.iter().all(|w| w.exited().is_some())
    }

    /// Polls `fut` once, outside tokio's cooperative budget (spent, it makes
    /// a ready future look pending): its output, if it is ready.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        tokio::task::unconstrained(fut).now_or_never()
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_then_closes_the_workers() {
        let config = Config {
            max: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let t0 = Instant::now();
        let (a, b, ()) = settle(async {
            tokio::join!(
                pool.call(ctx(), work(SEC)),
                pool.call(ctx(), work(SEC)),
                async {
                    pool.wait_until(|s| s.queued == 1).await;
                    pool.shutdown().await;
                }
            )
        })
        .await;
        // Both jobs ran, one after the other, before the pool was gone.
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(Instant::now() - t0, 2 * SEC);
        let worker = fake.world().workers[0].clone();
        assert_eq!(worker.exited(), exit_0());
        assert!(
            worker.signals().is_empty(),
            "a drained worker was signalled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_kills_what_is_left_at_its_timeout() {
        let config = Config {
            max: 1,
            load: 1,
            shutdown_timeout: 5 * SEC,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let t0 = Instant::now();
        let (running, queued, ()) = settle(async {
            tokio::join!(
                pool.call(ctx(), work(60 * SEC)),
                pool.call(ctx(), work(SEC)),
                async {
                    pool.wait_until(|s| s.queued == 1).await;
                    pool.shutdown().await;
                    assert_eq!(Instant::now() - t0, 5 * SEC, "shutdown's timeout");
                }
            )
        })
        .await;
        assert!(running.is_err(), "a killed worker answered");
        let queued = queued.unwrap_err();
        assert!(matches!(Error::find(&queued), Some(Error::Closed)));
        let worker = fake.world().workers[0].clone();
        let signals = worker.signals();
        assert_eq!(signals.len(), 1);
        assert_eq!(signals[0], (Signal::SIGKILL, t0 + 5 * SEC));
        assert!(worker.exited().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_fail_while_shutting_down_and_a_second_shutdown_waits_for_the_first() {
        let config = Config {
            max: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let t0 = Instant::now();
        let (running, ()) = settle(async {
            tokio::join!(pool.call(ctx(), work(SEC)), async {
                pool.wait_until(|s| s.busy == 1).await;
                // Begun (its first poll closes the pool), not done: the
                // job runs for a second.
                let mut first = Box::pin(pool.shutdown());
                assert!(poll_once(&mut first).is_none());
                let mut finished = Box::pin(pool.finished());
                let late = pool.call(ctx(), work(SEC)).await.unwrap_err();
                assert!(matches!(Error::find(&late), Some(Error::Closed)));
                let ((), ()) = tokio::join!(first, async {
                    pool.shutdown().await;
                    // The second returned once the first was done.
                    assert_eq!(Instant::now() - t0, SEC);
                    assert_eq!(fake.world().workers[0].exited(), exit_0());
                    assert!(poll_once(&mut finished).is_some());
                });
            })
        })
        .await;
        assert!(running.is_ok(), "the running job did not finish");
        // The late call started nothing.
        assert_eq!(fake.world().attempts.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_call_after_shutdown_opens_the_pool_with_fresh_workers() {
        let config = Config {
            max: 2,
            idle: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let first = settle(pool.call(ctx(), work(SEC))).await.unwrap();
        settle(pool.shutdown()).await;
        let before = pids(&fake);
        assert!(before.contains(&first));
        assert!(all_exited(&fake), "a worker outlived shutdown");
        let stats = pool.stats();
        assert_eq!((stats.starting, stats.idle, stats.busy), (0, 0, 0));
        // Shut down, the pool starts nothing by itself, not even its
        // `idle` spare: every task has its turn while the paused clock
        // runs an hour on.
        tokio::time::sleep(3600 * SEC).await;
        assert_eq!(pids(&fake), before, "a worker started with nobody calling");

        // The next call opens it: a new worker answers, and the spare is
        // back.
        let second = settle(pool.call(ctx(), work(SEC))).await.unwrap();
        assert!(!before.contains(&second), "answered by a worker of before");
        let stats = settle(pool.wait_until(|s| s.idle == 1)).await;
        assert_eq!(stats.spawned as usize, pids(&fake).len());
        assert_eq!(stats.completed, 2, "the counters started again");

        settle(pool.shutdown()).await;
        assert!(all_exited(&fake), "a worker outlived the second shutdown");
        let stats = pool.stats();
        assert_eq!((stats.starting, stats.idle, stats.busy), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_waits_for_its_shutdown_even_if_a_call_opens_the_pool_at_once() {
        let (pool, _fake) = testing::pool(Config::default(), World::default());
        settle(pool.call(ctx(), work(SEC))).await.unwrap();
        let mut open = Box::pin(pool.finished());
        assert!(poll_once(&mut open).is_none());
        settle(pool.shutdown()).await;
        // Taken while shut down: at once.
        assert!(poll_once(&mut Box::pin(pool.finished())).is_some());
        // A call opens the pool before the first waiter looks: it still
        // sees the shutdown it waited for.
        settle(pool.call(ctx(), work(SEC))).await.unwrap();
        assert!(poll_once(&mut open).is_some(), "missed the shutdown");
        // Taken now, it waits for the next shutdown.
        let mut next = Box::pin(pool.finished());
        assert!(poll_once(&mut next).is_none());
        settle(pool.shutdown()).await;
        assert!(poll_once(&mut next).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_that_gave_up_on_a_start_leaves_the_next_starts_alone() {
        let config = Config {
            max: 1,
            idle: 1,
            shutdown_timeout: SEC,
            ..Config::default()
        };
        let world = World {
            start_time: 10 * SEC,
            ..World::default()
        };
        let (pool, fake) = testing::pool(config, world);
        // The spare is still starting when the time is up: given up on.
        settle(pool.shutdown()).await;
        assert!(fake.world().workers.is_empty());
        let t0 = Instant::now();
        settle(pool.call(ctx(), work(SEC))).await.unwrap();
        assert_eq!(Instant::now() - t0, 11 * SEC, "a start, then the job");
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_opened_again_scales_and_recycles_as_a_new_one() {
        let config = Config {
            max: 2,
            load: 1,
            start: Duration::ZERO,
            max_requests: Some(2),
            max_requests_jitter: Some(0),
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config, World::default());
        let two = || async {
            let (a, b) = tokio::join!(pool.call(ctx(), work(SEC)), pool.call(ctx(), work(SEC)));
            (a.unwrap(), b.unwrap())
        };
        let (a, b) = settle(two()).await;
        assert_ne!(a, b, "two jobs at load 1 shared a worker");
        settle(pool.shutdown()).await;
        // Grows to two new workers again; each leaves after two jobs.
        let (c, d) = settle(two()).await;
        assert_ne!(c, d, "the pool opened again did not grow");
        assert!(![a, b].contains(&c) && ![a, b].contains(&d));
        assert_eq!(settle(two()).await, (c, d));
        let stats = settle(pool.wait_until(|s| s.idle + s.busy == 0)).await;
        assert_eq!(stats.recycled, 2);
        // Counted over the pool's life.
        assert_eq!((stats.spawned, stats.completed), (4, 6));
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_opened_again_bounds_its_queue_again() {
        let config = Config {
            max: 1,
            load: 1,
            queue_limit: Some(1),
            overflow: Overflow::Error,
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config, World::default());
        for _ in 0..2 {
            // No worker yet: the first call waits in the queue, which is
            // then full.
            let (queued, full) = settle(async {
                tokio::join!(pool.call(ctx(), work(SEC)), pool.call(ctx(), work(SEC)))
            })
            .await;
            assert!(queued.is_ok(), "{queued:?}");
            let full = full.unwrap_err();
            assert!(matches!(Error::find(&full), Some(Error::QueueFull(1))));
            settle(pool.shutdown()).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_leaves_no_task_of_the_pool_running() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let (pool, _fake) = testing::pool(Config::default(), World::default());
        // Never used: only its supervisor runs, and stops.
        settle(pool.shutdown()).await;
        assert_eq!(tasks(), 0, "a task outlived the shutdown of an unused pool");
        // Opened again and used: its workers' tasks end too.
        settle(pool.call(ctx(), work(SEC))).await.unwrap();
        assert!(tasks() > 0);
        settle(pool.shutdown()).await;
        assert_eq!(tasks(), 0, "a task outlived the shutdown of a used pool");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_for_room_fails_at_shutdown_even_if_the_pool_opened_again() {
        let config = Config {
            max: 1,
            load: 1,
            queue_limit: Some(1),
            overflow: Overflow::Wait,
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config, World::default());
        let mut running = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(poll_once(&mut running).is_none());
        settle(pool.wait_until(|s| s.busy == 1)).await;
        let mut queued = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(poll_once(&mut queued).is_none());
        // Waits for room in the queue, which the queued call leaves, but
        // looks only after a shutdown and a call that opened the pool
        // again: it overlapped the shutdown, and the room it waited for is
        // not the room of the queue now.
        let mut late = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(poll_once(&mut late).is_none());
        drop(queued);
        drop(running);
        settle(pool.shutdown()).await;
        let mut next = Box::pin(pool.call(ctx(), work(SEC)));
        assert!(poll_once(&mut next).is_none());
        assert_eq!(pool.stats().queued, 1);
        let late = poll_once(&mut late).expect("the late call waited on");
        assert!(matches!(
            Error::find(&late.unwrap_err()),
            Some(Error::Closed)
        ));
        assert_eq!(pool.stats().queued, 1, "the queue went past its limit");
        assert!(settle(next).await.is_ok());
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_even_if_its_caller_stops_waiting() {
        let config = Config {
            max: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let t0 = Instant::now();
        let (running, ()) = settle(async {
            tokio::join!(pool.call(ctx(), work(SEC)), async {
                pool.wait_until(|s| s.busy == 1).await;
                // Begun, then given up on at once.
                assert!(poll_once(&mut Box::pin(pool.shutdown())).is_none());
                pool.finished().await;
                assert_eq!(Instant::now() - t0, SEC, "not after the drain");
            })
        })
        .await;
        assert!(running.is_ok());
        assert_eq!(fake.world().workers[0].exited(), exit_0());
        // Shut down, not stuck shutting down: a call opens it again.
        assert!(settle(pool.call(ctx(), work(SEC))).await.is_ok());
        settle(pool.shutdown()).await;
    }
}
