//! Reader election: who reads the socket when the worker's replies arrive.
//!
//! One waiting call at a time is the *reader*: the socket's wakeup goes to
//! its task, which reads every reply there is and completes the calls they
//! answer, its own and others'. A serial call is thus woken by the socket
//! directly, as in a hand-written ping-pong. With no call waiting, the
//! background task is the reader (events, the end of the connection).
//!
//! Plain data: no lock, no I/O. The connection
//! ([`super::connection`]) keeps it beside the [`InFlight`] table, under
//! the same lock, and does what its methods say. The rules:
//!
//! 1. **Polled last reads**: a call polled without its outcome becomes the
//!    reader (its task is surely still polling it), and reads at once if a
//!    wakeup went unread ([`polled`](Election::polled)).
//! 2. **A wakeup goes to one that can read**: the reader's waker if it
//!    waits and was polled, else the background task's
//!    ([`socket_woke`](Election::socket_woke)).
//! 3. **Before each read, the role is handed over** to a call that will
//!    read again: the reader if it still waits, else any polled waiting
//!    call, else the background task ([`start_read`](Election::start_read));
//!    after the read, if the reader got its reply in it, the read is done
//!    again with a new reader ([`ready`](Election::ready)), so that the
//!    socket's next wakeup never goes to a call that no longer waits.
//! 4. **A reader that leaves hands over**: a call forgotten (dropped, or
//!    done) while reader makes the connection read and elect anew.
//! 5. **The watchdog** ([`WATCH`]): a reader whose task does not poll it
//!    (busy, or waiting for something else while it keeps the call) cannot
//!    be seen from here: a wakeup is consumed by a task that may poll
//!    another future. So while calls wait, the background task looks every
//!    [`WATCH`]; a wakeup still unread since its last look means the reader
//!    is not reading: it is dropped from the role (until polled again) and
//!    the background task reads for it ([`watch`](Election::watch)).

use std::task::Waker;
use std::time::Duration;

use super::in_flight::{InFlight, Registered};

/// How often the background task checks, while calls wait, that the
/// socket's wakeups are read (rule 5 of the [module docs](self)).
///
/// It stays because nothing else can tell that a reader's task does not
/// poll it: a task woken by the socket may poll other futures and not the
/// call. Such a reader delays the replies of other calls by at most twice
/// this (a wakeup just after a look is seen at the look after next), and
/// never stalls them. A reader that is dropped hands over at once (rule 4)
/// and does not wait for it. Calls whose task polls them, the common case,
/// never wait for it: the look finds their wakeups read and costs one
/// timer entry every [`WATCH`] while calls wait.
pub(crate) const WATCH: Duration = Duration::from_millis(10);

/// Who is woken when the socket has replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    Call(u64),
    Background,
}

/// The election's state.
#[derive(Debug)]
pub(super) struct Election {
    reader: Reader,
    /// The socket woke the reader and no one read since.
    unread: bool,
    /// The background task's waker, once it ran.
    background: Option<Waker>,
    /// The background task looks every [`WATCH`] that wakeups are read.
    watching: bool,
    /// Calls started (a counter of the connection's) at the last look.
    started_at_look: u64,
}

/// What [`Election::watch`] asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Look {
    /// Read for the reader, which did not.
    pub(super) read: bool,
    /// Look again after [`WATCH`]: calls started or waited since.
    pub(super) again: bool,
}

// ===== impl Election =====

impl Election {
    pub(super) fn new() -> Self {
        Election {
            reader: Reader::Background,
            // Until the first read, the socket has no waker: whoever polls
            // first reads.
            unread: true,
            background: None,
            watching: false,
            started_at_look: 0,
        }
    }

    /// Call `id` was polled and has no outcome yet: it is the reader now
    /// (rule 1). Whether it must read at once: a wakeup went unread.
    pub(super) fn polled(&mut self, id: u64) -> bool {
        self.reader = Reader::Call(id);
        self.unread
    }

    /// The socket has replies (rule 2): the waker to wake, if any.
    pub(super) fn socket_woke<R>(&mut self, calls: &InFlight<R>) -> Option<Waker> {
        self.unread = true;
        if let Reader::Call(id) = self.reader
            && let Some(waker) = calls.waker(id)
        {
            return Some(waker.clone());
        }
        self.background.clone()
    }

