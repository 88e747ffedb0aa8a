//! [`Sent`]: the signals the server sent its workers, so that a worker a
//! sent signal ends is reported as killed by it, not as a crash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fork_core::Signal;

/// The last signal the handles sent each worker, by pid; shared by the
/// handles (which send) and the manager (which reads it at the reap). The
/// lock is held for a map operation, never across a wait.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    by_pid: Arc<Mutex<HashMap<u32, Signal>>>,
}

impl Sent {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Signal>> {
        self.by_pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes `signal` for `pid`, then sends it; `false` (and nothing
    /// noted) if it could not be sent (the process is gone).
    pub(crate) fn send(&self, pid: u32, signal: Signal) -> bool {
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        // Noted first: the worker may be reaped before `kill` returns.
        let before = self.map().insert(pid, signal);
        let sent = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal).is_ok();
        if !sent {
            let mut map = self.map();
            match before {
                Some(b) => map.insert(pid, b),
                None => map.remove(&pid),
            };
        }
        sent
    }

    /// The last signal sent to `pid`, forgotten: it was reaped.
    pub(crate) fn take(&self, pid: u32) -> Option<Signal> {
        self.map().remove(&pid)
    }

    /// Forgets `pid`: a new worker has it (what was sent went to another
    /// process).
    pub(crate) fn forget(&self, pid: u32) {
        self.map().remove(&pid);
    }
}
