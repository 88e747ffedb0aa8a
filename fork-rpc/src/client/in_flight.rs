//! The in-flight table: every call sent and not yet ended, by request id,
//! with its waker, its deadline and, once it came, its reply.
//!
//! Plain data: no lock, no I/O, no clock of its own. The connection
//! ([`super::connection`]) keeps it under its lock and wakes the wakers
//! that its methods hand back, after unlocking. A call's life in it:
//!
//! ```text
//! register ──> Waiting ──complete──> Done ──outcome──> (removed)
//!                 │ └─────expire───> Expired ──forget──> (removed)
//!                 └───end (the connection ended)───────> (removed: Ended)
//! ```
//!
//! and [`forget`](InFlight::forget) removes a call in any state (its future
//! was dropped, or took its outcome).

use std::collections::HashMap;
use std::io;
use std::task::Waker;
use std::time::Instant;

use serde::Serialize;
use tarpc::ServerError;
use tarpc::trace::Context as Trace;

use crate::variant;

/// A call's reply as the worker sent it.
pub(super) type Reply<Resp> = Result<Resp, ServerError>;

/// The calls in flight on one connection.
pub(super) struct InFlight<Resp> {
    calls: HashMap<u64, Slot<Resp>>,
    /// The earliest deadline of a waiting call, or one before it: when the
    /// background task's timer fires. `None` with no call waiting since the
    /// timer last fired.
    timer: Option<Instant>,
    /// The connection ended: no reply will come.
    ended: bool,
}

/// A call waiting for its reply, its reply, or its expiry.
enum Slot<Resp> {
    Waiting {
        /// The task to wake when the call ends, once it was polled.
        waker: Option<Waker>,
        deadline: Instant,
        /// The variant of the request (tarpc names it after the method),
        /// which the reply must match.
        method: Option<&'static str>,
        /// The request's trace context, for its cancellation (kept here
        /// rather than in the call's future, which is moved often).
        trace: Trace,
    },
    Done(Reply<Resp>),
    /// Past its deadline, not yet told.
    Expired(Trace),
}

/// How a call ended.
#[derive(Debug)]
pub(super) enum Outcome<Resp> {
    Reply(Reply<Resp>),
    /// The connection ended first.
    Ended,
    Expired,
}

/// What [`InFlight::register`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Registered {
    /// Other calls wait: the request can wait to be written with theirs.
    pub(super) others: bool,
    /// The call's deadline is the earliest: the timer must be set again.
    pub(super) earliest: bool,
}

/// The connection ended: no call can be registered.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ended;

// ===== impl InFlight =====

impl<Resp> InFlight<Resp> {
    pub(super) fn new() -> Self {
        InFlight {
            calls: HashMap::new(),
            timer: None,
            ended: false,
        }
    }

    /// Registers call `id`, waiting, not yet polled.
    pub(super) fn register(
        &mut self,
        id: u64,
        deadline: Instant,
        method: Option<&'static str>,
        trace: Trace,
    ) -> Result<Registered, Ended> {
        if self.ended {
            return Err(Ended);
        }
        self.calls.insert(
            id,
            Slot::Waiting {
                waker: None,
                deadline,
                method,
                trace,
            },
        );
        // Only a deadline earlier than the timer's moves it.
        let earliest = self.timer.is_none_or(|at| deadline < at);
        if earliest {
            self.timer = Some(deadline);
        }
        Ok(Registered {
            others: self.calls.len() > 1,
            earliest,
        })
    }

    /// How call `id` ended, removing a reply from its slot; else stores
    /// `waker` to be woken when it ends.
    pub(super) fn outcome(&mut self, id: u64, waker: &Waker) -> Option<Outcome<Resp>> {
        match self.calls.get_mut(&id) {
            Some(Slot::Waiting { waker: stored, .. }) => {
                match stored {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *stored = Some(waker.clone()),
                }
                None
            }
            Some(Slot::Done(_)) => match self.calls.remove(&id) {
                Some(Slot::Done(reply)) => Some(Outcome::Reply(reply)),
                _ => unreachable!("checked above"),
            },
            // It keeps its slot until it is forgotten (and cancelled).
            Some(Slot::Expired(_)) => Some(Outcome::Expired),
            None => Some(Outcome::Ended),
        }
    }

