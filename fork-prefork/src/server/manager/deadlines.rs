//! The manager's deadlines: a worker told to stop and still busy at its
//! graceful timeout, one not ready within the start timeout, one that
//! missed the heartbeat timeout (`SIGABRT`, then `SIGKILL`).

use tokio::time::Instant;

use super::Manager;
use crate::policy::after;

impl Manager {
    /// Kills (or aborts) the workers past a deadline; returns the next
    /// deadline to look again at.
    pub(super) fn enforce_deadlines(&mut self, now: Instant) -> Option<Instant> {
        let mut wake = None;
        for m in &mut self.members {
            match m.deadline {
                Some(at) if !m.killed && at <= now => {
                    tracing::warn!(
                        pid = m.pid,
                        "worker still busy at the graceful timeout: killed"
                    );
                    m.kill();
                }
                Some(at) if !m.killed => wake = earliest(wake, Some(at)),
                _ => {}
            }
        }
        let start_timeout = self.config.start_timeout;
        for m in self
            .members
            .iter_mut()
            .filter(|m| !m.ready && !m.killed && !m.stopping())
        {
            let at = after(m.born, start_timeout);
            if at > now {
                wake = earliest(wake, Some(at));
            } else {
                tracing::warn!(
                    pid = m.pid,
                    "worker not ready within its start timeout: killed"
                );
                m.start_timed_out = true;
                m.kill();
            }
        }
        if let Some(timeout) = self.config.timeout {
            let grace = self.config.heartbeat;
            for m in self.members.iter_mut().filter(|m| m.ready && !m.killed) {
                let at = match m.timed_out {
                    None => after(m.heard, timeout),
                    Some(kill_at) => kill_at,
                };
                if at > now {
                    wake = earliest(wake, Some(at));
                } else if m.timed_out.is_none() {
                    tracing::warn!(pid = m.pid, "worker missed its heartbeat timeout: aborted");
                    if let Some(handle) = &m.handle {
                        let _ = handle.signal(fork_core::Signal::SIGABRT);
                    }
                    let kill_at = after(now, grace);
                    m.timed_out = Some(kill_at);
                    wake = earliest(wake, Some(kill_at));
                } else {
                    m.kill();
                }
            }
        }
        wake
    }
}

/// The earlier of two instants, if any.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
