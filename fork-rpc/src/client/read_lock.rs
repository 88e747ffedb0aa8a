//! The lock on the reading side of the connection, which never blocks:
//! a caller that finds it taken leaves its read to the holder.
//!
//! Calls on several threads may all want to read at once (each polled as
//! the reader, or one forgetting the reader while the background task
//! reads). Only one reads; the others must not wait for it (they run in a
//! future's `poll`), yet what they wanted read must be read after they
//! asked. [`ReadLock::run`] guarantees it with one flag: a caller turned
//! away sets it, and the holder runs again after unlocking if it is set.
//! The loom test below checks every interleaving of that protocol.

use std::sync::atomic::Ordering;

#[cfg(fork_loom)]
use loom::sync::{Mutex, MutexGuard, atomic::AtomicBool};
#[cfg(not(fork_loom))]
use std::sync::{Mutex, MutexGuard, atomic::AtomicBool};

/// A value that one caller at a time works on, and whose work is never lost
/// (see the [module docs](self)).
#[derive(Debug)]
pub(super) struct ReadLock<T> {
    /// Taken by the caller working on `value`. The try-lock is this flag
    /// rather than `Mutex::try_lock`, which loom cannot make fail (it parks
    /// a thread about to try a locked mutex until it is free), so that the
    /// loom model explores callers turned away.
    held: AtomicBool,
    /// Locked only by the caller holding `held`: never contended.
    value: Mutex<T>,
    /// Someone found `value` held and left the work to its holder: the
    /// holder works again after unlocking.
    turned_away: AtomicBool,
}

// ===== impl ReadLock =====

impl<T> ReadLock<T> {
    pub(super) fn new(value: T) -> Self {
        ReadLock {
            held: AtomicBool::new(false),
            value: Mutex::new(value),
            turned_away: AtomicBool::new(false),
        }
    }

    /// The value, unless another caller holds it.
    fn try_hold(&self) -> Option<MutexGuard<'_, T>> {
        self.held
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        Some(self.value.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn release(&self, value: MutexGuard<'_, T>) {
        drop(value);
        self.held.store(false, Ordering::SeqCst);
    }

    /// Runs `work` on the value, now or, if another caller holds it, by
    /// that caller after it is done: either way `work` runs, whole, after
    /// this call began. Never blocks on the lock.
    pub(super) fn run(&self, mut work: impl FnMut(&mut T)) {
        loop {
            let mut value = match self.try_hold() {
                Some(value) => value,
                None => {
                    // Its holder may have finished its last run already:
                    // ask it to run again, unless it has gone meanwhile.
                    // This and the holder's looks at the flag are
                    // read-modify-writes, so that whichever comes second
                    // sees the other's side (the lock freed, or the flag
                    // set) by acquire-release alone, not by `SeqCst`'s
                    // total order, which loom does not model.
                    self.turned_away.swap(true, Ordering::SeqCst);
                    match self.try_hold() {
                        Some(value) => value,
                        None => return,
                    }
                }
            };
            self.turned_away.swap(false, Ordering::SeqCst);
            work(&mut value);
            self.release(value);
            if !self.turned_away.swap(false, Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(all(test, fork_loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    use super::*;

    /// Each caller makes work (a reply arrives) then asks for a read; a
    /// read takes every reply made so far. Whoever reads, and however the
    /// callers interleave, every reply is taken in the end: no caller
    /// returns with its work left undone.
    fn callers(n: usize) {
        let arrived = Arc::new(AtomicUsize::new(0));
        let lock = Arc::new(ReadLock::new(0usize));
        let caller = |lock: Arc<ReadLock<usize>>, arrived: Arc<AtomicUsize>| {
            move || {
                arrived.fetch_add(1, Ordering::SeqCst);
                lock.run(|taken| *taken = arrived.load(Ordering::SeqCst));
            }
        };
        let threads: Vec<_> = (1..n)
            .map(|_| loom::thread::spawn(caller(lock.clone(), arrived.clone())))
            .collect();
        caller(lock.clone(), arrived.clone())();
        for t in threads {
            t.join().unwrap();
        }
        lock.run(|taken| assert_eq!(*taken, n, "a read was lost"));
    }

    /// Each model is bounded to three preemptions a run: unbounded, two
    /// holders turned away by each other can hand the lock back and forth
    /// for as long as the scheduler alternates them exactly (each pass is a
    /// whole read, so the connection makes progress meanwhile; no real
    /// scheduler keeps it up), which loom reports as a model too large.
    fn bounded(f: impl Fn() + Sync + Send + 'static) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(f);
    }

    #[test]
    fn loom_two_callers_lose_no_read() {
        bounded(|| callers(2));
    }

    #[test]
    fn loom_three_callers_lose_no_read() {
        bounded(|| callers(3));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn a_caller_turned_away_has_its_work_run_by_the_holder() {
        let lock = ReadLock::new(0);
        let runs = AtomicUsize::new(0);
        lock.run(|n| {
            runs.fetch_add(1, Ordering::SeqCst);
            *n += 1;
            if *n == 1 {
                // Re-entered while held (as another thread would find it):
                // turned away, its work runs after this one.
                lock.run(|_| unreachable!("the lock is held"));
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// The shell's race on real threads: every caller's work is done after
    /// it asked, however they interleave.
    #[test]
    fn threads_racing_lose_no_read() {
        for _ in 0..200 {
            let arrived = Arc::new(AtomicUsize::new(0));
            let lock = Arc::new(ReadLock::new(0usize));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (lock, arrived) = (lock.clone(), arrived.clone());
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            arrived.fetch_add(1, Ordering::SeqCst);
                            lock.run(|taken| *taken = arrived.load(Ordering::SeqCst));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            lock.run(|taken| assert_eq!(*taken, 200));
        }
    }
}