    /// Hands a reply to its call; returns the call's waker to wake. A
    /// reply to no waiting call (cancelled, expired, never sent) is
    /// dropped.
    pub(super) fn complete(&mut self, id: u64, reply: Reply<Resp>) -> Option<Waker>
    where
        Resp: Serialize,
    {
        let slot = self.calls.get_mut(&id)?;
        let Slot::Waiting { waker, method, .. } = slot else {
            return None;
        };
        let waker = waker.take();
        *slot = Slot::Done(check_method(*method, reply));
        waker
    }

    /// Removes call `id` (its future no longer waits). If it was
    /// unanswered (waiting or expired), so that the worker should drop it,
    /// its trace context, to cancel it with.
    pub(super) fn forget(&mut self, id: u64) -> Option<Trace> {
        match self.calls.remove(&id)? {
            Slot::Waiting { trace, .. } | Slot::Expired(trace) => Some(trace),
            Slot::Done(_) => None,
        }
    }

    /// Fails the waiting calls whose deadline passed by `now`, adding their
    /// wakers to `wake`; sets the timer to the earliest deadline left, and
    /// returns it.
    pub(super) fn expire(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for slot in self.calls.values_mut() {
            if let Slot::Waiting {
                waker,
                deadline,
                trace,
                ..
            } = slot
            {
                if *deadline <= now {
                    wake.extend(waker.take());
                    *slot = Slot::Expired(*trace);
                } else {
                    next = Some(next.map_or(*deadline, |at| at.min(*deadline)));
                }
            }
        }
        self.timer = next;
        next
    }

    /// The connection ended: every waiting call is removed (it finds no
    /// reply), its waker added to `wake`; replies that came before stay
    /// for their calls.
    pub(super) fn end(&mut self, wake: &mut Vec<Waker>) {
        self.ended = true;
        self.calls.retain(|_, slot| match slot {
            Slot::Waiting { waker, .. } => {
                wake.extend(waker.take());
                false
            }
            Slot::Done(_) | Slot::Expired(_) => true,
        });
    }

    pub(super) fn is_ended(&self) -> bool {
        self.ended
    }

    /// When the timer should fire.
    pub(super) fn timer(&self) -> Option<Instant> {
        self.timer
    }

    /// The waker of call `id` if it waits and was polled: a task that can
    /// be woken to read.
    pub(super) fn waker(&self, id: u64) -> Option<&Waker> {
        match self.calls.get(&id) {
            Some(Slot::Waiting { waker, .. }) => waker.as_ref(),
            _ => None,
        }
    }

    /// A waiting call that was polled, if any.
    pub(super) fn any_wakeable(&self) -> Option<u64> {
        self.calls
            .iter()
            .find(|(_, slot)| matches!(slot, Slot::Waiting { waker: Some(_), .. }))
            .map(|(&id, _)| id)
    }

    /// Whether a call waits for its reply.
    pub(super) fn any_waiting(&self) -> bool {
        self.calls
            .values()
            .any(|s| matches!(s, Slot::Waiting { .. }))
    }

    /// Drops the waker of call `id`: its task is not polling it, and must
    /// not be chosen to read (it keeps its slot, and gets its waker back
    /// when polled).
    pub(super) fn unwake(&mut self, id: u64) {
        if let Some(Slot::Waiting { waker, .. }) = self.calls.get_mut(&id) {
            *waker = None;
        }
    }
}

