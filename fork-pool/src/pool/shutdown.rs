//! Shutdown: stop taking calls, drain the queue and the running jobs,
//! close the workers and wait until every process the pool started was
//! reaped; past `shutdown_timeout`, kill what is left.

use std::sync::Arc;

use fork_core::Signal;
use tokio::time::Instant;

use super::deadline::after;
use super::shared::Shared;
use super::spawn::{Process, Spawn};
use crate::error::Error;

// ===== impl Shared: shutdown =====

impl<S: Spawn> Shared<S> {
    /// Shuts the pool down (see [`Pool::shutdown`](super::Pool::shutdown)).
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        let deadline = after(Instant::now(), self.config.shutdown_timeout);
        let past_draining = {
            let mut st = self.lock();
            st.dispatch.close();
            st.finished
        };
        if past_draining {
            // Another shutdown is past draining: return when it is done.
            let _ = self.done.subscribe().wait_for(|done| *done).await;
            return;
        }
        self.room.close();
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
            st.finished = true;
            st.dispatch.fail_queued(|| Error::Closed);
            std::mem::take(&mut st.dispatch.members)
        };
        // Dropping the members closes their connections: they finish and
        // exit 0.
        drop(members);
        self.wake.notify_one();
        // Wait until every worker process the pool started was reaped: those
        // just closed, those that left before (recycled, stopped, killed,
        // lost) and are still exiting, and those still starting (killed as
        // they arrive, see `finished`). Past the deadline, kill what is left
        // and give up on starts (they are killed too).
        let mut killed = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let alive: Vec<S::Process> = {
                let st = self.lock();
                if st.alive.is_empty() && st.starting == 0 {
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
        self.done.send_replace(true);
        tracing::debug!("pool shut down");
    }

    /// The last handle of the pool was dropped: shut down in the background,
    /// or, without a runtime, close what can be closed at once.
    pub(crate) fn drop_all_handles(self: &Arc<Self>) {
        let shared = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { shared.shutdown().await });
        } else {
            let mut st = shared.lock();
            st.dispatch.close();
            st.finished = true;
            st.dispatch.members.clear();
            st.dispatch.fail_queued(|| Error::Closed);
            // Nothing here can wait for the workers (no runtime): their
            // connections are closed, they exit, and the template reaps them.
            drop(st);
            shared.done.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::pool::testing::{self, World, ctx, exit_0, settle, work};

    const SEC: Duration = Duration::from_secs(1);

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
        // Closed for new calls.
        let late = pool.call(ctx(), work(SEC)).await.unwrap_err();
        assert!(matches!(Error::find(&late), Some(Error::Closed)));
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
}
