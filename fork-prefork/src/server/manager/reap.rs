//! Why a worker ended, as the reap events say: from what the manager did
//! to it and its exit status.

use std::process::ExitStatus;

use super::{Manager, Member};
use crate::server::events::{self as public, ExitReason};

/// What the manager knew of a worker when it was reaped.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    broken: bool,
    timed_out: bool,
    killed: bool,
    stopping: bool,
    ready: bool,
}

/// Why a worker ended, from what the manager did to it and its status: a
/// kill counts only if a signal ended it (it may have exited first), and a
/// worker that failed before it was ready is a boot failure even if it was
/// told to stop meanwhile.
fn exit_reason(w: Ended, status: Option<ExitStatus>) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    let signalled = status.is_none_or(|s| s.signal().is_some());
    let success = status.is_some_and(|s| s.success());
    if w.broken {
        ExitReason::Broken
    } else if w.timed_out {
        ExitReason::TimedOut
    } else if w.killed && signalled {
        ExitReason::Killed
    } else if !w.ready && !success {
        ExitReason::BootFailed
    } else if w.stopping {
        ExitReason::Stopped
    } else if !w.ready {
        ExitReason::BootFailed
    } else {
        ExitReason::Exited
    }
}

impl Manager {
    /// Tells the event stream that `m` was reaped, and why.
    pub(super) fn report_reap(&self, m: &Member, status: &fork_core::Result<ExitStatus>) {
        let Some(pid) = m.pid else { return };
        let status = status.as_ref().ok().copied();
        let reason = exit_reason(
            Ended {
                broken: m.broken,
                timed_out: m.timed_out.is_some() || m.start_timed_out,
                killed: m.killed,
                stopping: m.stopping(),
                ready: m.ready,
            },
            status,
        );
        self.sink.reaped(public::Reaped {
            pid,
            generation: m.generation,
            status,
            reason,
        });
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
        let starting = |e: Ended| Ended { ready: false, ..e };
        let cases = [
            (ready, code(0), ExitReason::Exited),
            (ready, code(3), ExitReason::Exited),
            (ready, signal(11), ExitReason::Exited),
            (told, code(0), ExitReason::Stopped),
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
