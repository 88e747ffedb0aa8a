//! A worker as the pool sees it: its connection and process, its load, the
//! jobs it served, and whether (and why) it is leaving. The rule of what a
//! finished job means for its worker ([`Member::after_job`]) is pure and
//! tested here.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngExt};
use tokio::time::Instant;

use super::spawn::Kind;

/// How often a busy worker's memory is checked at most (an idle one is
/// checked after every job).
pub(crate) const RSS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a worker takes no more jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// It served `max_requests` jobs.
    Recycled,
    /// It asked to be retired.
    Retired,
    /// It is over `max_rss`.
    Memory,
    /// It was idle for `stop`.
    Idle,
}

/// What a finished job means for its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterJob {
    /// Nothing changes.
    Stay,
    /// Its memory is to be read (it takes no job until then).
    ReadRss,
}

/// A worker in the pool.
pub(crate) struct Member<K: Kind> {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    /// The host it runs on (its index).
    pub(crate) host: usize,
    /// Shared with the jobs running on it (one reference to count per job,
    /// where a client clone has three).
    pub(crate) client: Arc<K::Conn>,
    pub(crate) process: K::Process,
    /// Jobs on it now.
    pub(crate) load: usize,
    /// Jobs it finished.
    pub(crate) served: u64,
    /// Recycle after this many jobs.
    pub(crate) limit: Option<u64>,
    /// Why it takes no more jobs, once it does not.
    pub(crate) leaving: Option<Leave>,
    pub(crate) idle_since: Instant,
    pub(crate) rss_checked: Instant,
    /// The memory check found it over the limit right after it started:
    /// the limit is too low for this worker; do not recycle it for memory.
    pub(crate) rss_exempt: bool,
    /// Its memory is being read: it takes no new job until then.
    pub(crate) reading_rss: bool,
}

// ===== impl Member =====

impl<K: Kind> Member<K> {
    pub(crate) fn new(
        id: u64,
        pid: u32,
        host: usize,
        client: K::Conn,
        process: K::Process,
        limit: Option<u64>,
        now: Instant,
    ) -> Self {
        Member {
            id,
            pid,
            host,
            client: Arc::new(client),
            process,
            load: 0,
            served: 0,
            limit,
            leaving: None,
            idle_since: now,
            rss_checked: now,
            rss_exempt: false,
            reading_rss: false,
        }
    }

    /// Whether new jobs may go to it (load aside).
    pub(crate) fn takes_jobs(&self) -> bool {
        self.leaving.is_none() && !self.reading_rss
    }

    /// A job on it ended (its place was given back, counted in `load` and
    /// `served` already): whether it leaves (`leaving` is set), or its
    /// memory is due to be read (`reading_rss` is set). `retire_requested`
    /// is the worker's own wish; `max_rss` whether a limit is set; `now`
    /// is read only when needed.
    pub(crate) fn after_job(
        &mut self,
        retire_requested: bool,
        max_rss: bool,
        mut now: impl FnMut() -> Instant,
    ) -> AfterJob {
        if self.leaving.is_some() {
            return AfterJob::Stay;
        }
        if self.limit.is_some_and(|limit| self.served >= limit) {
            self.leaving = Some(Leave::Recycled);
        } else if retire_requested {
            self.leaving = Some(Leave::Retired);
        } else if max_rss
            && !self.rss_exempt
            && !self.reading_rss
            && (self.load == 0 || now().duration_since(self.rss_checked) >= RSS_INTERVAL)
        {
            self.rss_checked = now();
            self.reading_rss = true;
            return AfterJob::ReadRss;
        }
        AfterJob::Stay
    }

    /// Whether it has left the pool's work and can go now.
    pub(crate) fn gone_idle_leaving(&self) -> bool {
        self.leaving.is_some() && self.load == 0
    }
}

/// A random extra in `0..=jitter` that `taken` does not reject, if one
/// exists: workers recycled after `max_requests` then never all leave at
/// once (with at least as many values as workers).
pub(crate) fn pick_jitter(rng: &mut impl Rng, jitter: u64, taken: impl Fn(u64) -> bool) -> u64 {
    if jitter == 0 {
        return 0;
    }
    let start = rng.random_range(0..=jitter);
    // `0..=u64::MAX` is every value.
    let within = |x: u64| jitter.checked_add(1).map_or(x, |n| x % n);
    (0..=jitter.min(4096))
        .map(|i| within(start.wrapping_add(i)))
        .find(|&e| !taken(e))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::pool::testing;

    #[test]
    fn jitter_gives_live_workers_distinct_limits() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut taken = Vec::new();
        for _ in 0..5 {
            let e = pick_jitter(&mut rng, 4, |e| taken.contains(&e));
            assert!(e <= 4);
            assert!(!taken.contains(&e), "{e} given twice");
            taken.push(e);
        }
        // More workers than values: repeats are unavoidable but stay in range.
        assert!(pick_jitter(&mut rng, 4, |e| taken.contains(&e)) <= 4);
        assert_eq!(pick_jitter(&mut rng, 0, |_| false), 0);
        // Any value is within the widest jitter.
        let e = pick_jitter(&mut rng, u64::MAX, |e| e == 0);
        assert_ne!(e, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_recycles_retires_or_reads_memory_in_that_order() {
        let now = Instant::now;
        // The limit of jobs first, even if it asked to retire.
        let mut m = testing::member(1);
        m.limit = Some(2);
        m.served = 2;
        assert_eq!(m.after_job(true, true, now), AfterJob::Stay);
        assert_eq!(m.leaving, Some(Leave::Recycled));
        assert!(m.gone_idle_leaving());
        // Then its own wish.
        let mut m = testing::member(1);
        m.served = 1;
        assert_eq!(m.after_job(true, true, now), AfterJob::Stay);
        assert_eq!(m.leaving, Some(Leave::Retired));
        // Then memory, read once at a time, and no job meanwhile.
        let mut m = testing::member(1);
        assert_eq!(m.after_job(false, true, now), AfterJob::ReadRss);
        assert!(!m.takes_jobs());
        assert_eq!(m.after_job(false, true, now), AfterJob::Stay);
        m.reading_rss = false;
        // A busy worker is read at most every RSS_INTERVAL.
        m.load = 1;
        assert_eq!(m.after_job(false, true, now), AfterJob::Stay);
        tokio::time::advance(RSS_INTERVAL).await;
        assert_eq!(m.after_job(false, true, now), AfterJob::ReadRss);
        // Without a limit, never.
        let mut m = testing::member(1);
        assert_eq!(m.after_job(false, false, now), AfterJob::Stay);
        assert!(m.takes_jobs());
    }
}