/// A reply of another method than its request's (see [`crate::variant`])
/// becomes an error reply: tarpc's generated client would panic on it.
fn check_method<Resp: Serialize>(method: Option<&'static str>, reply: Reply<Resp>) -> Reply<Resp> {
    match (&reply, method) {
        (Ok(resp), Some(asked)) => match variant::name_of(resp) {
            Some(answered) if answered != asked => Err(ServerError::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the worker answered a `{asked}` request with a `{answered}` reply: \
                     it serves another service than this client's (an entry typed \
                     wrongly, or another version of the service)"
                ),
            )),
            _ => reply,
        },
        _ => reply,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// A waker that counts its wakeups.
    #[derive(Default)]
    pub(in crate::client) struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        pub(in crate::client) fn waker() -> (Arc<Count>, Waker) {
            let count = Arc::new(Count::default());
            (count.clone(), Waker::from(count))
        }

        pub(in crate::client) fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[derive(Serialize, Debug, PartialEq)]
    enum Resp {
        Add(i64),
        Echo(String),
    }

    fn table() -> (InFlight<Resp>, Instant) {
        (InFlight::new(), Instant::now() + Duration::from_secs(10))
    }

    #[test]
    fn a_registered_call_waits_then_takes_its_reply_once() {
        let (mut t, deadline) = table();
        let r = t
            .register(1, deadline, Some("Add"), Trace::default())
            .unwrap();
        assert_eq!(
            r,
            Registered {
                others: false,
                earliest: true
            }
        );
        let (count, waker) = Count::waker();
        assert!(t.outcome(1, &waker).is_none(), "waits");
        assert!(t.waker(1).is_some(), "polled: its waker is kept");
        assert_eq!(t.any_wakeable(), Some(1));
        let woken = t.complete(1, Ok(Resp::Add(3))).expect("its waker");
        woken.wake();
        assert_eq!(count.woken(), 1);
        assert!(t.waker(1).is_none(), "answered: not a reader");
        assert!(!t.any_waiting());
        assert!(matches!(
            t.outcome(1, &waker),
            Some(Outcome::Reply(Ok(Resp::Add(3))))
        ));
        // Taken: the slot is gone, so a late look finds the call ended.
        assert!(matches!(t.outcome(1, &waker), Some(Outcome::Ended)));
        assert!(t.forget(1).is_none(), "answered: nothing to cancel");
    }

    #[test]
    fn a_reply_for_another_call_leaves_this_one_waiting() {
        let (mut t, deadline) = table();
        t.register(1, deadline, Some("Add"), Trace::default())
            .unwrap();
        let r = t
            .register(2, deadline, Some("Add"), Trace::default())
            .unwrap();
        assert!(r.others && !r.earliest);
        let (count1, w1) = Count::waker();
        let (_, w2) = Count::waker();
        assert!(t.outcome(1, &w1).is_none());
        assert!(t.outcome(2, &w2).is_none());
        t.complete(2, Ok(Resp::Add(5))).unwrap().wake();
        assert!(t.outcome(1, &w1).is_none(), "1 still waits");
        assert_eq!(count1.woken(), 0);
        assert!(matches!(
            t.outcome(2, &w2),
            Some(Outcome::Reply(Ok(Resp::Add(5))))
        ));
    }

    #[test]
    fn a_reply_for_an_unknown_or_forgotten_call_is_dropped() {
        let (mut t, deadline) = table();
        assert!(t.complete(7, Ok(Resp::Add(1))).is_none());
        t.register(1, deadline, None, Trace::default()).unwrap();
        assert!(t.forget(1).is_some(), "unanswered: to cancel");
        assert!(t.complete(1, Ok(Resp::Add(1))).is_none());
        assert!(!t.any_waiting());
        // A second reply to an answered call does not replace the first.
        t.register(2, deadline, None, Trace::default()).unwrap();
        assert!(t.complete(2, Ok(Resp::Add(1))).is_none(), "never polled");
        assert!(t.complete(2, Ok(Resp::Add(2))).is_none());
        let (_, w) = Count::waker();
        assert!(matches!(
            t.outcome(2, &w),
            Some(Outcome::Reply(Ok(Resp::Add(1))))
        ));
    }

    #[test]
    fn a_reply_of_another_method_is_an_error_reply() {
        let (mut t, deadline) = table();
        t.register(1, deadline, Some("Add"), Trace::default())
            .unwrap();
        t.complete(1, Ok(Resp::Echo("x".into())));
        let (_, w) = Count::waker();
        match t.outcome(1, &w) {
            Some(Outcome::Reply(Err(e))) => {
                assert_eq!(e.kind, io::ErrorKind::InvalidData);
                assert!(
                    e.detail
                        .contains("answered a `Add` request with a `Echo` reply")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_fails_due_calls_and_sets_the_timer_to_the_next() {
        let now = Instant::now();
        let mut t = InFlight::<Resp>::new();
        let soon = now + Duration::from_millis(5);
        let later = now + Duration::from_secs(1);
        assert!(
            t.register(1, later, None, Trace::default())
                .unwrap()
                .earliest
        );
        assert!(
            t.register(2, soon, None, Trace::default())
                .unwrap()
                .earliest
        );
        assert!(
            !t.register(3, later, None, Trace::default())
                .unwrap()
                .earliest
        );
        assert_eq!(t.timer(), Some(soon));
        let (count, w) = Count::waker();
        assert!(t.outcome(2, &w).is_none());
        let mut wake = Vec::new();
        assert_eq!(t.expire(now, &mut wake), Some(soon), "nothing due yet");
        assert!(wake.is_empty());
        assert_eq!(t.expire(soon, &mut wake), Some(later));
        assert_eq!(t.timer(), Some(later));
        assert_eq!(wake.len(), 1);
        wake.drain(..).for_each(Waker::wake);
        assert_eq!(count.woken(), 1);
        assert!(matches!(t.outcome(2, &w), Some(Outcome::Expired)));
        // An expired call is not a reader, ignores its late reply, keeps
        // its slot until forgotten, and is then to be cancelled.
        assert!(t.waker(2).is_none());
        assert!(t.complete(2, Ok(Resp::Add(1))).is_none());
        assert!(matches!(t.outcome(2, &w), Some(Outcome::Expired)));
        assert!(t.forget(2).is_some());
        assert_eq!(t.expire(later, &mut wake), None);
        assert_eq!(t.timer(), None);
    }

    #[test]
    fn the_end_fails_waiting_calls_keeps_replies_and_refuses_new_calls() {
        let (mut t, deadline) = table();
        t.register(1, deadline, None, Trace::default()).unwrap();
        t.register(2, deadline, None, Trace::default()).unwrap();
        let (count, w) = Count::waker();
        assert!(t.outcome(1, &w).is_none());
        t.complete(2, Ok(Resp::Add(2)));
        let mut wake = Vec::new();
        t.end(&mut wake);
        assert!(t.is_ended());
        wake.drain(..).for_each(Waker::wake);
        assert_eq!(count.woken(), 1);
        assert!(matches!(t.outcome(1, &w), Some(Outcome::Ended)));
        assert!(matches!(
            t.outcome(2, &w),
            Some(Outcome::Reply(Ok(Resp::Add(2))))
        ));
        assert_eq!(t.register(3, deadline, None, Trace::default()), Err(Ended));
    }

    #[test]
    fn a_call_polled_by_another_task_keeps_the_new_waker() {
        let (mut t, deadline) = table();
        t.register(1, deadline, None, Trace::default()).unwrap();
        let (first, w1) = Count::waker();
        let (second, w2) = Count::waker();
        assert!(t.outcome(1, &w1).is_none());
        assert!(t.outcome(1, &w2).is_none());
        t.complete(1, Ok(Resp::Add(0))).unwrap().wake();
        assert_eq!((first.woken(), second.woken()), (0, 1));
        // Unwaking drops the waker but keeps the call.
        t.register(2, deadline, None, Trace::default()).unwrap();
        assert!(t.outcome(2, &w1).is_none());
        t.unwake(2);
        assert!(t.waker(2).is_none() && t.any_waiting());
        assert_eq!(t.any_wakeable(), None);
    }
}