    /// Before a read (rule 3): keeps the reader if it will read when
    /// woken, else names a polled waiting call, else the background task;
    /// the wakeup is read.
    pub(super) fn start_read<R>(&mut self, calls: &InFlight<R>) {
        self.unread = false;
        if self.ready(calls) {
            return;
        }
        self.reader = calls
            .any_wakeable()
            .map_or(Reader::Background, Reader::Call);
    }

    /// Whether the reader will read when woken; if not after a read, the
    /// connection reads again (rule 3).
    pub(super) fn ready<R>(&self, calls: &InFlight<R>) -> bool {
        match self.reader {
            Reader::Call(id) => calls.waker(id).is_some(),
            Reader::Background => true,
        }
    }

    /// Whether call `id` is the reader (rule 4: forgetting it hands over).
    pub(super) fn is_reader(&self, id: u64) -> bool {
        self.reader == Reader::Call(id)
    }

    /// A wakeup went unread: the next to poll reads.
    pub(super) fn unread(&self) -> bool {
        self.unread
    }

    /// A call was registered: the background task's waker, to wake if it
    /// must set its timer (an earlier deadline) or start watching.
    pub(super) fn registered(&mut self, registered: Registered) -> Option<&Waker> {
        if registered.earliest || !self.watching {
            self.watching = true;
            return self.background.as_ref();
        }
        None
    }

    /// The background task runs with `waker`.
    pub(super) fn set_background(&mut self, waker: &Waker) {
        match &self.background {
            Some(w) if w.will_wake(waker) => {}
            _ => self.background = Some(waker.clone()),
        }
    }

    /// The background task's waker, taken when the connection ends.
    pub(super) fn take_background(&mut self) -> Option<Waker> {
        self.background.take()
    }

    /// Whether the background task watches the reader.
    pub(super) fn watching(&self) -> bool {
        self.watching
    }

