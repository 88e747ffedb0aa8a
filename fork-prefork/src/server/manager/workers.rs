//! What happens to workers, as the monitor tasks tell the manager: a fork
//! done or failed, a report read, an exit; and what follows an abnormal one
//! (respawn pacing, boot loops).

use std::process::ExitStatus;
use std::sync::Arc;

use tokio::time::Instant;

use super::super::events::{self as public, ExitReason};
use super::super::monitor::{self, Event};
use super::{Manager, Stopping};
use crate::error::{BootFailure, Error};
use crate::message::Report;
use crate::policy::{Mode, after};

impl Manager {
    pub(super) fn event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Spawned { id, result } => self.spawned(id, result, now),
            Event::Report { id, report } => {
                let Some(m) = self.member(id) else { return };
                m.heard = now;
                match report {
                    Report::Ready => {
                        m.ready = true;
                        m.idle_since = now;
                        self.boot_streak = 0;
                        self.abnormal_streak = 0;
                    }
                    Report::State {
                        busy,
                        served,
                        accepted,
                    } => {
                        if busy == 0 && m.busy > 0 {
                            m.idle_since = now;
                        }
                        m.busy = busy;
                        m.served = served;
                        m.accepted = accepted;
                    }
                    Report::Failed(why) => m.failure = Some(why),
                    Report::Leaving(why) => m.leave = Some(why),
                    Report::ExitData(bytes) => m.exit_data = Some(bytes),
                    Report::Data(bytes) => {
                        let Some(pid) = m.pid else { return };
                        let generation = m.generation;
                        let data = public::Data {
                            pid,
                            generation,
                            bytes,
                        };
                        if !self.sink.data(data) {
                            self.counters.data_dropped += 1;
                        }
                    }
                }
            }
            Event::Broken { id, why } => {
                // A worker the manager killed may break off mid-frame: that
                // is no protocol error.
                if let Some(m) = self.member(id)
                    && !m.killed
                {
                    tracing::warn!(pid = m.pid, "worker sent what is no report ({why}): killed");
                    m.broken = true;
                }
            }
            Event::Exited { id, status } => self.exited(id, status, now),
        }
    }

    pub(super) fn spawned(
        &mut self,
        id: u64,
        result: fork_core::Result<fork_core::Worker>,
        now: Instant,
    ) {
        let quick = self.stopping == Some(Stopping::Quick);
        match result {
            Ok(worker) => {
                let events = self.events.clone();
                // A signal sent to an earlier process with this pid is not
                // this worker's.
                self.sent.forget(worker.id());
                let Some(m) = self.member(id) else { return };
                m.pid = Some(worker.id());
                m.handle = Some(worker.handle());
                if quick {
                    m.kill();
                }
                let stop = m.stop.subscribe();
                tokio::spawn(monitor::monitor(id, worker, stop, events));
            }
            Err(e) => {
                self.members.retain(|m| m.id != id);
                self.boot_failure(BootFailure::Spawn(Arc::new(e)), now);
            }
        }
    }

    pub(super) fn exited(&mut self, id: u64, status: fork_core::Result<ExitStatus>, now: Instant) {
        let Some(i) = self.members.iter().position(|m| m.id == id) else {
            return;
        };
        let mut m = self.members.remove(i);
        self.counters.exited += 1;
        let reason = self.report_reap(&mut m, &status);
        tracing::debug!(
            pid = m.pid,
            generation = m.generation,
            ?status,
            ?reason,
            "worker reaped"
        );
        // Told to stop, or ended by a signal the server sent: as asked.
        if m.stopping() || reason == ExitReason::Killed {
            return;
        }
        if !m.ready {
            let cause = match status {
                _ if m.start_timed_out => BootFailure::StartTimeout(self.config.start_timeout),
                Ok(status) => match m.failure {
                    Some(message) => BootFailure::Reported { message, status },
                    None => BootFailure::Exited(status),
                },
                Err(e) => BootFailure::Spawn(Arc::new(e)),
            };
            self.boot_failure(cause, now);
        } else if matches!(
            reason,
            ExitReason::Crashed | ExitReason::Broken | ExitReason::TimedOut
        ) {
            tracing::warn!(pid = m.pid, ?status, ?reason, "worker exited abnormally");
            self.counters.crashed += 1;
            self.abnormal(now);
        }
    }

    /// Paces the next start after an abnormal exit.
    pub(super) fn abnormal(&mut self, now: Instant) {
        self.abnormal_streak = self.abnormal_streak.saturating_add(1);
        let doubling = 1u32 << (self.abnormal_streak - 1).min(20);
        let delay = self
            .config
            .err_respawn_interval
            .saturating_mul(doubling)
            .min(
                self.config
                    .err_respawn_max
                    .max(self.config.err_respawn_interval),
            );
        self.backoff_until = Some(after(now, delay));
    }

    pub(super) fn boot_failure(&mut self, cause: BootFailure, now: Instant) {
        tracing::warn!("a worker failed before it was ready: {cause}");
        self.counters.boot_failures += 1;
        self.boot_streak = self.boot_streak.saturating_add(1);
        self.abnormal(now);
        if self.stopping.is_some() || self.boot_streak < self.config.max_boot_failures.max(1) {
            return;
        }
        let error = Error::Boot {
            failures: self.boot_streak,
            cause,
        };
        self.boot_streak = 0;
        if let Some((generation, template)) = self.previous.take() {
            // A reload that cannot boot: back to the generation it replaces,
            // which still serves; the new one's workers leave.
            tracing::error!("{error}: the reload failed, generation {generation} keeps serving");
            self.template = template;
            self.generation = generation;
            self.replacing = 0;
            self.floor = match self.knobs.mode {
                Mode::Fixed(n) => n,
                Mode::Spare { .. } => 0,
            };
            self.backoff_until = None;
            self.publish();
            for (_, reply) in self.reloads.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        } else {
            tracing::error!("{error}: the server stops");
            self.halted = Some(error);
            self.stop(now);
            self.stop(now);
        }
    }
}
