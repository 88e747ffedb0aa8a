//! The supervisor: applies the scaling policy ([`crate::scale`]), starts
//! workers (backing off after failures), takes out and ends those that
//! leave, die, time out or grow over `max_rss`, and watches each one
//! ([`monitor`]): its events, its retire request, its death.

use std::sync::Arc;
use std::time::Duration;

use fork_core::Signal;
use futures::FutureExt;
use futures::StreamExt;
use tokio::time::Instant;

use super::host::Link;
use super::member::{Leave, Member, pick_jitter};
use super::metrics::Locked;
use super::shared::{Placed, Shared, State};
use super::spawn::{Process, Spawn, Started, Watch};
use crate::error::Error;
use crate::{hosts, scale};

/// The supervisor's task, counted in `State::supervising` until it ends.
struct Supervising<S: Spawn>(Arc<Shared<S>>);

impl<S: Spawn> Drop for Supervising<S> {
    fn drop(&mut self) {
        self.0.lock().supervising = false;
        self.0.changed.notify_waiters();
    }
}

// ===== impl Shared: the supervisor =====

impl<S: Spawn> Shared<S> {
    /// The supervisor's loop: applies the scaling policy whenever something
    /// changed or a timer is due, until the pool is past draining (counted
    /// as running by [`count_launch`](Self::count_launch)).
    pub(crate) async fn supervise(self: Arc<Self>) {
        let _running = Supervising(self.clone());
        loop {
            let now = Instant::now();
            let (decision, stopped, placed) = {
                let mut st = self.lock();
                if !st.life.supervised() {
                    return;
                }
                let snapshot = self.snapshot(&st, now);
                let mut decision = scale::decide(&self.knobs, &snapshot, now);
                if st.dispatch.is_closed() {
                    // Draining: only start workers for jobs still queued.
                    decision.stop.clear();
                    if st.dispatch.queued() == 0 {
                        decision.spawn = 0;
                    }
                }
                let mut stopped = Vec::new();
                for &id in &decision.stop {
                    if let Some(i) = st
                        .dispatch
                        .position(id)
                        .filter(|&i| st.dispatch.members[i].load == 0)
                    {
                        st.dispatch.members[i].leaving = Some(Leave::Idle);
                        stopped.push(self.take_leaving(&mut st, i));
                    }
                }
                let placed: Vec<Placed> = (0..decision.spawn)
                    .map_while(|_| self.place(&mut st, now))
                    .collect();
                if !placed.is_empty() {
                    st.last_spawn = Some(now);
                }
                st.next_wake = decision.wake_at;
                (decision, stopped, placed)
            };
            for m in stopped {
                tracing::debug!(pid = m.pid, "stopping an idle worker");
                self.leave(m);
            }
            for placed in placed {
                tokio::spawn(self.clone().spawn_worker(placed));
            }
            match decision.wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Starts one worker on the host it was placed on (counted in
    /// `starting` by [`place`](Self::place)), connecting the host first if
    /// it is to be; on success it joins the pool and takes queued jobs.
    pub(crate) async fn spawn_worker(self: Arc<Self>, placed: Placed) {
        let Placed { host, connect } = placed;
        let up = if connect {
            self.connect_host(host).await
        } else {
            self.host_connected(host).await
        };
        if !up {
            return;
        }
        let mut abandon = self.abandon.subscribe();
        let give_up = async move {
            let _ = abandon.wait_for(|given_up| *given_up).await;
        };
        let result = self.spawner.spawn(host, give_up.boxed()).await;
        if let Err(fork_rpc::Error::StartAbandoned { pid }) = result {
            // Killed, and gone.
            self.lock().started(host);
            self.changed.notify_waiters();
            tracing::warn!(?pid, "gave up on a worker still starting at shutdown");
            return;
        }
        let mut st = self.lock();
        if st.life.reaping()
            && let Ok(started) = result
        {
            // Shut down meanwhile: end this worker, and count it as
            // starting until it is gone, so that `shutdown` waits for it.
            drop(st);
            let Started {
                conn, mut process, ..
            } = started;
            drop(conn);
            let shared = self.clone();
            tokio::spawn(async move {
                process.signal(Signal::SIGKILL);
                let _ = process.wait().await;
                shared.lock().started(host);
                shared.changed.notify_waiters();
            });
            return;
        }
        st.started(host);
        match result {
            Ok(started) => self.join(&mut st, host, started),
            Err(e) => {
                st.stats.spawn_failures += 1;
                let slot = &mut st.hosts[host];
                slot.spawn_failures += 1;
                let backoff = hosts::spawn_backoff(slot.spawn_failures);
                if slot.link() == Link::Up {
                    // (A host lost meanwhile keeps its longer back-off.)
                    slot.not_before = Some(Instant::now() + backoff);
                }
                tracing::warn!(host = slot.name(), error = %e, ?backoff, "could not start a worker");
                self.fail_queued_if_stuck(&mut st, Arc::new(e));
            }
        }
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// Fails the queued jobs with `e` if nothing will serve them soon: no
    /// worker in the pool, none starting, and no host that can take one
    /// now (all backing off, or at their limits).
    pub(crate) fn fail_queued_if_stuck(&self, st: &mut State<S>, e: Arc<fork_rpc::Error>) {
        if st.dispatch.members.is_empty()
            && st.starting == 0
            && self.hosts_backoff(st, Instant::now()).is_some()
        {
            st.dispatch.fail_queued(|| Error::Spawn(e.clone()));
        }
    }

    /// A started worker joins the pool, takes queued jobs, and is watched.
    fn join(self: &Arc<Self>, st: &mut State<S>, host: usize, started: Started<S>) {
        let Started {
            pid,
            conn,
            process,
            watch,
        } = started;
        let slot = &mut st.hosts[host];
        slot.spawn_failures = 0;
        slot.not_before = None;
        slot.stats.spawned += 1;
        st.stats.spawned += 1;
        let id = st.next_id;
        st.next_id += 1;
        let limit = self.config.max_requests.map(|n| {
            let n = n as u64;
            let taken: Vec<u64> = st.dispatch.members.iter().filter_map(|m| m.limit).collect();
            let extra = pick_jitter(&mut rand::rng(), self.config.jitter(), |e| {
                taken.contains(&n.saturating_add(e))
            });
            n.saturating_add(extra).max(1)
        });
        st.alive.insert(id, process.clone());
        st.dispatch.members.push(Member::new(
            id,
            pid,
            host,
            conn,
            process.clone(),
            limit,
            Instant::now(),
        ));
        tracing::debug!(pid, host = st.hosts[host].name(), "worker started");
        self.hand_out(st);
        tokio::spawn(self.clone().monitor(id, pid, process, watch));
    }

    /// Watches one worker: forwards its events, honours its retire request,
    /// and notices its death.
    async fn monitor(
        self: Arc<Self>,
        id: u64,
        pid: u32,
        mut exit: S::Process,
        mut watch: Box<dyn Watch<S::Ev>>,
    ) {
        let mut events = watch.events();
        let mut retire_seen = false;
        let status = {
            let mut retire = watch.retire_request();
            loop {
                tokio::select! {
                    status = exit.wait() => break status,
                    event = async { events.as_mut()?.next().await }, if events.is_some() => match event {
                        Some(event) => self.event(pid, event),
                        None => events = None,
                    },
                    () = &mut retire, if !retire_seen => {
                        retire_seen = true;
                        self.retire(id, Leave::Retired);
                    }
                }
            }
        };
        // Events sent before the exit may still be queued.
        if let Some(events) = events.as_mut() {
            while let Some(Some(event)) = events.next().now_or_never() {
                self.event(pid, event);
            }
        }
        let mut st = self.lock();
        if let Some(m) = st.dispatch.remove(id) {
            st.crashed_on(m.host);
            tracing::warn!(pid, host = st.hosts[m.host].name(), ?status, "worker died");
            self.wake.notify_one();
        }
        // Reaped (or its template is gone): nothing of it is left.
        st.alive.remove(&id);
        drop(st);
        drop(watch);
        self.changed.notify_waiters();
    }

    /// Worker `id` takes no more jobs, for `why`, and leaves once idle.
    fn retire(&self, id: u64, why: Leave) {
        let mut st = self.lock();
        let Some(i) = st.dispatch.position(id) else {
            return;
        };
        st.dispatch.members[i].leaving.get_or_insert(why);
        if st.dispatch.members[i].load == 0 {
            let m = self.take_leaving(&mut st, i);
            self.wake.notify_one();
            drop(st);
            self.leave(m);
        }
    }

    /// Worker `id`'s memory was read (`None`: it could not be): over
    /// `max_rss`, it is recycled, unless it was so from the start.
    pub(crate) fn rss_read(&self, id: u64, served: u64, rss: Option<u64>) {
        let Some(limit) = self.config.max_rss else {
            return;
        };
        let mut st = self.lock();
        let Some(i) = st.dispatch.position(id) else {
            return;
        };
        let m = &mut st.dispatch.members[i];
        m.reading_rss = false;
        let pid = m.pid;
        match rss {
            Some(rss) if rss > limit && served <= 1 => {
                // Over the limit from the start: recycling would only fork
                // another one just as big, again and again.
                m.rss_exempt = true;
                tracing::warn!(
                    pid,
                    rss,
                    limit,
                    "a fresh worker is already over max_rss; not recycling it for memory"
                );
            }
            Some(rss) if rss > limit => {
                if m.leaving.is_none() {
                    tracing::info!(pid, rss, limit, "recycling a worker over max_rss");
                }
                drop(st);
                self.retire(id, Leave::Memory);
                return;
            }
            _ => {}
        }
        // It takes jobs again.
        self.hand_out(&mut st);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Takes a leaving worker out of the pool (counted as recycled, in the
    /// same critical section, so stats stay consistent).
    pub(crate) fn take_leaving(&self, st: &mut State<S>, i: usize) -> Member<S> {
        st.stats.recycled += 1;
        st.dispatch.members.remove(i)
    }

    /// A worker leaves gracefully: dropping its client closes the connection
    /// once its jobs are answered, and it exits 0.
    pub(crate) fn leave(&self, m: Member<S>) {
        tracing::debug!(pid = m.pid, reason = ?m.leaving, served = m.served, "worker leaves");
        drop(m);
        self.changed.notify_waiters();
    }

    /// A job saw its worker die: take the worker out (the supervisor starts
    /// a replacement if one is needed).
    pub(crate) fn lost(&self, id: u64, lost: &fork_rpc::WorkerLost) {
        let mut st = self.lock();
        if let Some(m) = st.dispatch.remove(id) {
            st.crashed_on(m.host);
            tracing::warn!(pid = lost.pid(), host = st.hosts[m.host].name(), status = ?lost.status(), "worker lost");
            self.wake.notify_one();
            self.changed.notify_waiters();
        }
    }

    /// A job exceeded the time limit: take its worker out, `SIGTERM` it, and
    /// `SIGKILL` it after the grace period.
    pub(crate) fn timed_out(&self, id: u64) {
        let mut st = self.lock();
        st.stats.timed_out += 1;
        if let Some(pid) = self.kill(st, id) {
            tracing::warn!(pid, limit = ?self.config.job_timeout, "job timed out; killing its worker");
        }
    }

    /// Takes worker `id` out, if it is still in, and ends it: `SIGTERM`,
    /// then `SIGKILL` after the grace period. Its pid, if it was in.
    pub(crate) fn kill(&self, mut st: Locked<'_, S>, id: u64) -> Option<u32> {
        let m = st.dispatch.remove(id)?;
        self.wake.notify_one();
        self.changed.notify_waiters();
        drop(st);
        terminate(m.process.clone(), self.config.kill_grace);
        Some(m.pid)
    }
}

/// `SIGTERM` now, `SIGKILL` after `grace` if the worker is still there.
pub(crate) fn terminate<P: Process>(process: P, grace: Duration) {
    process.signal(Signal::SIGTERM);
    tokio::spawn(async move {
        let mut waiting = process.clone();
        if tokio::time::timeout(grace, waiting.wait()).await.is_err() {
            process.signal(Signal::SIGKILL);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::config::Config;
    use crate::pool::testing::{self, World, ctx, exit_0, grow, settle, work};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn idle_workers_stop_after_stop() {
        let config = Config {
            max: 2,
            load: 1,
            start: Duration::ZERO,
            stop: 10 * SEC,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let (a, b) = settle(async {
            tokio::join!(pool.call(ctx(), work(SEC)), pool.call(ctx(), work(SEC)))
        })
        .await;
        assert_ne!(a.unwrap(), b.unwrap(), "two jobs at load 1 shared a worker");
        let idle_since = Instant::now();
        assert_eq!(pool.stats().idle, 2);
        let stats = settle(pool.wait_until(|s| s.idle + s.busy == 0)).await;
        assert_eq!(stats.recycled, 2);
        let waited = Instant::now() - idle_since;
        assert!(
            (10 * SEC..10 * SEC + 100 * MS).contains(&waited),
            "stopped after {waited:?}, not `stop`"
        );
        assert!(fake.world().workers.iter().all(|w| w.exited() == exit_0()));
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failing_spawns_back_off_then_recover() {
        let config = Config {
            max: 1,
            idle: 1,
            ..Config::default()
        };
        let world = World {
            failures: 3,
            ..World::default()
        };
        let (pool, fake) = testing::pool(config, world);
        let stats = settle(pool.wait_until(|s| s.idle == 1)).await;
        assert_eq!(stats.spawn_failures, 3);
        let attempts = fake.world().attempts.clone();
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [50 * MS, 100 * MS, 200 * MS]);
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_worker_is_replaced_and_queued_jobs_are_kept() {
        let config = Config {
            max: 1,
            load: 1,
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let running = pool.call(ctx(), work(10 * SEC));
        let queued = pool.call(ctx(), work(SEC));
        let crash = async {
            settle(pool.wait_until(|s| s.busy == 1 && s.queued == 1)).await;
            fake.world().workers[0].crash();
        };
        let (running, queued, ()) = settle(async { tokio::join!(running, queued, crash) }).await;
        assert!(running.is_err(), "a job on a dead worker succeeded");
        let pid = queued.expect("a queued job was lost with a crashed worker");
        assert_eq!(pid, fake.world().workers[1].pid);
        let stats = pool.stats();
        assert_eq!((stats.crashed, stats.spawned, stats.completed), (1, 2, 1));
        // An idle worker that dies is noticed too, and replaced when needed.
        fake.world().workers[1].crash();
        let stats = settle(pool.wait_until(|s| s.crashed == 2)).await;
        assert_eq!(stats.idle + stats.busy, 0);
        let pid = settle(pool.call(ctx(), work(SEC))).await.unwrap();
        assert_eq!(pid, fake.world().workers[2].pid);
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn max_requests_recycles_after_that_many_jobs() {
        let config = Config {
            max: 1,
            max_requests: Some(2),
            max_requests_jitter: Some(0),
            ..Config::default()
        };
        let (pool, fake) = testing::pool(config, World::default());
        let mut pids = Vec::new();
        for _ in 0..3 {
            pids.push(settle(pool.call(ctx(), work(MS))).await.unwrap());
        }
        assert_eq!(pids[0], pids[1]);
        assert_ne!(pids[1], pids[2], "a worker served more than max_requests");
        assert_eq!(pool.stats().recycled, 1);
        assert_eq!(fake.world().workers[0].exited(), exit_0());
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_memory_is_read_is_waited_for_not_replaced() {
        let config = Config {
            max: 2,
            start: Duration::ZERO,
            max_rss: Some(100),
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config, World::default());
        let first = settle(pool.call(ctx(), work(MS))).await.unwrap();
        // Its memory is being read: the next job waits for it.
        let second = settle(pool.call(ctx(), work(MS))).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(
            pool.stats().spawned,
            1,
            "a worker was started for a job that waited for a memory check"
        );
        settle(pool.shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn max_rss_recycles_between_jobs_but_not_fresh_workers() {
        let config = Config {
            max: 1,
            max_rss: Some(100),
            ..Config::default()
        };
        let (pool, _fake) = testing::pool(config.clone(), World::default());
        let first = settle(pool.call(ctx(), work(MS))).await.unwrap();
        // It grows over the limit in its second job.
        assert_eq!(settle(pool.call(ctx(), grow(500))).await.unwrap(), first);
        // Read after that job: the next one finds a new worker.
        let next = settle(pool.call(ctx(), work(MS))).await.unwrap();
        assert_ne!(next, first, "a worker over max_rss was kept");
        assert_eq!(pool.stats().recycled, 1);
        settle(pool.shutdown()).await;

        // Every fresh worker over the limit: it stays.
        let world = World {
            rss: 500,
            ..World::default()
        };
        let (pool, _fake) = testing::pool(config, world);
        let mut pids = BTreeSet::new();
        for _ in 0..5 {
            pids.insert(settle(pool.call(ctx(), work(MS))).await.unwrap());
        }
        assert_eq!(pids.len(), 1, "fresh over-limit workers were recycled");
        assert_eq!(pool.stats().recycled, 0);
        settle(pool.shutdown()).await;
    }
}