    /// The background task's look every [`WATCH`] (rule 5), with
    /// `started`, the calls started so far: a wakeup unread since the last
    /// look means the reader's task is not polling it. It loses the role
    /// (its task got that wakeup, so it needs no other) and the connection
    /// reads for it. Looks go on while calls start or wait.
    pub(super) fn watch<R>(&mut self, calls: &mut InFlight<R>, started: u64) -> Look {
        if self.unread
            && let Reader::Call(id) = self.reader
        {
            calls.unwake(id);
        }
        let idle = started == self.started_at_look && !calls.any_waiting();
        self.started_at_look = started;
        self.watching = !idle;
        Look {
            read: self.unread,
            again: self.watching,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::in_flight::tests::Count;
    use super::*;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// A table with calls `ids` registered and polled, each with its own
    /// counting waker.
    fn polled(ids: &[u64]) -> (InFlight<()>, Vec<(std::sync::Arc<Count>, Waker)>) {
        let mut calls = InFlight::new();
        let mut wakers = Vec::new();
        for &id in ids {
            calls
                .register(id, deadline(), None, Default::default())
                .unwrap();
            let (count, waker) = Count::waker();
            assert!(calls.outcome(id, &waker).is_none());
            wakers.push((count, waker));
        }
        (calls, wakers)
    }

    #[test]
    fn the_first_poll_reads_then_wakeups_go_to_the_reader() {
        let (mut calls, w) = polled(&[1]);
        let mut e = Election::new();
        assert!(e.polled(1), "nothing was read yet: the first poll reads");
        e.start_read(&calls);
        assert!(e.is_reader(1) && !e.unread());
        assert!(!e.polled(1), "nothing unread: it waits");
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!(w[0].0.woken(), 1);
        assert!(e.unread());
        // Its reply comes in its own read: after it, the role passes on.
        calls.complete(1, Ok(()));
        assert!(!e.ready(&calls), "read again with another reader");
        e.start_read(&calls);
        assert!(!e.is_reader(1));
        assert!(e.ready(&calls), "the background task reads");
        assert!(
            e.socket_woke(&calls).is_none(),
            "no background task yet: nobody to wake"
        );
    }

    #[test]
    fn a_reader_with_its_reply_hands_over_to_a_waiting_call() {
        let (mut calls, w) = polled(&[1, 2]);
        let mut e = Election::new();
        e.polled(1);
        e.start_read(&calls);
        // A reply for the other call: the reader stays.
        calls.complete(2, Ok(()));
        assert!(e.ready(&calls) && e.is_reader(1));
        // A reply for itself: the role goes to a waiting call.
        calls
            .register(3, deadline(), None, Default::default())
            .unwrap();
        let (count3, w3) = Count::waker();
        assert!(calls.outcome(3, &w3).is_none());
        calls.complete(1, Ok(()));
        assert!(!e.ready(&calls));
        e.start_read(&calls);
        assert!(e.is_reader(3));
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!((w[0].0.woken(), w[1].0.woken(), count3.woken()), (0, 0, 1));
    }

    #[test]
    fn a_call_not_yet_polled_is_never_elected() {
        let mut calls = InFlight::<()>::new();
        calls
            .register(1, deadline(), None, Default::default())
            .unwrap();
        let mut e = Election::new();
        e.start_read(&calls);
        assert!(!e.is_reader(1), "its task has no waker here yet");
        let (bg, bg_waker) = Count::waker();
        e.set_background(&bg_waker);
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!(bg.woken(), 1, "the background task reads for it");
    }

    #[test]
    fn a_forgotten_reader_is_replaced_at_the_next_read() {
        let (mut calls, w) = polled(&[1, 2]);
        let mut e = Election::new();
        e.polled(1);
        e.start_read(&calls);
        assert!(calls.forget(1).is_some());
        assert!(e.is_reader(1), "the connection reads on forgetting it");
        assert!(!e.ready(&calls));
        e.start_read(&calls);
        assert!(e.is_reader(2));
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!((w[0].0.woken(), w[1].0.woken()), (0, 1));
    }

    #[test]
    fn the_end_leaves_the_background_task_reading_then_stops_it() {
        let (mut calls, w) = polled(&[1]);
        let mut e = Election::new();
        let (bg, bg_waker) = Count::waker();
        e.set_background(&bg_waker);
        e.polled(1);
        e.start_read(&calls);
        let mut wake = Vec::new();
        calls.end(&mut wake);
        assert_eq!(wake.len(), 1);
        assert!(!e.ready(&calls));
        e.start_read(&calls);
        assert!(e.ready(&calls) && !e.is_reader(1));
        e.take_background().unwrap().wake();
        assert!(e.take_background().is_none());
        assert_eq!((w[0].0.woken(), bg.woken()), (0, 1));
    }

    #[test]
    fn registering_wakes_the_background_task_to_watch_or_for_an_earlier_deadline() {
        let mut calls = InFlight::<()>::new();
        let mut e = Election::new();
        let (_, bg) = Count::waker();
        e.set_background(&bg);
        let soon = Instant::now() + Duration::from_secs(1);
        let r = calls.register(1, soon, None, Default::default()).unwrap();
        assert!(e.registered(r).is_some(), "not watching yet");
        assert!(e.watching());
        let r = calls
            .register(2, soon + Duration::from_secs(1), None, Default::default())
            .unwrap();
        assert!(e.registered(r).is_none(), "watching, and a later deadline");
        let r = calls
            .register(3, soon - Duration::from_millis(1), None, Default::default())
            .unwrap();
        assert!(e.registered(r).is_some(), "an earlier deadline");
    }

    #[test]
    fn the_watchdog_takes_the_role_from_a_reader_that_does_not_read() {
        let (mut calls, w) = polled(&[1, 2]);
        let mut e = Election::new();
        e.polled(1);
        e.start_read(&calls);
        // A look with every wakeup read changes nothing.
        assert_eq!(
            e.watch(&mut calls, 2),
            Look {
                read: false,
                again: true
            }
        );
        assert!(e.ready(&calls) && e.is_reader(1));
        // The socket wakes reader 1, whose task does not poll it.
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!(
            e.watch(&mut calls, 2),
            Look {
                read: true,
                again: true
            }
        );
        // The connection reads for it: the role goes to call 2.
        assert!(!e.ready(&calls));
        e.start_read(&calls);
        assert!(e.is_reader(2));
        e.socket_woke(&calls).unwrap().wake();
        assert_eq!((w[0].0.woken(), w[1].0.woken()), (1, 1));
        // Call 1 polled again gets its waker back, and the role.
        assert!(calls.outcome(1, &w[0].1).is_none());
        assert!(e.polled(1), "a wakeup is unread: it reads");
    }

    #[test]
    fn the_watchdog_stops_when_no_call_starts_or_waits() {
        let (mut calls, _w) = polled(&[1]);
        let mut e = Election::new();
        let r = Registered {
            others: false,
            earliest: false,
        };
        e.registered(r);
        e.start_read(&calls);
        assert!(e.watch(&mut calls, 1).again, "a call waits");
        calls.complete(1, Ok(()));
        assert!(e.watch(&mut calls, 2).again, "a call started since");
        assert!(!e.watch(&mut calls, 2).again, "idle");
        assert!(!e.watching());
    }
}
