//! Metrics (feature `metrics`): the pool's state and counters, and the
//! latency of its calls, through the `metrics` facade, each labelled
//! `pool="<label>"` (the table is in the crate's docs).
//!
//! - The handles are registered once, when the pool is built: recording
//!   looks nothing up, and allocates and locks nothing of its own.
//! - The gauges and counters show the state and [`Stats`](super::Stats):
//!   each time the state's lock is let go after a change (`Locked`), the
//!   gauges are set and the counters advanced by what `Stats` counted
//!   since. So every event is counted where `Stats` counts it, and nowhere
//!   else.
//! - A call is timed from the moment it is made until its answer (`Timed`).
//!
//! Without the feature, `Metrics` is empty, `Locked` is the mutex's own
//! guard and a call is not wrapped: nothing is paid.

#[cfg(feature = "metrics")]
pub(crate) use self::on::{Locked, Metrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use self::off::{Locked, Metrics};

#[cfg(feature = "metrics")]
mod on {
    use std::future::Future;
    use std::ops::{Deref, DerefMut};
    use std::pin::Pin;
    use std::sync::MutexGuard;
    use std::task::{Context, Poll, ready};

    use ::metrics::{Counter, Gauge, Histogram, Label, Unit};
    use tokio::time::Instant;

    use crate::pool::shared::State;
    use crate::pool::spawn::Kind;

    /// A pool's metrics: its handles, registered with its label.
    pub(crate) struct Metrics {
        workers: Gauge,
        starting: Gauge,
        busy: Gauge,
        running: Gauge,
        queued: Gauge,
        spawned: Counter,
        spawn_failures: Counter,
        crashed: Counter,
        recycled: Counter,
        timed_out: Counter,
        completed: Counter,
        failed: Counter,
        call_seconds: Histogram,
    }

    /// The state, locked; let go after a change, it shows the change in the
    /// metrics.
    pub(crate) struct Locked<'a, K: Kind> {
        guard: MutexGuard<'a, State<K>>,
        metrics: &'a Metrics,
        /// It was reached mutably.
        changed: bool,
    }

    /// A call, timed from the moment it was made until its answer.
    pub(crate) struct Timed<'a, F> {
        call: F,
        metrics: &'a Metrics,
        began: Instant,
    }

    // ===== impl Metrics =====

    impl Metrics {
        /// Metrics that record nothing (the unit tests' pools).
        #[cfg(test)]
        pub(crate) fn none() -> Self {
            Metrics {
                workers: Gauge::noop(),
                starting: Gauge::noop(),
                busy: Gauge::noop(),
                running: Gauge::noop(),
                queued: Gauge::noop(),
                spawned: Counter::noop(),
                spawn_failures: Counter::noop(),
                crashed: Counter::noop(),
                recycled: Counter::noop(),
                timed_out: Counter::noop(),
                completed: Counter::noop(),
                failed: Counter::noop(),
                call_seconds: Histogram::noop(),
            }
        }

        /// Describes the pool's metrics to the recorder installed now (the
        /// thread's or the global one) and registers them with it, labelled
        /// `pool="<label>"`.
        pub(crate) fn new(label: String) -> Self {
            let labels = [Label::new("pool", label)];
            let gauge = |name: &'static str, help: &'static str| {
                ::metrics::describe_gauge!(name, Unit::Count, help);
                ::metrics::gauge!(name, labels.iter())
            };
            let counter = |name: &'static str, help: &'static str| {
                ::metrics::describe_counter!(name, Unit::Count, help);
                ::metrics::counter!(name, labels.iter())
            };
            ::metrics::describe_histogram!(
                "fork_pool_call_duration_seconds",
                Unit::Seconds,
                "Time from a call's entry into the pool until its answer or error"
            );
            Metrics {
                workers: gauge("fork_pool_workers", "Workers in the pool (idle or busy)"),
                starting: gauge("fork_pool_workers_starting", "Workers being started"),
                busy: gauge("fork_pool_workers_busy", "Workers with at least one job"),
                running: gauge("fork_pool_jobs_running", "Jobs on workers"),
                queued: gauge("fork_pool_jobs_queued", "Jobs waiting in the queue"),
                spawned: counter("fork_pool_workers_spawned_total", "Workers started"),
                spawn_failures: counter(
                    "fork_pool_spawn_failures_total",
                    "Failed attempts to start a worker",
                ),
                crashed: counter(
                    "fork_pool_workers_crashed_total",
                    "Workers that died unexpectedly",
                ),
                recycled: counter(
                    "fork_pool_workers_recycled_total",
                    "Workers that left: max_requests, max_rss, stop or retire()",
                ),
                timed_out: counter(
                    "fork_pool_jobs_timed_out_total",
                    "Jobs past job_timeout (their workers were killed)",
                ),
                completed: counter("fork_pool_jobs_completed_total", "Calls answered"),
                failed: counter(
                    "fork_pool_jobs_failed_total",
                    "Calls that ended with an error",
                ),
                call_seconds: ::metrics::histogram!(
                    "fork_pool_call_duration_seconds",
                    labels.iter()
                ),
            }
        }

        /// The state, locked: it shows in the metrics once let go, if it
        /// changed.
        pub(crate) fn locked<'a, K: Kind>(
            &'a self,
            guard: MutexGuard<'a, State<K>>,
        ) -> Locked<'a, K> {
            Locked {
                guard,
                metrics: self,
                changed: false,
            }
        }

        /// `call`, timed from now until its answer.
        pub(crate) fn time<F>(&self, call: F) -> Timed<'_, F> {
            Timed {
                call,
                metrics: self,
                began: Instant::now(),
            }
        }

        /// Shows the state: sets the gauges, and advances each counter by
        /// what `st.stats` counted since it was last shown.
        fn publish<K: Kind>(&self, st: &mut State<K>) {
            let (mut busy, mut running) = (0, 0);
            for m in &st.dispatch.members {
                if m.load > 0 {
                    busy += 1;
                    running += m.load;
                }
            }
            self.workers.set(st.dispatch.members.len() as f64);
            self.starting.set(st.starting as f64);
            self.busy.set(busy as f64);
            self.running.set(running as f64);
            self.queued.set(st.dispatch.queued() as f64);
            let (now, shown) = (&st.stats, &mut st.published);
            advance(&self.spawned, now.spawned, &mut shown.spawned);
            advance(
                &self.spawn_failures,
                now.spawn_failures,
                &mut shown.spawn_failures,
            );
            advance(&self.crashed, now.crashed, &mut shown.crashed);
            advance(&self.recycled, now.recycled, &mut shown.recycled);
            advance(&self.timed_out, now.timed_out, &mut shown.timed_out);
            advance(&self.completed, now.completed, &mut shown.completed);
        }
    }

    /// Advances `counter` from `shown` to `now`.
    fn advance(counter: &Counter, now: u64, shown: &mut u64) {
        if now > *shown {
            counter.increment(now - *shown);
            *shown = now;
        }
    }

    // ===== impl Locked =====

    impl<K: Kind> Deref for Locked<'_, K> {
        type Target = State<K>;

        fn deref(&self) -> &State<K> {
            &self.guard
        }
    }

    impl<K: Kind> DerefMut for Locked<'_, K> {
        fn deref_mut(&mut self) -> &mut State<K> {
            self.changed = true;
            &mut self.guard
        }
    }

    impl<K: Kind> Drop for Locked<'_, K> {
        fn drop(&mut self) {
            if self.changed {
                // Still locked: what is shown is never older than what was.
                self.metrics.publish(&mut self.guard);
            }
        }
    }

    // ===== impl Timed =====

    impl<F, T, E> Future for Timed<'_, F>
    where
        F: Future<Output = Result<T, E>> + Unpin,
    {
        type Output = Result<T, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            let result = ready!(Pin::new(&mut this.call).poll(cx));
            this.metrics.call_seconds.record(this.began.elapsed());
            if result.is_err() {
                this.metrics.failed.increment(1);
            }
            Poll::Ready(result)
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::sync::MutexGuard;

    use crate::pool::shared::State;
    use crate::pool::spawn::Kind;

    /// No metrics.
    pub(crate) struct Metrics;

    /// The state, locked.
    pub(crate) type Locked<'a, K> = MutexGuard<'a, State<K>>;

    impl Metrics {
        pub(crate) fn none() -> Self {
            Metrics
        }

        pub(crate) fn locked<'a, K: Kind>(
            &'a self,
            guard: MutexGuard<'a, State<K>>,
        ) -> Locked<'a, K> {
            guard
        }

        /// `call` as it is.
        pub(crate) fn time<F>(&self, call: F) -> F {
            call
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures::FutureExt;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::config::Config;
    use crate::pool::testing::{self, World, ctx, settle, work};

    const SEC: Duration = Duration::from_secs(1);

    /// What a recorder received, by pool label and metric name. Counters
    /// add up over the snapshots (each one takes what was counted since
    /// the last), gauges are as last set, histograms keep every value.
    #[derive(Default)]
    struct Seen {
        counters: BTreeMap<(String, String), u64>,
        gauges: BTreeMap<(String, String), f64>,
        histograms: BTreeMap<(String, String), Vec<f64>>,
    }

    impl Seen {
        fn look(&mut self, snapshotter: &Snapshotter) -> &mut Self {
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                let key = key.key();
                let pool = key
                    .labels()
                    .find(|l| l.key() == "pool")
                    .map_or(String::new(), |l| l.value().to_owned());
                let at = (pool, key.name().to_owned());
                match value {
                    DebugValue::Counter(n) => *self.counters.entry(at).or_default() += n,
                    DebugValue::Gauge(v) => {
                        self.gauges.insert(at, v.into_inner());
                    }
                    DebugValue::Histogram(vs) => self
                        .histograms
                        .entry(at)
                        .or_default()
                        .extend(vs.into_iter().map(|v| v.into_inner())),
                }
            }
            self
        }

        fn counter(&self, pool: &str, name: &str) -> u64 {
            self.counters[&(pool.to_owned(), name.to_owned())]
        }

        fn gauges(&self, pool: &str) -> [f64; 5] {
            [
                "fork_pool_workers",
                "fork_pool_workers_starting",
                "fork_pool_workers_busy",
                "fork_pool_jobs_running",
                "fork_pool_jobs_queued",
            ]
            .map(|name| self.gauges[&(pool.to_owned(), name.to_owned())])
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_metrics_show_the_pools_jobs_workers_and_latency_under_its_label() {
        let config = Config {
            max: 1,
            idle: 1,
            load: 1,
            start: Duration::ZERO,
            max_requests: Some(2),
            max_requests_jitter: Some(0),
            job_timeout: Some(10 * SEC),
            ..Config::default()
        };
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let ((pool, fake), (other, _)) = ::metrics::with_local_recorder(&recorder, || {
            let calc = Metrics::new("calc".to_owned());
            let other = Metrics::new("other".to_owned());
            (
                testing::pool_with(config.clone(), World::default(), calc),
                testing::pool_with(Config::default(), World::default(), other),
            )
        });
        let mut seen = Seen::default();

        // Two jobs of a second; the worker is recycled after them.
        settle(pool.wait_until(|s| s.idle == 1)).await;
        for _ in 0..2 {
            settle(pool.call(ctx(), work(SEC))).await.unwrap();
        }
        // A job past `job_timeout`: its worker is killed.
        settle(pool.wait_until(|s| s.idle == 1)).await;
        let timed_out = settle(pool.call(ctx(), work(60 * SEC))).await;
        assert!(timed_out.is_err());
        // A worker crashes under a job, with another job queued.
        settle(pool.wait_until(|s| s.idle == 1)).await;
        let mut crashed = Box::pin(pool.call(ctx(), work(60 * SEC)));
        assert!((&mut crashed).now_or_never().is_none());
        let mut queued = Box::pin(pool.call(ctx(), work(SEC)));
        assert!((&mut queued).now_or_never().is_none());
        assert_eq!(
            seen.look(&snapshotter).gauges("calc"),
            [1.0, 0.0, 1.0, 1.0, 1.0],
            "workers, starting, busy, running, queued"
        );
        fake.world().workers[2].crash();
        let (crashed, queued) = settle(async { tokio::join!(crashed, queued) }).await;
        assert!(crashed.is_err() && queued.is_ok());
        settle(pool.wait_until(|s| s.idle == 1)).await;
        assert_eq!(
            seen.look(&snapshotter).gauges("calc"),
            [1.0, 0.0, 0.0, 0.0, 0.0],
            "an idle worker: workers, starting, busy, running, queued"
        );
        settle(pool.shutdown()).await;

        seen.look(&snapshotter);
        let counted = |name| seen.counter("calc", name);
        assert_eq!(counted("fork_pool_workers_spawned_total"), 4);
        assert_eq!(counted("fork_pool_spawn_failures_total"), 0);
        assert_eq!(counted("fork_pool_workers_recycled_total"), 1);
        assert_eq!(counted("fork_pool_jobs_timed_out_total"), 1);
        assert_eq!(counted("fork_pool_workers_crashed_total"), 1);
        assert_eq!(counted("fork_pool_jobs_completed_total"), 3);
        assert_eq!(counted("fork_pool_jobs_failed_total"), 2);
        // The counters are those of `Stats`.
        let stats = pool.stats();
        assert_eq!((stats.spawned, stats.recycled, stats.timed_out), (4, 1, 1));
        assert_eq!((stats.crashed, stats.completed), (1, 3));
        assert_eq!(seen.gauges("calc"), [0.0; 5], "after shutdown");
        // Each call's time, from when it was made until its answer: the
        // jobs of a second, the time limit, the crash at once.
        let mut latencies = seen.histograms[&(
            "calc".to_owned(),
            "fork_pool_call_duration_seconds".to_owned(),
        )]
            .clone();
        latencies.sort_by(f64::total_cmp);
        assert_eq!(latencies, [0.0, 1.0, 1.0, 1.0, 10.0]);

        // The other pool's metrics are its own.
        assert_eq!(seen.counter("other", "fork_pool_jobs_completed_total"), 0);
        assert_eq!(seen.counter("other", "fork_pool_workers_spawned_total"), 0);
        settle(other.shutdown()).await;
    }
}
