//! Why a worker ended, as the reap events say: from what the manager did
//! to it, what the worker said as it left, and its exit status.

use std::process::ExitStatus;

use fork_core::Signal;

use super::{Manager, Member};
use crate::message::Leave;
use crate::server::events::{self as public, ExitReason};

/// What the manager knew of a worker when it was reaped.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    broken: bool,
    timed_out: bool,
    killed: bool,
    stopping: bool,
    ready: bool,
    /// Why it stopped accepting, as it said.
    leave: Option<Leave>,
    /// The last signal the server sent it (a rolling restart, a forward).
    sent: Option<Signal>,
}

/// Why a worker ended, from what the manager did to it, what it said and
/// its status:
///
/// - a kill counts only if a signal ended it (it may have exited first);
/// - a worker that failed before it was ready is a boot failure even if it
///   was told to stop meanwhile, unless the signal the server sent ended
///   it;
/// - a ready worker that ended by itself is a crash unless it exited 0;
///   then its own word says why (max_requests, retire, a stop or
///   `SIGTERM`, or nothing).
fn exit_reason(w: Ended, status: Option<ExitStatus>) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.and_then(|s| s.signal());
    let signalled = status.is_none_or(|s| s.signal().is_some());
    let success = status.is_some_and(|s| s.success());
    let by_sent = signal.is_some_and(|s| w.sent.is_some_and(|sent| sent as i32 == s));
    if w.broken {
        ExitReason::Broken
    } else if w.timed_out {
        ExitReason::TimedOut
    } else if (w.killed && signalled) || by_sent {
        ExitReason::Killed
    } else if !w.ready && !success {
        ExitReason::BootFailed
    } else if w.stopping {
        ExitReason::Stopped
    } else if !w.ready {
        ExitReason::BootFailed
    } else if !success {
        ExitReason::Crashed
    } else {
        match w.leave {
            None => ExitReason::Exited,
            Some(Leave::Recycled) => ExitReason::Recycled,
            Some(Leave::Retired) => ExitReason::Retired,
            Some(Leave::Told | Leave::Terminated) => ExitReason::Stopped,
        }
    }
}

impl Manager {
    /// Tells the event stream that `m` was reaped, and why; returns why.
    pub(super) fn report_reap(
        &self,
        m: &mut Member,
        status: &fork_core::Result<ExitStatus>,
    ) -> ExitReason {
        let status = status.as_ref().ok().copied();
        let sent = m.pid.and_then(|pid| self.sent.take(pid));
        let reason = exit_reason(
            Ended {
                broken: m.broken,
                timed_out: m.timed_out.is_some() || m.start_timed_out,
                killed: m.killed,
                stopping: m.stopping(),
                ready: m.ready,
                leave: m.leave,
                sent,
            },
            status,
        );
        if let Some(pid) = m.pid {
            self.sink.reaped(public::Reaped {
                pid,
                generation: m.generation,
                status,
                reason,
                data: m.exit_data.take(),
            });
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn code(c: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(c << 8))
    }

    fn signal(s: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(s))
    }

    #[test]
    fn exit_reasons() {
        let ready = Ended {
            ready: true,
            ..Ended::default()
        };
        let told = Ended {
            stopping: true,
            ..ready
        };
        let killed = Ended {
            killed: true,
            ..told
        };
        let leaving = |leave| Ended {
            leave: Some(leave),
            ..ready
        };
        let sent = |signal| Ended {
            sent: Some(signal),
            ..ready
        };
        let starting = |e: Ended| Ended { ready: false, ..e };
        let cases = [
            (ready, code(0), ExitReason::Exited),
            (ready, code(3), ExitReason::Crashed),
            (ready, signal(11), ExitReason::Crashed),
            (ready, None, ExitReason::Crashed),
            // Why it left, if it exited 0; a crash otherwise.
            (leaving(Leave::Recycled), code(0), ExitReason::Recycled),
            (leaving(Leave::Retired), code(0), ExitReason::Retired),
            (leaving(Leave::Terminated), code(0), ExitReason::Stopped),
            (leaving(Leave::Told), code(0), ExitReason::Stopped),
            (leaving(Leave::Retired), code(1), ExitReason::Crashed),
            (leaving(Leave::Recycled), signal(6), ExitReason::Crashed),
            // A signal the server sent: killed by it, not a crash.
            (sent(Signal::SIGUSR1), signal(10), ExitReason::Killed),
            (sent(Signal::SIGUSR1), signal(11), ExitReason::Crashed),
            (
                Ended {
                    leave: Some(Leave::Terminated),
                    ..sent(Signal::SIGTERM)
                },
                code(0),
                ExitReason::Stopped,
            ),
            (
                starting(sent(Signal::SIGTERM)),
                signal(15),
                ExitReason::Killed,
            ),
            (told, code(0), ExitReason::Stopped),
            (
                Ended {
                    leave: Some(Leave::Told),
                    ..told
                },
                code(0),
                ExitReason::Stopped,
            ),
            (killed, signal(9), ExitReason::Killed),
            (killed, None, ExitReason::Killed),
            // It exited before the kill landed.
            (killed, code(0), ExitReason::Stopped),
            (
                Ended {
                    timed_out: true,
                    killed: true,
                    ..ready
                },
                signal(6),
                ExitReason::TimedOut,
            ),
            (
                Ended {
                    broken: true,
                    killed: true,
                    ..ready
                },
                signal(9),
                ExitReason::Broken,
            ),
            (Ended::default(), code(1), ExitReason::BootFailed),
            (Ended::default(), code(0), ExitReason::BootFailed),
            // Failed before it was ready, told to stop and killed meanwhile.
            (starting(killed), code(1), ExitReason::BootFailed),
            // Told to stop before it was ready, and did.
            (starting(told), code(0), ExitReason::Stopped),
            (starting(killed), signal(9), ExitReason::Killed),
        ];
        for (i, (ended, status, reason)) in cases.into_iter().enumerate() {
            assert_eq!(
                exit_reason(ended, status),
                reason,
                "case {i}: {ended:?} {status:?}"
            );
        }
    }
}
