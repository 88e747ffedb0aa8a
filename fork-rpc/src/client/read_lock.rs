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

#[cfg(loom)]
use loom::sync::{Mutex, TryLockError, atomic::AtomicBool};
use std::sync::atomic::Ordering;
#[cfg(not(loom))]
use std::sync::{Mutex, TryLockError, atomic::AtomicBool};

/// A value that one caller at a time works on, and whose work is never lost
/// (see the [module docs](self)).
#[derive(Debug)]
pub(super) struct ReadLock<T> {
    value: Mutex<T>,
    /// Someone found `value` locked and left the work to its holder: the
    /// holder works again after unlocking.
    turned_away: AtomicBool,
}

// ===== impl ReadLock =====

impl<T> ReadLock<T> {
    pub(super) fn new(value: T) -> Self {
        ReadLock {
            value: Mutex::new(value),
            turned_away: AtomicBool::new(false),
        }
    }

    /// Runs `work` on the value, now or, if another caller holds it, by
    /// that caller after it is done: either way `work` runs, whole, after
    /// this call began. Never blocks on the lock.
    pub(super) fn run(&self, mut work: impl FnMut(&mut T)) {
        loop {
            let mut value = match self.value.try_lock() {
                Ok(value) => value,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // Its holder may have finished its last run already:
                    // ask it to run again, unless it has gone meanwhile.
                    self.turned_away.store(true, Ordering::SeqCst);
                    match self.value.try_lock() {
                        Ok(value) => value,
                        Err(TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(TryLockError::WouldBlock) => return,
                    }
                }
            };
            self.turned_away.store(false, Ordering::SeqCst);
            work(&mut value);
            drop(value);
            if !self.turned_away.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    use super::*;

    /// Each caller makes work (a reply arrives) then asks for a read; a
    /// read takes every reply made so far. Whoever reads, and however the
    /// callers interleave, every reply is taken in the end: no caller
    /// returns with its work left undone.
    #[test]
    fn loom_no_read_is_lost() {
        loom::model(|| {
            let arrived = Arc::new(AtomicUsize::new(0));
            let lock = Arc::new(ReadLock::new(0usize));
            let caller = |lock: Arc<ReadLock<usize>>, arrived: Arc<AtomicUsize>| {
                move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    lock.run(|taken| *taken = arrived.load(Ordering::SeqCst));
                }
            };
            let threads: Vec<_> = (0..2)
                .map(|_| loom::thread::spawn(caller(lock.clone(), arrived.clone())))
                .collect();
            caller(lock.clone(), arrived.clone())();
            for t in threads {
                t.join().unwrap();
            }
            lock.run(|taken| assert_eq!(*taken, 3, "a read was lost"));
        });
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
